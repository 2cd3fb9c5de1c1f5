"""The agent's behaviour, stepped on the real event loop in its single-step mode.

Each test runs a real ``Agent`` (real process executor, real outbox file) in this
process; the test plays the host over an in-memory link (tests/support/agent_link.py)
and steps the agent with ``run_until_idle``. A restart is a second agent on the same
data directory: tasks outlive the first one, as they outlive a real agent process.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.agent_link import MemoryConnector, ack_all, batches, events_of
from support.waiting import async_wait_until

from events import link
from events.envelope import NewEvent
from events.types import TaskFinished, TaskPaused, TaskResumed, TaskSpec, TaskStarted
from node_agent.agent import Agent
from node_agent.executors.base import ExecutorError, Outcome
from node_agent.executors.process import ProcessExecutor
from node_agent.executors.process_plan import HostFacilities
from node_agent.probes import MachineInfo
from node_agent.settings import RunnerSettings

pytestmark = pytest.mark.timeout(60)

# Waits for a file named after the task in shared_data (the working directory), then ends.
GATED = 'echo started; while [ ! -e "gate-$HAKURIVER_TASK_ID" ]; do sleep 0.02; done'


@dataclass
class Node:
    """One node's data directory; each ``agent()`` is a new agent process on it."""

    root: Path
    connector: MemoryConnector

    @property
    def settings(self) -> RunnerSettings:
        return RunnerSettings.from_mapping(
            {"paths": {"shared_dir": str(self.root / "shared")}},
            data_dir=str(self.root),
            name="n1",
        )

    def agent(self, executor_type: type[ProcessExecutor] = ProcessExecutor) -> Agent:
        """A new agent on this node's state (a restarted agent, after the first)."""
        settings = self.settings
        executor = executor_type(settings.state_dir / "process", facilities=HostFacilities())
        return Agent(
            settings,
            executors={"process": executor},
            machine=MachineInfo(cores=2, memory_bytes=1 << 30, numa=()),
            connect=self.connector,
        )

    def open(self, task_id: str) -> None:
        """Let a ``GATED`` task end."""
        (self.root / "shared" / "shared_data" / f"gate-{task_id}").touch()

    def output(self, task_id: str) -> str:
        path = self.root / "shared" / "task_outputs" / f"{task_id}.out"
        return path.read_text() if path.exists() else ""


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    made = Node(tmp_path, MemoryConnector())
    yield made
    # Tasks outlive agents: a last one adopts what a test left running, and kills it.
    cleaner = ProcessExecutor(made.settings.state_dir / "process", facilities=HostFacilities())
    for adopted in await cleaner.adopt():
        if not adopted.ended:
            await cleaner.kill(adopted.task_id, grace_s=0)
    await cleaner.close()


def run(task_id: str, script: str, cores: int = 0) -> link.Run:
    """A ``Run`` command for ``sh -c script``."""
    spec = TaskSpec(command="sh", args=("-c", script), batch_id="b")
    return link.Run(task_id=task_id, spec=spec, cores=cores)


def kinds(events: list[NewEvent]) -> list[tuple[str, str]]:
    """(event kind, task id) of each event, in order."""
    return [(type(e.event).__name__, getattr(e.event, "task_id", "")) for e in events]


async def test_a_run_is_reported_started_then_finished_and_acked_events_leave_the_outbox(
    node: Node,
) -> None:
    async with node.agent().started() as agent:
        # Given a connected agent that runs nothing
        host = await node.connector.accept()
        hello = await host.greet()
        assert (hello.node, hello.running, hello.reported) == ("n1", (), ())
        # When the host sends a Run
        await host.send(run("t-1", "echo hi; exit 3"))
        await agent.run_until_idle(wait_for_tasks=True)
        # Then the agent reports task.started, then task.finished with the exit code
        sent = batches(host.drain())
        events = events_of(sent)
        assert kinds(events) == [("TaskStarted", "t-1"), ("TaskFinished", "t-1")]
        started, finished = events[0].event, events[1].event
        assert isinstance(started, TaskStarted) and started.pid is not None
        assert isinstance(finished, TaskFinished)
        assert (finished.state, finished.exit_code, finished.node) == ("failed", 3, "n1")
        assert node.output("t-1") == "hi\n"
        # And once the host acknowledges them, they leave the outbox
        assert agent.outbox is not None and await agent.outbox.count() == 2
        await ack_all(host, sent)
        await agent.run_until_idle()
        assert await agent.outbox.count() == 0 and agent.unacked_final == {}


