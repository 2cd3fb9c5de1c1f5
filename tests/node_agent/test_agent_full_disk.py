"""The agent when a disk is full: the host's (its log) or its own (the outbox).

A real ``Agent`` stepped on this loop, the test as its host over an in-memory link
(tests/support/agent_link.py), as in test_agent.py. Before the fix, a batch the host
could not write closed the link (a reconnection many times a second, a traceback each
time), and an outbox on a full disk lost the task's final report: ``emit`` failed, the
watcher gave the task up, and the host kept it ``running`` until the agent restarted.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from support.agent_link import HostEnd, MemoryConnector, ack_all, events_of
from support.small_disk import Filler, small_disk
from support.waiting import async_wait_until

from events import link
from events.codec import decode_new_events
from events.types import TaskFinished, TaskSpec, TaskStarted
from node_agent.agent import Agent
from node_agent.executors.process import ProcessExecutor
from node_agent.executors.process_plan import HostFacilities
from node_agent.probes import MachineInfo
from node_agent.settings import RunnerSettings

pytestmark = pytest.mark.timeout(60)

GATED = 'echo started; while [ ! -e "gate-$HAKURIVER_TASK_ID" ]; do sleep 0.02; done'


def make_agent(root: Path, connector: MemoryConnector, **runner: object) -> Agent:
    """An agent whose state dir is ``root/runner-n1``; its process records elsewhere."""
    settings = RunnerSettings.from_mapping(
        {"paths": {"shared_dir": str(root / "shared")}, "runner": dict(runner)},
        data_dir=str(root),
        name="n1",
    )
    # The executor's own records on another file system than the outbox: only the outbox
    # is on the disk the test fills.
    executor = ProcessExecutor(root / "process", facilities=HostFacilities())
    return Agent(
        settings,
        executors={"process": executor},
        machine=MachineInfo(cores=2, memory_bytes=1 << 30, numa=()),
        connect=connector,
    )


def run(task_id: str, script: str) -> link.Run:
    return link.Run(
        task_id=task_id, spec=TaskSpec(command="sh", args=("-c", script), batch_id="b"), cores=0
    )


async def next_batch(host: HostEnd) -> link.EventBatch:
    """The agent's next event batch (heartbeats skipped)."""
    while True:
        message = await host.receive(deadline_s=20)
        if isinstance(message, link.EventBatch):
            return message


async def stop_tasks(root: Path) -> None:
    cleaner = ProcessExecutor(root / "process", facilities=HostFacilities())
    for adopted in await cleaner.adopt():
        if not adopted.ended:
            await cleaner.kill(adopted.task_id, grace_s=0)
    await cleaner.close()


async def test_a_batch_the_host_cannot_write_is_sent_again_in_order_on_the_same_link(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    connector = MemoryConnector()
    # One event per batch: the started and the finished report are two batches in flight.
    async with make_agent(tmp_path, connector, max_batch=1).started() as agent:
        host = await connector.accept()
        await host.greet()
        await host.send(run("t-1", "exit 0"))
        await agent.run_until_idle(wait_for_tasks=True)
        first, second = await next_batch(host), await next_batch(host)
        sent = events_of([first, second])
        assert [type(e.event) for e in sent] == [TaskStarted, TaskFinished]

        # When the host cannot write the first (its disk is full), and refuses the second
        # as sent before a resend
        for _ in range(3):
            for batch in (first, second):
                await host.send(
                    link.Nack(batch=batch.batch, reason="no space left on device", retry=True)
                )
            # Then the agent keeps both and, after a pause, sends them again from the oldest
            first, second = await next_batch(host), await next_batch(host)
            assert [e.id for e in events_of([first, second])] == [e.id for e in sent]
        assert agent.outbox is not None and await agent.outbox.count() == 2

        # When the host takes them at last
        await ack_all(host, [first, second])
        await agent.run_until_idle()

        # Then they leave the outbox: all on the one link, logged once as the outage
        # began and once as it ended, without a traceback
        assert await agent.outbox.count() == 0 and agent.unacked_final == {}
        assert agent.link.connections == 1
        lines = [r.getMessage() for r in caplog.records if r.name == "hakuriver.agent"]
        assert sum("cannot record events now" in line for line in lines) == 1, lines
        assert sum("records events again" in line for line in lines) == 1, lines
        assert not any(r.exc_info for r in caplog.records)


async def test_a_task_ending_while_the_outbox_disk_is_full_is_reported_once_it_has_room(
    tmp_path: Path,
) -> None:
    connector = MemoryConnector()
    with small_disk(tmp_path / "runner-n1", 2) as state_dir:
        try:
            async with make_agent(tmp_path, connector).started() as agent:
                host = await connector.accept()
                await host.greet()
                # Given a running task, and then the state dir's disk full
                await host.send(run("t-full", GATED))
                started = await next_batch(host)
                assert [type(e.event) for e in events_of([started])] == [TaskStarted]
                await host.send(link.Ack(batch=started.batch, seqs=[1]))
                await agent.run_until_idle()
                filler = Filler(state_dir)
                filler.fill()

                # When the task ends: its final report cannot be put in the outbox
                (tmp_path / "shared" / "shared_data" / "gate-t-full").touch()
                assert agent.outbox is not None
                outbox = agent.outbox
                await async_wait_until(lambda: outbox.failed_writes >= 3, 20)

                # Then the agent holds on to the task (still reported running, its CPUs
                # held) instead of forgetting it, and keeps trying
                assert "t-full" in agent.running
                assert await outbox.count() == 0

                # When the space comes back, the report goes out, and once acknowledged the
                # task is done with
                filler.free()
                finished = await next_batch(host)
                [report] = decode_new_events(finished.body)
                assert isinstance(report.event, TaskFinished)
                assert (report.event.task_id, report.event.state) == ("t-full", "completed")
                await host.send(link.Ack(batch=finished.batch, seqs=[2]))
                await async_wait_until(lambda: "t-full" not in agent.running, 10)
                await agent.run_until_idle()
                assert await outbox.count() == 0 and outbox.failing is None
        finally:
            await stop_tasks(tmp_path)


async def test_a_host_that_drops_the_link_at_once_is_retried_with_a_growing_pause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A host that accepts the connection and drops it before its Welcome (it cannot
    record the hello): before the fix the backoff restarted at 50 ms with each
    connection, so the agent reconnected many times a second."""
    connector = MemoryConnector()
    async with make_agent(tmp_path, connector).started():
        loop = asyncio.get_running_loop()
        times = []
        for _ in range(6):
            host = await connector.accept()
            times.append(loop.time())
            await host.receive()  # the hello
            host.close()
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # The pauses grow (jitter is 0.5x to 1.5x of a doubling delay): 6 connections
        # take at least 0.05 * (1 + 2 + 4 + 8 + 16) / 2 s; before, about 5 x 0.05 s.
        assert sum(gaps) >= 0.05 * 31 / 2, gaps
        host = await connector.accept()
        await host.greet()
    # One line with a traceback at most for the whole outage
    assert sum(1 for r in caplog.records if r.exc_info) <= 1
