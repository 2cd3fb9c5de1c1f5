"""The SSH gateway: an asyncssh jump host into VPS tasks, ``ssh -J alice@head:8002 root@<task>``.

It replaces the original's unauthenticated TCP proxy, and is never an open proxy:

- **Logins**: public keys only. The SSH user name is the HakuRiver user; the keys it may
  present are its registered keys and those of its own VPS tasks that hold resources
  (``commands.vps.gateway_login``). A refused login is recorded as ``auth.failed``
  (route ``ssh``) through the app's rate-limited ``FailureLog``; a wrong key and an
  unknown user look the same to the client. Logins are bounded in time, in failed keys,
  and in connections per client address.
- **Channels**: only ``direct-tcpip`` to port 22 of a host name that names a VPS task
  (its number, id, unique id prefix, or ``vps-<that>``), decided by the command
  boundary (``OpenSshSession``: the user may act on it, it runs, its sshd is ready),
  which records ``ssh.session_opened`` with the address and port to connect to. A
  shell or command on the gateway, another host or port, remote forwarding (``-R``),
  UNIX sockets and tunnels are refused with a message saying so.
- **Sessions**: an accepted channel is relayed to the VPS's sshd, counting bytes each
  way; when it ends (either side closes, the task ends, the user is disabled, the
  gateway stops) ``ssh.session_closed`` records the counts, the duration and the reason.

The gateway holds no state of its own beyond its open connections: what a user may do
is decided at the command boundary (``ControlPlane.execute``), and the task ending is
learnt from the commits (``on_commit``). Its host key (ed25519) is made at the first
start under ``<data_dir>/ssh`` (0600) and reused after, so clients can pin it
(``GET /api/ssh`` serves it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh import (
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    OPEN_CONNECT_FAILED,
    ChannelOpenError,
)
from asyncssh.forward import SSHForwarder

from control_plane.access import FailureLog, Principal
from control_plane.commands import OpenSshSession, RecordFacts
from control_plane.commands.vps import gateway_login
from control_plane.errors import DomainError
from control_plane.hub import ControlPlane
from control_plane.settings import HostSettings
from events.envelope import Recorded
from events.file_modes import open_private, private_dir, private_file
from events.ids import new_id
from events.types import (
    AuthFailed,
    SshSessionClosed,
    SshSessionOpened,
    TaskFinished,
    TaskLost,
    UserDisabled,
)

log = logging.getLogger("hakuriver.host.ssh")

ROUTE = "ssh"  # how auth.failed names the gateway
HOST_KEY_FILE = "ssh/gateway_host_ed25519_key"
VPS_SSH_PORT = 22
# A client gets this long from connecting to being logged in.
LOGIN_TIMEOUT_S = 30.0
# Keys refused before the connection is closed (OpenSSH's MaxAuthTries).
MAX_AUTH_FAILURES = 6
# Connections open at once from one client address, and in all.
MAX_CONNECTIONS_PER_ADDRESS = 32
MAX_CONNECTIONS = 1024
# Tunnels open at once in one SSH connection (one is usual: ``ssh -J`` opens one).
MAX_TUNNELS_PER_CONNECTION = 8
# How long the gateway waits for a VPS's sshd to accept the TCP connection.
CONNECT_TIMEOUT_S = 10.0
# A silent client is asked if it is there every interval, and dropped after this many.
KEEPALIVE_INTERVAL_S = 30.0
KEEPALIVE_COUNT_MAX = 3
# A stop closes every session and records its close within this long.
STOP_WITHIN_S = 5.0
# The ciphers offered, AES first (OpenSSH's own first choice, chacha20-poly1305, costs
# asyncssh half as much CPU again per byte relayed: docs/decisions.md). A client picks the
# first of its own list the gateway offers: OpenSSH takes aes128-ctr, or GCM when told.
ENCRYPTION_ALGS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)

# A task number as OpenSSH passes it on (``12`` -> ``0.0.0.12``, ``300`` -> ``0.0.1.44``).
_NUMBER_AS_ADDRESS = re.compile(r"^0\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")
_SHELL_REFUSED = (
    "this is HakuRiver's SSH gateway: it runs no shell or command. Reach a VPS task"
    " through it: ssh -J {user}@<this host>:{port} root@<task id> (or `hakuriver ssh <task>`)"
)


# -- the host key ------------------------------------------------------------------------


def host_key(data_dir: Path) -> asyncssh.SSHKey:
    """The gateway's host key, made (ed25519, 0600) at the first start and reused after.

    A key file that cannot be read is not replaced: clients pinned the old key, and a
    new one would look like an impostor to them (the error says what to do).
    """
    path = data_dir / HOST_KEY_FILE
    if path.exists():
        private_file(path)
        try:
            return asyncssh.read_private_key(path)
        except (asyncssh.KeyImportError, OSError, ValueError) as exc:
            raise GatewayUnavailable(
                f"cannot read the gateway's host key {path}: {exc}; restore it, or move it"
                " away to make a new one (clients that pinned the old key will refuse the"
                " new one until they fetch it again)"
            ) from None
    private_dir(path.parent)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="hakuriver-ssh-gateway")
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = open_private(temporary)
    with os.fdopen(fd, "wb") as out:
        out.write(key.export_private_key("openssh"))
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(path)
    log.info("made the SSH gateway's host key %s", path)
    return key


def public_line(key: asyncssh.SSHKey) -> str:
    """``ssh-ed25519 AAAA…``: the key's public half as a known_hosts entry writes it."""
    words = key.export_public_key("openssh").decode().split()
    return f"{words[0]} {words[1]}"


