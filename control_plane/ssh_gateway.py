"""The SSH gateway: an asyncssh jump host into VPS tasks, ``ssh -J alice@head:8002 root@<task>``.

It replaces the original's unauthenticated TCP proxy, and is never an open proxy:

- **Logins**: public keys only. The SSH user name is the HakuRiver user; the keys it may
  present are its registered keys and those of its own VPS tasks that hold resources,
  never one it removed (``commands.vps.gateway_login``). A refused login is recorded as
  ``auth.failed`` (route ``ssh``) through the app's rate-limited ``FailureLog``; a wrong
  key and an unknown user look the same to the client. Logins are bounded in time, in
  failed keys, and in connections not yet logged in (in all and per client address,
  an IPv6 client by its /64), apart from the bounds on all connections.
- **Channels**: only ``direct-tcpip`` to port 22 of a host name that names a VPS task
  (its number, id, unique id prefix, or ``vps-<that>``), decided by the command
  boundary (``OpenSshSession``: the user, read again, may act on it, it runs, its sshd
  is ready), which records ``ssh.session_opened`` with the address (the node's own,
  where its agent link comes from) and port to connect to. A shell or command on the
  gateway, another host or port, remote forwarding (``-R``), UNIX sockets and tunnels
  are refused with a message saying so. Tunnels are bounded per connection and per user.
- **Sessions**: an accepted channel is relayed to the VPS's sshd once it said an SSH
  banner (control_plane/ssh_relay.py), counting bytes each way; when it ends (either side
  closes, the task ends, the user is disabled or demoted, the key it logged in with is
  removed, the gateway stops) ``ssh.session_closed`` records the counts, the duration
  and the reason. A host killed with sessions open closes them at its next start
  (``CloseSessionsLeftOpen``, app.py).

The gateway holds no state of its own beyond its open connections: what a user may do
is decided at the command boundary (``ControlPlane.execute``), and the task ending (or
the user's, or the key's) is learnt from the commits (``on_commit``). Its host key
(ed25519) is made at the first start under ``<data_dir>/ssh`` (0600) and reused after,
so clients can pin it (``GET /api/ssh`` serves it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh import (
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    OPEN_CONNECT_FAILED,
    ChannelOpenError,
)

from control_plane.access import ADMIN, FailureLog, Principal
from control_plane.commands import OpenSshSession, RecordFacts
from control_plane.commands.vps import gateway_login
from control_plane.errors import DomainError
from control_plane.hub import ControlPlane
from control_plane.settings import HostSettings
from control_plane.ssh_relay import NotSsh, Side, Tunnel
from events.envelope import Recorded
from events.file_modes import open_private, private_dir, private_file
from events.ids import new_id
from events.types import (
    AuthFailed,
    SshKeyRemoved,
    SshSessionClosed,
    SshSessionOpened,
    TaskFinished,
    TaskLost,
    UserDisabled,
    UserRoleChanged,
)

log = logging.getLogger("hakuriver.host.ssh")

ROUTE = "ssh"  # how auth.failed names the gateway
HOST_KEY_FILE = "ssh/gateway_host_ed25519_key"
VPS_SSH_PORT = 22
# A client gets this long from connecting to being logged in.
LOGIN_TIMEOUT_S = 30.0
# Keys refused before the connection is closed (OpenSSH's MaxAuthTries).
MAX_AUTH_FAILURES = 6
# Connections open at once from one client address, and in all. An IPv6 client counts
# by its /64 (one machine is commonly given a whole /64).
MAX_CONNECTIONS_PER_ADDRESS = 32
MAX_CONNECTIONS = 1024
# Of those, connections not logged in yet (OpenSSH's MaxStartups): a login may take
# LOGIN_TIMEOUT_S, so these are what a flood of idle clients would hold. A smaller bound
# keeps slots for users who log in: logged-in connections do not count against it.
MAX_STARTUPS_PER_ADDRESS = 8
MAX_STARTUPS = 64
# Tunnels open at once in one SSH connection (one is usual: ``ssh -J`` opens one), and
# for one user over all their connections.
MAX_TUNNELS_PER_CONNECTION = 8
MAX_TUNNELS_PER_USER = 32
# How long the gateway waits for a VPS's sshd to accept the TCP connection and say its
# banner.
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
        # Connections not logged in yet, in all and per address (MAX_STARTUPS).
        self._starting: set[_Connection] = set()
        self._starting_per_address: dict[str, int] = {}
        self._tunnels: dict[str, Tunnel] = {}
        # Tunnels held (or being opened) per user.
        self._per_user: dict[str, int] = {}
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
        if len(self._starting) >= MAX_STARTUPS:
            return "the gateway has too many connections logging in; try again later"
        group = connection.group
        if self._per_address.get(group, 0) >= MAX_CONNECTIONS_PER_ADDRESS:
            return f"too many connections from {group}; close some first"
        if self._starting_per_address.get(group, 0) >= MAX_STARTUPS_PER_ADDRESS:
            return f"too many connections logging in from {group}; try again later"
        _count(self._per_address, group, +1)
        _count(self._starting_per_address, group, +1)
        self._connections.add(connection)
        self._starting.add(connection)
        return None

    def logged_in(self, connection: _Connection) -> None:
        """A connection logged in: it no longer counts as one logging in."""
        if connection in self._starting:
            self._starting.discard(connection)
            _count(self._starting_per_address, connection.group, -1)

    def release(self, connection: _Connection) -> None:
        """A connection ended."""
        self.logged_in(connection)
        if connection in self._connections:
            self._connections.discard(connection)
            _count(self._per_address, connection.group, -1)

    def refused_login(self, address: str, reason: str) -> None:
        """Record a refused login, as the HTTP API records a refused token (rate-limited)."""
        event = self.failures.note(address, ROUTE, reason, time.monotonic())
        if event is not None:
            self._record(event, None)

    async def open_tunnel(
        self, connection: _Connection, principal: Principal, destination: str
    ) -> Side:
        """A tunnel to the VPS task ``destination`` names, as the command boundary decides;
        its user-side end, for asyncssh to attach to the channel."""
        if self.stopping:
            raise ChannelOpenError(OPEN_CONNECT_FAILED, "the gateway is stopping")
        user = principal.user
        if self._per_user.get(user, 0) >= MAX_TUNNELS_PER_USER:
            raise ChannelOpenError(
                OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"{user} has {MAX_TUNNELS_PER_USER} tunnels open through the gateway, the"
                " most one user may; close some first",
            )
        # Held from here (the decision awaits the gate): concurrent opens count too. The
        # tunnel gives it back when it ends; a refusal before there is one, here.
        _count(self._per_user, user, +1)
        connection.opening += 1
        try:
            opened = await self._decide(connection, principal, destination)
        except BaseException:
            _count(self._per_user, user, -1)
            raise
        finally:
            connection.opening -= 1
        tunnel = Tunnel(self, opened, principal, connection)
        self._tunnels[opened.session_id] = tunnel
        connection.tunnels.add(tunnel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_TIMEOUT_S
        try:
            async with asyncio.timeout_at(deadline):
                _, vps_side = await loop.create_connection(
                    lambda: Side(tunnel, "vps"), opened.address, opened.port
                )
            tunnel.vps_side = vps_side
            # Nothing is relayed to what is not an SSH server.
            try:
                async with asyncio.timeout_at(deadline):
                    await vps_side.banner
            except TimeoutError:
                raise NotSsh(
                    f"not an SSH server: it said nothing within {CONNECT_TIMEOUT_S:g} s"
                ) from None
        except (OSError, TimeoutError, NotSsh) as exc:
            why = str(exc) or type(exc).__name__
            tunnel.finish(f"could not reach the VPS's sshd: {why}")
            raise ChannelOpenError(
                OPEN_CONNECT_FAILED,
                f"the sshd of VPS task {destination} at {opened.address}:{opened.port} does"
                f" not answer ({why})",
            ) from None
        if tunnel.reason is not None:  # ended while connecting (the task, the gateway)
            raise ChannelOpenError(OPEN_CONNECT_FAILED, f"session ended: {tunnel.reason}")
        user_side = Side(tunnel, "user", peer=vps_side)
        tunnel.sides = (user_side, vps_side)
        log.info(
            "SSH gateway: %s from %s tunnelled to task %s (%s:%d), session %s",
            principal.user,
            connection.address,
            opened.task_id,
            opened.address,
            opened.port,
            opened.session_id,
        )
        return user_side

    async def _decide(
        self, connection: _Connection, principal: Principal, destination: str
    ) -> SshSessionOpened:
        """The command boundary's ``ssh.session_opened`` for this tunnel, or its refusal as
        the channel's (``ChannelOpenError``)."""
        try:
            outcome = await self.cp.execute(
                OpenSshSession(
                    task=destination,
                    actor=principal,
                    session_id=new_id(),
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
        return next(e for e in outcome.decision.events if isinstance(e, SshSessionOpened))

    def tunnel_ended(self, tunnel: Tunnel) -> None:
        """Record a tunnel's end."""
        self._tunnels.pop(tunnel.opened.session_id, None)
        tunnel.connection.tunnels.discard(tunnel)
        _count(self._per_user, tunnel.principal.user, -1)
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
        """Close the tunnels of a task that ended; the connections (and their tunnels) of a
        user disabled or no longer an admin, and those logged in with a key removed."""
        if not self._tunnels and not self._connections:
            return
        for r in recorded:
            match r.event:
                case TaskFinished() | TaskLost() as e:
                    for tunnel in list(self._tunnels.values()):
                        if tunnel.opened.task_id == e.task_id:
                            tunnel.finish("task ended")
                case UserDisabled() as e:
                    self._cut(e.name, "user disabled")
                case UserRoleChanged() as e if e.role != ADMIN:
                    # A demoted admin's connections may hold tunnels into others' VPSes.
                    self._cut(e.name, "user's role changed")
                case SshKeyRemoved() as e:
                    removed = self.cp.state.identity.removed_keys.get(e.user, {})
                    for fingerprint, key_id in removed.items():
                        if key_id == e.key_id:
                            self._cut(e.user, "key removed", fingerprint)
                case _:
                    pass

    def _cut(self, user: str, reason: str, fingerprint: str | None = None) -> None:
        """End ``user``'s tunnels and connections (those logged in with ``fingerprint``)."""

        def cut(connection: _Connection) -> bool:
            who = connection.principal
            return (
                who is not None
                and who.user == user
                and fingerprint in (None, connection.key_fingerprint)
            )

        for tunnel in list(self._tunnels.values()):
            if cut(tunnel.connection):
                tunnel.finish(reason)
        for connection in list(self._connections):
            if cut(connection):
                connection.close()

    # -- for GET /api/ssh and the tests ----------------------------------------------------

    @property
    def open_sessions(self) -> int:
        """Tunnels open now."""
        return len(self._tunnels)

    @property
    def logging_in(self) -> int:
        """Connections not logged in yet."""
        return len(self._starting)


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
        self._source = ""
        self.refused_keys = 0
        self.tried = False
        self.admitted = False
        self.tunnels: set[Tunnel] = set()
        self.opening = 0  # tunnels being decided or connected

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
        """Close the connection (the gateway stops, the user was disabled or demoted, the
        key it logged in with was removed)."""
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

    @property
    def group(self) -> str:
        """What the per-address bounds count this client as: its address, or for IPv6 its
        /64 (a client holds a whole /64 as easily as one address)."""
        return address_group(self.address)

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        self.tried = True
        login = gateway_login(self.gateway.cp.state, username, key.public_data)
        if login is None:
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
        self.key_fingerprint = login.fingerprint
        self._source = login.source
        return True

    def auth_completed(self) -> None:
        self.principal = self._pending
        self.gateway.logged_in(self)
        log.info(
            "SSH gateway: %s logged in from %s with key %s (%s)",
            self.user,
            self.address,
            self.key_fingerprint,
            self._source,
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
        if len(self.tunnels) + self.opening >= MAX_TUNNELS_PER_CONNECTION:
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


def address_group(address: str) -> str:
    """A client address as the per-address bounds count it: an IPv6 address by its /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)


def _count(counts: dict[str, int], key: str, change: int) -> None:
    """Add ``change`` to ``counts[key]``, dropping the key at zero."""
    left = counts.get(key, 0) + change
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