async def test_a_kill_that_arrives_while_its_task_starts_kills_it_once_started(
    node: Node,
) -> None:
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        # When a Kill follows its Run at once (both handled before the task has started)
        await host.send(run("t-k", "sleep 30"))
        await host.send(link.Kill(task_id="t-k", grace_s=5))
        await agent.run_until_idle(wait_for_tasks=True)
        # Then the task was started, then killed: not left running, not forgotten
        events = events_of(host.drain())
        assert kinds(events) == [("TaskStarted", "t-k"), ("TaskFinished", "t-k")]
        finished = events[1].event
        assert isinstance(finished, TaskFinished) and finished.state == "killed"


async def test_pause_and_resume_are_reported_and_a_repeated_run_is_ignored(node: Node) -> None:
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        await host.send(run("t-p", GATED))
        await agent.run_until_idle()
        await host.send(run("t-p", GATED))  # the host repeats itself after a reconnect
        await host.send(link.Pause(task_id="t-p"))
        await agent.run_until_idle()
        await host.send(link.Pause(task_id="t-p"))  # already paused: nothing to report
        await host.send(link.Resume(task_id="t-p"))
        await agent.run_until_idle()
        node.open("t-p")
        await agent.run_until_idle(wait_for_tasks=True)
        events = [e.event for e in events_of(host.drain())]
        assert [type(e) for e in events] == [TaskStarted, TaskPaused, TaskResumed, TaskFinished]
        assert node.output("t-p") == "started\n"


async def test_a_nacked_batch_is_dropped_for_good(node: Node) -> None:
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        await host.send(run("t-n", "exit 0"))
        await agent.run_until_idle(wait_for_tasks=True)
        sent = batches(host.drain())
        assert kinds(events_of(sent)) == [("TaskStarted", "t-n"), ("TaskFinished", "t-n")]
        # When the host refuses every batch
        for batch in sent:
            await host.send(link.Nack(batch=batch.batch, reason="refused for the test"))
        await agent.run_until_idle()
        # Then the events leave the outbox, and a new link neither lists nor resends them
        assert agent.outbox is not None and await agent.outbox.count() == 0
        host.close()
        again = await node.connector.accept()
        hello = await again.greet()
        assert hello.reported == ()
        await agent.run_until_idle()
        assert events_of(again.drain()) == []


async def test_unacked_events_are_sent_again_after_a_reconnect(node: Node) -> None:
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        await host.send(run("t-r", "exit 0"))
        await agent.run_until_idle(wait_for_tasks=True)
        first = events_of(host.drain())
        assert kinds(first) == [("TaskStarted", "t-r"), ("TaskFinished", "t-r")]
        # When the link drops before the host acknowledged anything
        host.close()
        # Then the agent reconnects, says its final report is still pending, and resends
        again = await node.connector.accept()
        hello = await again.greet()
        assert hello.reported == ("t-r",) and hello.running == ()
        await agent.run_until_idle()
        sent = batches(again.drain())
        assert [e.id for e in events_of(sent)] == [e.id for e in first]
        await ack_all(again, sent)
        await agent.run_until_idle()
        assert agent.outbox is not None and await agent.outbox.count() == 0