class GatewayUnavailable(Exception):
    """The gateway cannot run (its port is taken, its host key unreadable)."""


# -- the gateway --------------------------------------------------------------------------


@dataclass
class GatewayStatus:
    """What ``GET /api/ssh`` says of the gateway."""

    enabled: bool
    port: int = 0
    host_key: str = ""
    fingerprint: str = ""
    message: str = ""
    gateway: SshGateway | None = None


async def start_gateway(
    cp: ControlPlane, settings: HostSettings, failures: FailureLog
) -> GatewayStatus:
    """Start the gateway as ``[network]`` says; a gateway that cannot start leaves the host
    running without it (logged, and said by ``GET /api/ssh``)."""
    network = settings.network
    if not network.ssh_gateway:
        return GatewayStatus(
            enabled=False, message="the SSH gateway is off ([network] ssh_gateway)"
        )
    gateway = SshGateway(cp, settings, failures)
    try:
        await gateway.start()
    except (GatewayUnavailable, OSError) as exc:
        message = f"the SSH gateway is not running: {exc}"
        log.error("%s", message)
        return GatewayStatus(enabled=False, message=message)
    cp.store.add_listener(gateway.on_commit)
    return GatewayStatus(
        enabled=True,
        port=gateway.port,
        host_key=public_line(gateway.key),
        fingerprint=gateway.key.get_fingerprint("sha256"),
        gateway=gateway,
    )


