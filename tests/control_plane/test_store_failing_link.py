"""The host's side of an agent link while its log cannot be written (a real full disk).

A real control plane (its DuckDB log on a small tmpfs, no server) and an ``AgentSession``
over a socket that keeps what it is sent. A batch the log cannot take is refused as
retryable; so is every batch the agent sent after it, until the agent sends again from
the refused batch's first event: what one agent reports reaches the log in the order it
was sent. Before the fix the failure escaped the session (the link was closed, a
traceback logged) and a heartbeat that could not be written did the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.small_disk import Filler, small_disk

from control_plane.agents import AgentSession
from control_plane.commands import RecordFacts
from control_plane.hub import ControlPlane
from control_plane.settings import HostSettings
from events import link
from events.codec import encode_json
from events.envelope import NewEvent, new_event
from events.types import NodeHeartbeat, NodeRegistered

pytestmark = pytest.mark.timeout(60)


class RecordingSocket:
    """The part of a websocket a session uses, keeping every frame sent."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed: str | None = None

    async def send(self, data: bytes) -> None:
        self.frames.append(data)

    async def recv(self, timeout: float | None = None) -> bytes | None:  # noqa: ASYNC109
        return None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = reason

    def answers(self) -> list[link.HostMessage]:
        taken, self.frames = self.frames, []
        return [link.decode_host_message(frame) for frame in taken]


def beats(n: int) -> list[NewEvent]:
    return [
        new_event(NodeHeartbeat(node="n1", cpu_percent=float(i)), source="n1") for i in range(n)
    ]


def big_sample() -> NodeHeartbeat:
    """A heartbeat too big for what a full disk has left in the WAL's last page."""
    return NodeHeartbeat(node="n1", running_task_ids=tuple(f"t{i:05d}" for i in range(2000)))


def batch(number: int, events: list[NewEvent]) -> link.EventBatch:
    return link.EventBatch(batch=number, body=b"[" + b",".join(map(encode_json, events)) + b"]")


async def test_batches_the_log_cannot_take_are_refused_for_a_resend_in_order(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "data", 16) as disk:
        settings = HostSettings.from_mapping(
            {"paths": {"shared_dir": str(tmp_path / "shared")}}, data_dir=str(disk)
        )
        cp = await ControlPlane.open(settings)
        try:
            registered = NodeRegistered(node="n1", address="n1", cores=2, memory_bytes=0)
            await cp.execute(RecordFacts(events=(registered,)))
            socket = RecordingSocket()
            session = AgentSession(cp, socket, "n1")
            await session.send(link.Welcome(heartbeat_interval_s=1, kill_grace_s=1))
            socket.answers()
            first, second = beats(40), beats(40)
            filler = Filler(disk)
            filler.fill()

            # When the agent's first batch cannot be written, and a second was in flight
            await session.handle(batch(1, first))
            await session.handle(batch(2, second))

            # Then both are refused as retryable, the second without being tried
            one, two = socket.answers()
            assert isinstance(one, link.Nack) and one.retry and one.batch == 1
            assert "no space left on device" in one.reason
            assert isinstance(two, link.Nack) and two.retry and two.batch == 2
            failure = cp.store_failure
            assert failure is not None and failure.failures == 1

            # And a heartbeat the log cannot take is dropped: the link stays open
            await session.handle(link.Heartbeat(event=new_event(big_sample(), source="n1")))
            assert socket.answers() == [] and socket.closed is None
            assert cp.store_failure is not None and cp.store_failure.failures == 2

            # When space is back and a batch that does not start where the refusal did comes
            filler.free()
            await session.handle(batch(3, second))
            # Then it is refused too: it would land before the refused events
            [three] = socket.answers()
            assert isinstance(three, link.Nack) and three.retry

            # When the agent sends again from the refused batch's first event
            await session.handle(batch(4, first))
            await session.handle(batch(5, second))
            # Then both are taken, in the order they were first sent
            four, five = socket.answers()
            assert isinstance(four, link.Ack) and isinstance(five, link.Ack)
            assert four.seqs[-1] < five.seqs[0]
            rows = await cp.store.query(
                "SELECT id::VARCHAR FROM events WHERE kind = 'node.heartbeat' ORDER BY seq"
            )
            assert [r[0] for r in rows][-80:] == [e.id for e in first + second]
        finally:
            await cp.close()
