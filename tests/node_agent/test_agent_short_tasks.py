"""A short task's path through the agent (issue 19): its start and end in one write and
one batch, and the end's records kept until the host acknowledges it.

A real ``Agent`` (real process executor, real outbox file) stepped in its single-step
mode; the test plays the host over an in-memory link (tests/support/agent_link.py). A
restart is a second agent on the same data directory, as in test_agent.py; a crash of
the machine that undoes the outbox's unfsynced write is the outbox file removed between
the two.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from support.agent_link import MemoryConnector, ack_all, batches, events_of
from support.waiting import async_wait_until

from events import link
from events.envelope import NewEvent, new_event
from events.types import TaskFinished, TaskSpec, TaskStarted
from node_agent.agent import START_COALESCE_S, Agent
from node_agent.executors.process import ProcessExecutor
from node_agent.executors.process_plan import HostFacilities
from node_agent.outbox import Outbox
from node_agent.probes import MachineInfo
from node_agent.settings import RunnerSettings

pytestmark = pytest.mark.timeout(60)

# Waits for a file named after the task in shared_data (the working directory), then ends.
GATED = 'while [ ! -e "gate-$HAKURIVER_TASK_ID" ]; do sleep 0.02; done'


class Node:
    """One node's data directory; each ``agent()`` is a new agent process on it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.connector = MemoryConnector()
        self.settings = RunnerSettings.from_mapping(
            {"paths": {"shared_dir": str(root / "shared")}}, data_dir=str(root), name="n1"
        )

    def agent(self) -> Agent:
        executor = ProcessExecutor(self.settings.state_dir / "process", facilities=HostFacilities())
        return Agent(
            self.settings,
            executors={"process": executor},
            machine=MachineInfo(cores=2, memory_bytes=1 << 30, numa=()),
            connect=self.connector,
        )

    def records(self, task_id: str) -> list[str]:
        """The shim's record files of a task (``.run``, ``.exit``...) still on disk."""
        state = self.settings.state_dir / "process"
        return sorted(p.suffix for p in state.glob(f"{task_id}.*"))


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    made = Node(tmp_path)
    yield made
    cleaner = ProcessExecutor(made.settings.state_dir / "process", facilities=HostFacilities())
    for adopted in await cleaner.adopt():
        if not adopted.ended:
            await cleaner.kill(adopted.task_id, grace_s=0)
    await cleaner.close()


def run(task_id: str, script: str) -> link.Run:
    return link.Run(
        task_id=task_id, spec=TaskSpec(command="sh", args=("-c", script), batch_id="b"), cores=0
    )


async def test_a_task_that_ends_at_once_is_reported_started_and_finished_in_one_batch(
    node: Node,
) -> None:
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        outbox = agent.outbox
        assert outbox is not None
        # The outbox's writes, as they are made: (event kinds, durable)
        writes: list[tuple[list[str], bool]] = []
        put = outbox.put

        async def recording(events: Sequence[NewEvent], *, durable: bool = True) -> None:
            writes.append(([type(e.event).__name__ for e in events], durable))
            await put(events, durable=durable)

        outbox.put = recording  # type: ignore[method-assign]
        # (a window no loaded test machine can miss: what is tested is what it does)
        agent.start_coalesce_s = 10.0
        # When the host runs a task that ends at once
        await host.send(run("t-1", "exit 3"))
        await agent.run_until_idle(wait_for_tasks=True)
        # Then its start and its end were put in one write, without an fsync (the shim's
        # records say the same until the host acknowledges it)
        assert writes == [(["TaskStarted", "TaskFinished"], False)]
        # And leave in one batch, in that order
        sent = batches(host.drain())
        assert len(sent) == 1
        events = events_of(sent)
        assert [type(e.event) for e in events] == [TaskStarted, TaskFinished]
        started, finished = events[0].event, events[1].event
        assert isinstance(started, TaskStarted) and started.pid is not None
        assert isinstance(finished, TaskFinished)
        assert (finished.state, finished.exit_code) == ("failed", 3)


async def test_a_longer_task_is_reported_started_before_it_ends(node: Node) -> None:
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        # When the host runs a task that outlives the window
        await host.send(run("t-long", GATED))
        await agent.run_until_idle()
        # Then its start is reported alone, while it runs
        assert [type(e.event) for e in events_of(batches(host.drain()))] == [TaskStarted]
        assert "t-long" in agent.running
        # And its end follows, once
        (node.settings.shared_dir / "shared_data" / "gate-t-long").touch()
        await agent.run_until_idle(wait_for_tasks=True)
        assert [type(e.event) for e in events_of(batches(host.drain()))] == [TaskFinished]
        assert START_COALESCE_S < 0.1  # a start is never held back long


