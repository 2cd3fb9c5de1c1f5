"""How the agent's frames travel: a small transport protocol, and the websocket behind it.

The agent speaks the messages of events/link.py, one binary frame each. It opens a
link through a ``Connector`` (an async context manager per connection) and only ever
sends, receives and counts unread frames, so the same agent code runs over a websocket
to the control plane (``websocket_connector``) and over an in-memory pair that a test
drives as the host (tests/support/agent_link.py) on the real event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from ssl import SSLContext
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

# A link message may carry a whole outbox batch.
MAX_FRAME_BYTES = 64 << 20


class LinkClosed(ConnectionError):
    """The link is gone: closed by either side, or broken."""


class Transport(Protocol):
    """One open link to the host."""

    async def send(self, frame: bytes) -> None:
        """Send one binary frame; raise ``LinkClosed`` once the link is gone."""
        ...

    async def receive(self) -> bytes | str:
        """The next frame (a ``str`` is a text frame: no link message); or ``LinkClosed``."""
        ...

    def unread(self) -> int:
        """Frames already received and not read yet (0 where the transport cannot tell)."""
        ...


Connector = Callable[[], AbstractAsyncContextManager[Transport]]


class WebSocketTransport:
    """A websocket client connection as a ``Transport``."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, frame: bytes) -> None:
        """Send one binary frame."""
        try:
            await self.ws.send(frame)
        except ConnectionClosed as exc:
            raise LinkClosed(str(exc)) from exc

    async def receive(self) -> bytes | str:
        """The next frame."""
        try:
            return await self.ws.recv()
        except ConnectionClosed as exc:
            raise LinkClosed(str(exc)) from exc

    def unread(self) -> int:
        """Unknown here: the single-step mode is for transports that can count."""
        return 0


def websocket_connector(
    url: str,
    *,
    ssl: SSLContext | Callable[[], SSLContext] | None = None,
    token: Callable[[], str | None] | None = None,
) -> Connector:
    """Connections to the control plane's agent websocket at ``url``, presenting the agent's
    credential (``token()`` is read at each connection: a runner that joins meanwhile or
    gets a new credential uses it at its next connection).

    ``ssl`` for a ``wss://`` URL: a context, or a blocking function making one (a pinned
    CA's, events/pinning.py, which may fetch the CA: it runs on a thread at each
    connection until it succeeds); None: the system's trust store.
    """

    @asynccontextmanager
    async def open_link() -> AsyncIterator[Transport]:
        context = await asyncio.to_thread(ssl) if callable(ssl) else ssl
        # websockets takes no ssl=None for wss:// (its default) and no ssl at all for ws://.
        tls: dict[str, Any] = {} if context is None else {"ssl": context}
        secret = token() if token is not None else None
        headers = {"Authorization": f"Bearer {secret}"} if secret else None
        async with connect(
            url,
            max_size=MAX_FRAME_BYTES,
            open_timeout=5,
            ping_interval=20,
            ping_timeout=20,
            additional_headers=headers,
            **tls,
        ) as ws:
            yield WebSocketTransport(ws)

    return open_link
