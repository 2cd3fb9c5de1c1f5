"""Batches an agent has waiting together are recorded as one (control_plane/agents.py).

A real control plane (its DuckDB log, no server) and an ``AgentSession`` over a socket
that keeps what it is sent. Batches queued while none is being recorded are taken
together: one decision, one commit, then an ``Ack`` each, in order, with its own events'
seqs. A batch among them that the host refuses is refused alone: the others are
recorded, as they would have been one at a time (issue 19).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.waiting import async_wait_until
from test_store_failing_link import RecordingSocket, batch, beats

from control_plane.agents import AgentSession
from control_plane.commands import RecordFacts
from control_plane.hub import ControlPlane
from control_plane.settings import HostSettings
from events import link
from events.envelope import new_event
from events.types import NodeRegistered, TaskStarted

pytestmark = pytest.mark.timeout(60)


async def open_plane(tmp_path: Path) -> ControlPlane:
    settings = HostSettings.from_mapping(
        {"paths": {"shared_dir": str(tmp_path / "shared")}}, data_dir=str(tmp_path / "data")
    )
    cp = await ControlPlane.open(settings)
    registered = NodeRegistered(node="n1", address="n1", cores=2, memory_bytes=0)
    await cp.execute(RecordFacts(events=(registered,)))
    return cp


async def welcomed(cp: ControlPlane) -> tuple[AgentSession, RecordingSocket]:
    """A session of n1 past its Welcome, and the socket it sends on (the Welcome read)."""
    socket = RecordingSocket()
    session = AgentSession(cp, socket, "n1")
    await session.send(link.Welcome(heartbeat_interval_s=1, kill_grace_s=1))
    socket.answers()
    return session, socket


async def answers_to(socket: RecordingSocket, count: int) -> list[link.HostMessage]:
    got: list[link.HostMessage] = []

    def all_in() -> bool:
        got.extend(socket.answers())
        return len(got) >= count

    await async_wait_until(all_in, 20)
    return got


async def test_batches_waiting_together_are_one_commit_each_acknowledged(
    tmp_path: Path,
) -> None:
    cp = await open_plane(tmp_path)
    try:
        session, socket = await welcomed(cp)
        sent = [beats(30), beats(20), beats(10)]
        commits = cp.store.commits

        # When three batches arrive before the host records any of them
        for number, events in enumerate(sent, start=1):
            session.take(batch(number, events))

        # Then each is acknowledged, in order, with its own events' seqs
        answers = await answers_to(socket, 3)
        assert all(isinstance(a, link.Ack) for a in answers), answers
        assert [a.batch for a in answers] == [1, 2, 3]
        seqs = [a.seqs for a in answers if isinstance(a, link.Ack)]
        assert [len(s) for s in seqs] == [30, 20, 10]
        flat = [seq for s in seqs for seq in s]
        assert flat == list(range(flat[0], flat[0] + 60))
        # And they were one commit
        assert cp.store.commits == commits + 1
        rows = await cp.store.query(
            "SELECT id::VARCHAR FROM events WHERE kind = 'node.heartbeat' ORDER BY seq"
        )
        assert [r[0] for r in rows] == [e.id for events in sent for e in events]
    finally:
        await cp.close()


async def test_a_refused_batch_among_those_waiting_is_refused_alone(tmp_path: Path) -> None:
    cp = await open_plane(tmp_path)
    try:
        session, socket = await welcomed(cp)
        # A start of a task the host never placed on n1: the decision refuses it.
        forged = [new_event(TaskStarted(task_id="not-placed", node="n1", pid=1), source="n1")]
        first, last = beats(5), beats(7)

        # When it arrives between two good batches, all three waiting together
        session.take(batch(1, first))
        session.take(batch(2, forged))
        session.take(batch(3, last))

        # Then only it is refused (for good: it names the task), the others are recorded
        one, two, three = await answers_to(socket, 3)
        assert isinstance(one, link.Ack) and one.batch == 1 and len(one.seqs) == 5
        assert isinstance(two, link.Nack) and two.batch == 2 and not two.retry
        assert "not-placed" in two.reason
        assert isinstance(three, link.Ack) and three.batch == 3 and len(three.seqs) == 7
        rows = await cp.store.query(
            "SELECT id::VARCHAR FROM events WHERE kind IN ('node.heartbeat', 'task.started')"
            " ORDER BY seq"
        )
        assert [r[0] for r in rows] == [e.id for e in first + last]
        assert socket.closed is None
    finally:
        await cp.close()
