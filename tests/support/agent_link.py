"""An in-memory link for driving a real agent in its single-step mode, the test as its host.

``MemoryConnector`` is the agent's connector: each connection the agent opens is a new
in-memory pair, whose host end the test takes with ``accept()``. The host end sends
host messages and reads the agent's, through the real link codec (events/link.py), so
what crosses is exactly what would cross a websocket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from events import link
from events.codec import decode_new_events
from events.envelope import NewEvent
from node_agent.transport import LinkClosed, Transport

_CLOSED = b""  # marks the end of a queue: the link was closed


class _Side:
    """One direction's frames, and whether the link is closed."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = False


class AgentEnd:
    """The agent's end of an in-memory link (a ``Transport``)."""

    def __init__(self, inbound: _Side, outbound: _Side) -> None:
        self.inbound = inbound
        self.outbound = outbound

    async def send(self, frame: bytes) -> None:
        """Hand a frame to the host end."""
        if self.outbound.closed:
            raise LinkClosed("the host closed the link")
        self.outbound.frames.put_nowait(frame)

    async def receive(self) -> bytes | str:
        """The next frame from the host end."""
        frame = await self.inbound.frames.get()
        if frame == _CLOSED:
            self.inbound.frames.put_nowait(_CLOSED)
            raise LinkClosed("the host closed the link")
        return frame

    def unread(self) -> int:
        """Frames the host sent that the agent has not read yet."""
        return self.inbound.frames.qsize()


class HostEnd:
    """The test's end of an in-memory link: it plays the control plane."""

    def __init__(self, inbound: _Side, outbound: _Side) -> None:
        self.inbound = inbound
        self.outbound = outbound

    async def send(self, message: link.Message) -> None:
        """Send a host message (``Welcome``, ``Ack``, ``Run``...) to the agent."""
        self.outbound.frames.put_nowait(link.encode(message))

    async def receive(self, deadline_s: float = 10) -> link.AgentMessage:
        """The agent's next message, waiting for it."""
        async with asyncio.timeout(deadline_s):
            frame = await self.inbound.frames.get()
        return link.decode_agent_message(frame)

    def drain(self) -> list[link.AgentMessage]:
        """Every message the agent has sent and the test has not read yet."""
        messages = []
        while not self.inbound.frames.empty():
            messages.append(link.decode_agent_message(self.inbound.frames.get_nowait()))
        return messages

    def close(self) -> None:
        """Drop the link, as a host that went away: the agent's next read fails."""
        self.inbound.closed = True
        self.outbound.closed = True
        self.outbound.frames.put_nowait(_CLOSED)

    async def greet(self, heartbeat_interval_s: float = 3600.0) -> link.Hello:
        """Read the agent's ``Hello`` and answer ``Welcome``; the hello."""
        hello = await self.receive()
        assert isinstance(hello, link.Hello), hello
        await self.send(link.Welcome(heartbeat_interval_s=heartbeat_interval_s, kill_grace_s=1.0))
        return hello


class MemoryConnector:
    """An agent's connector whose every connection is an in-memory pair."""

    def __init__(self) -> None:
        self._accepted: asyncio.Queue[HostEnd] = asyncio.Queue()

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[Transport]:
        to_agent, to_host = _Side(), _Side()
        self._accepted.put_nowait(HostEnd(inbound=to_host, outbound=to_agent))
        yield AgentEnd(inbound=to_agent, outbound=to_host)

    async def accept(self, deadline_s: float = 10) -> HostEnd:
        """The host end of the agent's next connection."""
        async with asyncio.timeout(deadline_s):
            return await self._accepted.get()


def batches(messages: list[link.AgentMessage]) -> list[link.EventBatch]:
    """The ``EventBatch`` messages among ``messages``, in order."""
    return [m for m in messages if isinstance(m, link.EventBatch)]


async def ack_all(host: HostEnd, sent: list[link.EventBatch]) -> None:
    """Acknowledge every batch of ``sent``, as a host that recorded them."""
    for batch in sent:
        await host.send(link.Ack(batch=batch.batch, seqs=[]))


def events_of(messages: list[link.AgentMessage]) -> list[NewEvent]:
    """The events in the ``EventBatch`` messages among ``messages``, in order."""
    found: list[NewEvent] = []
    for message in messages:
        if isinstance(message, link.EventBatch):
            found.extend(decode_new_events(message.body))
    return found