async def test_a_tasks_records_stay_until_the_host_acknowledges_its_end(node: Node) -> None:
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        await host.send(run("t-1", "exit 0"))
        await agent.run_until_idle(wait_for_tasks=True)
        sent = batches(host.drain())
        # Before the acknowledgement, the shim's records say how the task ended
        assert node.records("t-1") == [".exit", ".log", ".run"]
        # When the host acknowledges the batch with the end
        await ack_all(host, sent)
        await agent.run_until_idle()
        # Then the records are forgotten, and the outbox is empty
        await async_wait_until(lambda: node.records("t-1") == [], 10)
        assert agent.outbox is not None and await agent.outbox.count() == 0


async def test_a_restarted_agent_sends_the_same_end_once_then_forgets_the_records(
    node: Node,
) -> None:
    # Given an agent gone (as by kill -9) after putting a task's end, before its ack
    async with node.agent().started() as first:
        host = await node.connector.accept()
        await host.greet()
        await host.send(run("t-1", "exit 4"))
        await first.run_until_idle(wait_for_tasks=True)
        before = events_of(batches(host.drain()))
    assert node.records("t-1") == [".exit", ".log", ".run"]
    # When a new agent starts on the node
    async with node.agent().started() as second:
        host = await node.connector.accept()
        hello = await host.greet()
        # Then the task is reported (its end waits in the outbox), not running
        assert hello.reported == ("t-1",) and hello.running == ()
        await second.run_until_idle()
        sent = batches(host.drain())
        # And the very same events are sent again, no second end made from the records
        assert [e.id for e in events_of(sent)] == [e.id for e in before]
        await ack_all(host, sent)
        await second.run_until_idle()
        await async_wait_until(lambda: node.records("t-1") == [], 10)


async def test_an_end_the_machine_crash_undid_is_reported_again_from_the_records(
    node: Node,
) -> None:
    # Given an agent that put a task's end without an fsync, never acknowledged
    async with node.agent().started() as first:
        host = await node.connector.accept()
        await host.greet()
        await host.send(run("t-1", "exit 5"))
        await first.run_until_idle(wait_for_tasks=True)
        host.drain()
    # When the machine's crash undoes the outbox write (here: the outbox file is gone)
    for suffix in ("", "-wal", "-shm"):
        (node.settings.state_dir / f"outbox.sqlite{suffix}").unlink(missing_ok=True)
    async with node.agent().started() as second:
        host = await node.connector.accept()
        await host.greet()
        await second.run_until_idle(wait_for_tasks=True)
        # Then the next agent reports the end from the shim's records, as it was
        ends = [e.event for e in events_of(batches(host.drain()))]
        assert [(type(e), e.task_id) for e in ends] == [(TaskFinished, "t-1")]
        assert isinstance(ends[0], TaskFinished)
        assert (ends[0].state, ends[0].exit_code) == ("failed", 5)


def test_an_unfsynced_put_leaves_the_outbox_fsyncing_the_next_writes(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    try:
        event = new_event(TaskFinished(task_id="t", state="completed", node="n1"), source="n1")
        outbox.put([event], durable=False)
        outbox.ack([event.id])
        # The connection is back to synchronous=FULL (2) for every durable put after
        (mode,) = outbox._db.execute("PRAGMA synchronous").fetchone()
        assert mode == 2
        assert outbox.count() == 0
    finally:
        outbox.close()
    # And what it wrote is in the file for another connection (an agent restarted)
    with sqlite3.connect(tmp_path / "outbox.sqlite") as other:
        assert other.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


async def test_a_start_held_back_when_the_agent_stops_is_put_for_the_next_one(
    node: Node,
) -> None:
    # Given a task started, its start held back for its end (a window it cannot miss here)
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        agent.start_coalesce_s = 30.0
        await host.send(run("t-held", GATED))
        await async_wait_until(lambda: "t-held" in agent._unreported_start, 20)
        state_dir = agent.state_dir
    # When the agent stops while the task runs on: its start is in the outbox, for the
    # next agent to send (else the host shows the task assigning until it ends)
    outbox = Outbox(state_dir / "outbox.sqlite")
    try:
        held = [e.event for e in outbox.pending()]
    finally:
        outbox.close()
    assert [(type(e), e.task_id) for e in held] == [(TaskStarted, "t-held")]  # type: ignore[union-attr]