async def test_after_a_restart_the_hello_lists_running_and_reported_tasks(node: Node) -> None:
    # Given an agent that started a long task and a short one, whose events the host
    # never acknowledged
    async with node.agent().started() as first:
        host = await node.connector.accept()
        await host.greet()
        await host.send(run("t-long", GATED))
        await host.send(run("t-short", "exit 0"))
        await first.run_until_idle()
        await async_wait_until(lambda: "t-short" in first.unacked_final.values(), 10)
        await first.run_until_idle()
        started = {
            e.event.task_id: e.event.pid
            for e in events_of(host.drain())
            if isinstance(e.event, TaskStarted)
        }
    # When a new agent starts on the same node (the long task ran on meanwhile)
    async with node.agent().started() as second:
        host = await node.connector.accept()
        hello = await host.greet()
        # Then its hello lists the adopted task as running, with its pid, and the short
        # one as reported (its task.finished waits in the outbox)
        assert [(t.task_id, t.pid, t.paused) for t in hello.running] == [
            ("t-long", started["t-long"], False)
        ]
        assert hello.reported == ("t-short",)
        # And the adopted task's end is reported when it comes
        node.open("t-long")
        await second.run_until_idle(wait_for_tasks=True)
        finished = [e.event for e in events_of(host.drain()) if isinstance(e.event, TaskFinished)]
        assert [(f.task_id, f.state) for f in finished] == [
            ("t-short", "completed"),
            ("t-long", "completed"),
        ]


async def test_an_adopted_tasks_cpus_are_not_given_to_a_new_task(node: Node) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to pin two tasks apart")
    pinned = "grep Cpus_allowed_list /proc/self/status; "
    # Given an agent that pinned a long task to one CPU
    async with node.agent().started() as first:
        host = await node.connector.accept()
        await host.greet()
        await host.send(run("t-old", pinned + GATED, cores=1))
        await first.run_until_idle()
        await async_wait_until(lambda: "started" in node.output("t-old"), 10)
    # When the agent restarts (adopting it) and is sent a new one-core task
    async with node.agent().started() as second:
        host = await node.connector.accept()
        await host.greet()
        await host.send(run("t-new", pinned + "exit 0", cores=1))
        await second.run_until_idle()
        await async_wait_until(lambda: "Cpus_allowed_list" in node.output("t-new"), 10)
        # Then the new task is pinned to another CPU than the adopted one
        old = node.output("t-old").splitlines()[0]
        new = node.output("t-new").splitlines()[0]
        assert old != new, (old, new)
        assert second.cpus is not None
        assert second.cpus.taken["t-old"] == (int(old.split()[-1]),)
        node.open("t-old")
        await second.run_until_idle(wait_for_tasks=True)
        assert "t-old" not in second.cpus.taken


class LosesTrack(ProcessExecutor):
    """An executor whose watch of a task fails (an engine gone away) and cannot forget it."""

    async def wait(self, task_id: str) -> Outcome:
        raise RuntimeError("the engine went away")

    async def forget(self, task_id: str) -> None:
        raise ExecutorError("still running")


async def test_a_task_it_loses_track_of_is_reported_killed_and_its_cpus_freed(
    node: Node,
) -> None:
    async with node.agent(LosesTrack).started() as agent:
        host = await node.connector.accept()
        await host.greet()
        # When the watch of a running task fails and the task cannot be forgotten
        await host.send(run("t-l", "sleep 30", cores=1))
        await agent.run_until_idle(wait_for_tasks=True)
        # Then it is reported failed with the reason, and not left running unwatched
        events = events_of(host.drain())
        assert kinds(events) == [("TaskStarted", "t-l"), ("TaskFinished", "t-l")]
        finished, started = events[1].event, events[0].event
        assert isinstance(finished, TaskFinished) and finished.state == "failed"
        assert "lost track" in finished.message
        assert isinstance(started, TaskStarted) and started.pid is not None
        await async_wait_until(lambda: not _alive(started.pid), 20)
        # And the agent holds nothing for it any more: not running, its CPU free again
        assert "t-l" not in agent.running and "t-l" not in agent.by_task
        assert agent.cpus is not None and agent.cpus.take("next", 2, None)


def _alive(pid: int | None) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
