"""The SSH gateway's tunnels: a user's channel relayed to a VPS's sshd, bytes counted.

A ``Tunnel`` is one session the log knows (``ssh.session_opened``): its two ``Side``s,
asyncssh forwarders that copy what one receives to the other, count it, and tell the
tunnel how it ended. The VPS side is connected first, and nothing is relayed until it has
said ``SSH-2.0-`` (``Side.banner``): whatever an agent reported, the gateway tunnels a
user to an SSH server and to nothing else (an HTTP API, a metadata service, a database).
The user's channel is only opened after that check, so the client has sent nothing yet;
what the VPS sent meanwhile (its banner) is held and handed on once the channel is up.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asyncssh.forward import SSHForwarder

from control_plane.access import Principal
from events.types import SshSessionOpened

if TYPE_CHECKING:
    from control_plane.ssh_gateway import SshGateway, _Connection

# What an SSH server says first (RFC 4253, 4.2). Other lines before it are allowed by the
# RFC and sent by no sshd in use: a server that sends them is not relayed to.
SSH_BANNER = b"SSH-2.0-"


class NotSsh(Exception):
    """The destination said something other than an SSH banner first (or nothing)."""


@dataclass(eq=False)
class Tunnel:
    """One relayed channel: the session the log knows, its byte counts, how it ended."""

    gateway: SshGateway
    opened: SshSessionOpened
    principal: Principal
    connection: _Connection
    started: float = field(default_factory=time.monotonic)
    bytes_in: int = 0  # user -> VPS
    bytes_out: int = 0  # VPS -> user
    # Who ended it first (an EOF or a close), and, once ended, why.
    first_end: str | None = None
    reason: str | None = None
    sides: tuple[Side, Side] | None = None
    vps_side: Side | None = None

    def side_ended(self, side: str, exc: Exception | None) -> None:
        """One side sent its EOF or went away."""
        if exc is not None and self.first_end is None:
            self.first_end = f"{side} connection lost: {exc}"
        elif self.first_end is None:
            self.first_end = "client closed" if side == "user" else "vps closed"

    def finish(self, reason: str) -> None:
        """End the tunnel (both sides closed) and record it, once."""
        if self.reason is not None:
            return
        self.reason = reason
        if self.sides is not None:
            user_side, vps_side = self.sides
            user_side.close()
            vps_side.close()
        elif self.vps_side is not None:
            self.vps_side.close()
        self.gateway.tunnel_ended(self)


class Side(SSHForwarder):
    """One end of a tunnel (the user's SSH channel, or the TCP connection to the VPS):
    asyncssh's forwarder, counting what it receives and telling the tunnel how it ended.

    Until it has a peer, the VPS side keeps what it receives (``early``) and resolves
    ``banner`` once the first bytes show whether an SSH server is speaking; the user side
    holds what it is given to write until asyncssh attaches its channel.
    """

    def __init__(self, tunnel: Tunnel, side: str, peer: Side | None = None) -> None:
        self.tunnel = tunnel
        self.side = side
        self.early = b""
        self.pending: bytes | None = b""  # None once the channel is attached
        self.banner: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Read, so a refusal nobody waits for (the tunnel ended first) is not reported.
        self.banner.add_done_callback(lambda f: f.cancelled() or f.exception())
        super().__init__(peer)

    def set_peer(self, peer: SSHForwarder) -> None:
        super().set_peer(peer)
        if self.early:
            early, self.early = self.early, b""
            peer.write(early)
        if self.was_eof_received():
            peer.write_eof()

    def write(self, data: bytes) -> None:
        if self.pending is not None and self._transport is None:
            self.pending += data
            return
        super().write(data)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        pending, self.pending = self.pending, None
        if pending:
            super().write(pending)

    def data_received(self, data: bytes, datatype: int | None = None) -> None:
        if self.side == "user":
            self.tunnel.bytes_in += len(data)
        else:
            self.tunnel.bytes_out += len(data)
        if self._peer is None:
            self.early += data
            self._check_banner(ended=False)
            return
        super().data_received(data, datatype)

    def _check_banner(self, *, ended: bool) -> None:
        if self.banner.done():
            return
        seen = self.early[: len(SSH_BANNER)]
        if seen == SSH_BANNER:
            self.banner.set_result(None)
        elif not SSH_BANNER.startswith(seen) or ended:
            shown = self.early[:40].decode("ascii", "replace")
            said = f"it said {shown!r}" if self.early else "it said nothing"
            self.banner.set_exception(NotSsh(f"not an SSH server: {said}"))

    def eof_received(self) -> bool:
        self.tunnel.side_ended(self.side, None)
        self._check_banner(ended=True)
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.side_ended(self.side, exc)
        self._check_banner(ended=True)
        super().connection_lost(exc)
        self.tunnel.finish(self.tunnel.first_end or "closed")