class SshGateway:
    """The asyncssh server, its connections and their tunnels."""

    def __init__(self, cp: ControlPlane, settings: HostSettings, failures: FailureLog) -> None:
        self.cp = cp
        self.settings = settings
        self.failures = failures
        self.port = 0
        self.key: asyncssh.SSHKey
        self.stopping = False
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: set[_Connection] = set()
        self._per_address: dict[str, int] = {}
        self._tunnels: dict[str, Tunnel] = {}
        self._records: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind the port and serve (the host key made or read first)."""
        network = self.settings.network
        self.key = await asyncio.to_thread(host_key, self.settings.path("."))
        bind = network.host_ssh_proxy_bind_ip or network.host_bind_ip
        try:
            self._acceptor = await asyncssh.create_server(
                lambda: _Connection(self),
                bind,
                network.host_ssh_proxy_port,
                server_host_keys=[self.key],
                server_version="HakuRiver_gateway",
                login_timeout=LOGIN_TIMEOUT_S,
                keepalive_interval=KEEPALIVE_INTERVAL_S,
                keepalive_count_max=KEEPALIVE_COUNT_MAX,
                allow_pty=False,
                agent_forwarding=False,
                x11_forwarding=False,
                encryption_algs=list(ENCRYPTION_ALGS),
                reuse_address=True,
            )
        except OSError as exc:
            raise GatewayUnavailable(
                f"cannot listen on {bind}:{network.host_ssh_proxy_port} ({exc.strerror or exc});"
                " choose another port ([network] host_ssh_proxy_port)"
            ) from None
        self.port = self._acceptor.get_port()
        log.info("SSH gateway listening on %s:%d", bind, self.port)

    async def stop(self, within_s: float = STOP_WITHIN_S) -> None:
        """Stop accepting, close every session and record its close, within ``within_s``."""
        self.stopping = True
        if self._acceptor is not None:
            self._acceptor.close()
        for tunnel in list(self._tunnels.values()):
            tunnel.finish("gateway stopped")
        for connection in list(self._connections):
            connection.close()
        pending = [*self._records]
        if self._acceptor is not None:
            pending.append(asyncio.ensure_future(self._acceptor.wait_closed()))
        if pending:
            _, late = await asyncio.wait(pending, timeout=within_s)
            if late:
                log.warning("SSH gateway: %d closes still pending after %.0fs", len(late), within_s)
        log.info("SSH gateway stopped")

    # -- what the connections ask -----------------------------------------------------------

    def admit(self, connection: _Connection) -> str | None:
        """Count a new connection; why it is refused (None: admitted)."""
        if self.stopping:
            return "the gateway is stopping"
        if len(self._connections) >= MAX_CONNECTIONS:
            return "the gateway has too many connections; try again later"
        count = self._per_address.get(connection.address, 0)
        if count >= MAX_CONNECTIONS_PER_ADDRESS:
            return f"too many connections from {connection.address}; close some first"
        self._per_address[connection.address] = count + 1
        self._connections.add(connection)
        return None

    def release(self, connection: _Connection) -> None:
        """A connection ended."""
        if connection in self._connections:
            self._connections.discard(connection)
            left = self._per_address.get(connection.address, 1) - 1
            if left > 0:
                self._per_address[connection.address] = left
            else:
                self._per_address.pop(connection.address, None)

    def refused_login(self, address: str, reason: str) -> None:
        """Record a refused login, as the HTTP API records a refused token (rate-limited)."""
        event = self.failures.note(address, ROUTE, reason, time.monotonic())
        if event is not None:
            self._record(event, None)

    async def open_tunnel(
        self, connection: _Connection, principal: Principal, destination: str
    ) -> _Side:
        """A tunnel to the VPS task ``destination`` names, as the command boundary decides;
        its user-side end, for asyncssh to attach to the channel."""
        if self.stopping:
            raise ChannelOpenError(OPEN_CONNECT_FAILED, "the gateway is stopping")
        session_id = new_id()
        try:
            outcome = await self.cp.execute(
                OpenSshSession(
                    task=destination,
                    actor=principal,
                    session_id=session_id,
                    via="gateway",
                    client_address=connection.address,
                    key_fingerprint=connection.key_fingerprint,
                )
            )
        except DomainError as exc:
            message = exc.message
            mangled = _NUMBER_AS_ADDRESS.match(destination)
            if mangled is not None:
                # ``ssh root@12`` connects to 0.0.0.12: OpenSSH reads a bare number as an
                # IPv4 address before the gateway sees it.
                a, b, c = (int(part) for part in mangled.groups())
                number = a << 16 | b << 8 | c
                message += (
                    f" (OpenSSH turned task number {number} into {destination}:"
                    f" name it vps-{number})"
                )
            log.info(
                "SSH gateway: %s from %s refused to %r: %s",
                principal.user,
                connection.address,
                destination,
                message,
            )
            raise ChannelOpenError(OPEN_ADMINISTRATIVELY_PROHIBITED, message) from None
        except Exception:
            log.exception("SSH gateway: could not decide a session")
            raise ChannelOpenError(
                OPEN_CONNECT_FAILED, "the gateway could not open the session; see the host log"
            ) from None
        opened = next(e for e in outcome.decision.events if isinstance(e, SshSessionOpened))
        tunnel = Tunnel(self, opened, principal, connection)
        self._tunnels[session_id] = tunnel
        connection.tunnels.add(tunnel)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, vps_side = await loop.create_connection(
                    lambda: _Side(tunnel, "vps"), opened.address, opened.port
                )
        except (OSError, TimeoutError) as exc:
            why = str(exc) or type(exc).__name__
            tunnel.finish(f"could not reach the VPS: {why}")
            raise ChannelOpenError(
                OPEN_CONNECT_FAILED,
                f"the sshd of VPS task {destination} at {opened.address}:{opened.port} does"
                f" not answer ({why})",
            ) from None
        if tunnel.reason is not None:  # ended while connecting (the task, the gateway)
            vps_side.close()
            raise ChannelOpenError(OPEN_CONNECT_FAILED, f"session ended: {tunnel.reason}")
        user_side = _Side(tunnel, "user", peer=vps_side)
        tunnel.sides = (user_side, vps_side)
        log.info(
            "SSH gateway: %s from %s tunnelled to task %s (%s:%d), session %s",
            principal.user,
            connection.address,
            opened.task_id,
            opened.address,
            opened.port,
            session_id,
        )
        return user_side

    def tunnel_ended(self, tunnel: Tunnel) -> None:
        """Record a tunnel's end."""
        self._tunnels.pop(tunnel.opened.session_id, None)
        tunnel.connection.tunnels.discard(tunnel)
        opened = tunnel.opened
        closed = SshSessionClosed(
            session_id=opened.session_id,
            task_id=opened.task_id,
            bytes_in=tunnel.bytes_in,
            bytes_out=tunnel.bytes_out,
            duration_s=round(time.monotonic() - tunnel.started, 3),
            reason=tunnel.reason or "",
            user=opened.user,
            via="gateway",
        )
        log.info(
            "SSH gateway: session %s to task %s closed (%s): %d bytes in, %d out",
            opened.session_id,
            opened.task_id,
            tunnel.reason,
            tunnel.bytes_in,
            tunnel.bytes_out,
        )
        self._record(closed, tunnel.principal)

    def _record(self, event: SshSessionClosed | AuthFailed, actor: Principal | None) -> None:
        task = asyncio.get_running_loop().create_task(
            self._write(event, actor), name="hakuriver-ssh-record"
        )
        self._records.add(task)
        task.add_done_callback(self._records.discard)

    async def _write(self, event: SshSessionClosed | AuthFailed, actor: Principal | None) -> None:
        try:
            await self.cp.execute(RecordFacts(events=(event,), actor=actor))
        except Exception:
            log.exception("SSH gateway: could not record %s", type(event).__name__)

    # -- what the log says -----------------------------------------------------------------

    def on_commit(self, recorded: Sequence[Recorded]) -> None:
        """Close the tunnels of a task that ended, and the connections of a disabled user."""
        if not self._tunnels and not self._connections:
            return
        for r in recorded:
            match r.event:
                case TaskFinished() | TaskLost() as e:
                    for tunnel in list(self._tunnels.values()):
                        if tunnel.opened.task_id == e.task_id:
                            tunnel.finish("task ended")
                case UserDisabled() as e:
                    for tunnel in list(self._tunnels.values()):
                        if tunnel.opened.user == e.name:
                            tunnel.finish("user disabled")
                    for connection in list(self._connections):
                        who = connection.principal
                        if who is not None and who.user == e.name:
                            connection.close()
                case _:
                    pass

    # -- for GET /api/ssh and the tests ----------------------------------------------------

    @property
    def open_sessions(self) -> int:
        """Tunnels open now."""
        return len(self._tunnels)


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
    sides: tuple[_Side, _Side] | None = None

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
        self.gateway.tunnel_ended(self)


