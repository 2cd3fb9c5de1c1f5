"""The host's side of one agent link: what reaches the socket, and in which order."""

from __future__ import annotations

from typing import Any

from events import link


class RecordingSocket:
    """The part of a websocket a session uses, keeping every frame sent."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    async def send(self, data: bytes) -> None:
        self.frames.append(data)

    async def recv(self, timeout: float | None = None) -> bytes | None:  # noqa: ASYNC109
        return None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


async def test_nothing_reaches_a_new_link_before_its_welcome() -> None:
    """The link is attached before its hello is decided: a placement decided meanwhile
    may send its Run first. The agent takes anything but Welcome first as a protocol
    error, so the Run waits for the Welcome."""
    from control_plane.agents import AgentSession

    socket = RecordingSocket()
    session = AgentSession(cp=Any, socket=socket, node="n1")  # type: ignore[arg-type]
    kill = link.Kill(task_id="t1", grace_s=1)
    assert await session.send(kill)
    assert socket.frames == []
    welcome = link.Welcome(heartbeat_interval_s=1, kill_grace_s=1)
    assert await session.send(welcome)
    assert [type(link.decode_host_message(f)) for f in socket.frames] == [link.Welcome, link.Kill]
    assert await session.send(link.Pause(task_id="t1"))
    assert len(socket.frames) == 3