class _Side(SSHForwarder):
    """One end of a tunnel (the user's SSH channel, or the TCP connection to the VPS):
    asyncssh's forwarder, counting what it receives and telling the tunnel how it ended."""

    def __init__(self, tunnel: Tunnel, side: str, peer: _Side | None = None) -> None:
        super().__init__(peer)
        self.tunnel = tunnel
        self.side = side

    def data_received(self, data: bytes, datatype: int | None = None) -> None:
        if self.side == "user":
            self.tunnel.bytes_in += len(data)
        else:
            self.tunnel.bytes_out += len(data)
        super().data_received(data, datatype)

    def eof_received(self) -> bool:
        self.tunnel.side_ended(self.side, None)
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.side_ended(self.side, exc)
        super().connection_lost(exc)
        self.tunnel.finish(self.tunnel.first_end or "closed")


class _Connection(asyncssh.SSHServer):
    """One client's SSH connection to the gateway: its login, then its channels."""

    def __init__(self, gateway: SshGateway) -> None:
        self.gateway = gateway
        self.conn: asyncssh.SSHServerConnection | None = None
        self.address = ""
        self.user = ""
        self.principal: Principal | None = None  # set once logged in
        self._pending: Principal | None = None
        self.key_fingerprint = ""
        self.refused_keys = 0
        self.tried = False
        self.admitted = False
        self.tunnels: set[Tunnel] = set()

    # -- the connection ----------------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.address = str(peer[0]) if peer else ""
        refusal = self.gateway.admit(self)
        if refusal is not None:
            log.info("SSH gateway: connection from %s refused: %s", self.address, refusal)
            conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, refusal)
            return
        self.admitted = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.gateway.release(self)
        for tunnel in list(self.tunnels):
            tunnel.finish("client closed" if exc is None else f"client connection lost: {exc}")
        if self.principal is None and self.tried and not self.gateway.stopping:
            # (A login the gateway cut short by stopping was not refused.)
            self.gateway.refused_login(
                self.address, f"ssh: no accepted public key for user {self.user[:64]!r}"
            )

    def close(self) -> None:
        """Close the connection (the gateway stops, the user was disabled)."""
        if self.conn is not None:
            self.conn.close()

    # -- the login: public keys only ---------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        self.user = username
        return True  # always ask for a key: nobody gets in without one

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        self.tried = True
        login = gateway_login(self.gateway.cp.state, username)
        source = login.keys.get(key.public_data) if login is not None else None
        if login is None or source is None:
            self.refused_keys += 1
            if self.refused_keys >= MAX_AUTH_FAILURES and self.conn is not None:
                conn = self.conn
                asyncio.get_running_loop().call_soon(
                    conn.disconnect,
                    asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                    "too many authentication failures",
                )
            return False
        self._pending = login.principal  # logged in once the signature is checked
        self.key_fingerprint = key.get_fingerprint("sha256")
        return True

    def auth_completed(self) -> None:
        self.principal = self._pending
        log.info(
            "SSH gateway: %s logged in from %s with key %s",
            self.user,
            self.address,
            self.key_fingerprint,
        )

    # -- channels: direct-tcpip to a VPS's port 22, nothing else -----------------------------

    def session_requested(self) -> bool:
        raise ChannelOpenError(
            OPEN_ADMINISTRATIVELY_PROHIBITED,
            _SHELL_REFUSED.format(user=self.user, port=self.gateway.port),
        )

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        if self.principal is None:  # asyncssh opens no channel before the login; be sure
            raise ChannelOpenError(OPEN_ADMINISTRATIVELY_PROHIBITED, "not logged in")
        if dest_port != VPS_SSH_PORT:
            raise ChannelOpenError(
                OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"the gateway connects only to port {VPS_SSH_PORT} of a VPS task"
                f" ({dest_host}:{dest_port} refused); forward other ports through the VPS's"
                " own ssh (-L)",
            )
        if len(self.tunnels) >= MAX_TUNNELS_PER_CONNECTION:
            raise ChannelOpenError(
                OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"at most {MAX_TUNNELS_PER_CONNECTION} tunnels per connection",
            )
        return self.gateway.open_tunnel(self, self.principal, dest_host)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        log.info(
            "SSH gateway: %s from %s asked to listen on %s:%d: refused",
            self.user,
            self.address,
            listen_host,
            listen_port,
        )
        return False  # no remote forwarding (-R): the gateway listens for nobody

    def unix_connection_requested(self, dest_path: str) -> bool:
        raise ChannelOpenError(
            OPEN_ADMINISTRATIVELY_PROHIBITED, "the gateway forwards to no UNIX socket"
        )

    def unix_server_requested(self, listen_path: str) -> bool:
        return False

    def tun_requested(self, unit: int | None) -> bool:
        raise ChannelOpenError(
            OPEN_ADMINISTRATIVELY_PROHIBITED, "the gateway opens no tunnel device"
        )

    def tap_requested(self, unit: int | None) -> bool:
        raise ChannelOpenError(OPEN_ADMINISTRATIVELY_PROHIBITED, "the gateway opens no tap device")
