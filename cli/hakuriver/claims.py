"""What a control plane claims before it serves: its event log and its port.

Both are taken before Sanic starts, so the ordinary "something already runs there"
cases end in one line that names the holder (exit code 2), not in a traceback from
inside the server's start-up:

- the event log: an exclusive ``fcntl`` lock on ``<db file>.lock``, held for the life
  of the process. The kernel drops it when the process dies, so a crash leaves no
  stale lock; the file says who holds it (pid and command line) for the message.
  DuckDB locks the database file too, but only inside the server's start-up.
- the port: the listening socket is bound here and handed to Sanic, so nothing can
  take the port in between, and the banner names the address really bound.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import re
import shlex
import socket
import sys
from pathlib import Path

log = logging.getLogger("hakuriver.host")

LOCK_SUFFIX = ".lock"
WILDCARDS = frozenset({"0.0.0.0", "::", ""})


class ClaimRefused(Exception):
    """Another process holds the port or the event log; the message names it."""


def holder(pid: int | None) -> str:
    """``pid 123: hakuriver up --data-dir /x`` (as much of it as can be read)."""
    if pid is None:
        return "a process this user cannot see"
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]  # no stubs in the lock

        command = shlex.join(psutil.Process(pid).cmdline())
    except Exception:  # gone, or another user's: the pid alone still helps
        return f"pid {pid}"
    return f"pid {pid}: {command}" if command else f"pid {pid}"


# -- the event log ----------------------------------------------------------------------


class LogLock:
    """The exclusive lock on an event log, held until ``release`` or the process ends."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def take(cls, db_path: Path, *, hint: str) -> LogLock:
        """Lock ``db_path`` for this process; ``ClaimRefused`` naming the holder if taken.

        ``hint`` says how to choose another log (``--data-dir``, a config key).
        """
        path = db_path.with_name(db_path.name + LOCK_SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                # A file system without locks (some NFS set-ups): DuckDB decides alone.
                log.warning("cannot lock %s (%s); going on without it", path, exc.strerror)
                return cls(path, fd)
            pid = _recorded_pid(fd)
            who = holder(pid) if pid is not None else "starting; its pid is not written yet"
            os.close(fd)
            raise ClaimRefused(
                f"the event log {db_path} is in use by another HakuRiver host ({who}):"
                f" stop that one first, or {hint}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{shlex.join(sys.argv)}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with the next taker)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _recorded_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        first = os.pread(fd, 64, 0).split(b"\n", 1)[0]
        return int(first)
    return None


_DUCKDB_PID = re.compile(r"\(PID (\d+)\)")


def duckdb_lock_message(db_path: Path, duckdb_error: str) -> str:
    """One line for DuckDB's own lock refusal (another program has the file open)."""
    found = _DUCKDB_PID.search(duckdb_error)
    who = holder(int(found.group(1)) if found else None)
    return f"the event log {db_path} is open in another process ({who}): stop it first"


# -- the port ---------------------------------------------------------------------------


def listen(host: str, port: int, *, hint: str, backlog: int = 100) -> socket.socket:
    """A socket listening on ``host:port``; ``ClaimRefused`` saying why it cannot be."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a name: whatever it resolves to first
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        except socket.gaierror as exc:
            raise ClaimRefused(
                f"cannot listen on {where}: {exc.strerror} ([network] host_bind_ip)"
            ) from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ClaimRefused(_bind_problem(where, port, exc, hint)) from None
    return sock


def _bind_problem(where: str, port: int, exc: OSError, hint: str) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} is already in use on {where.rsplit(':', 1)[0]}"
            f" (by {holder_of_port(port)}): stop that process, or {hint}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {where}: that is not an address of this machine"
            " ([network] host_bind_ip)"
        )
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need root)"
    return f"cannot listen on {where}: {exc.strerror}"


def holder_of_port(port: int) -> str:
    """Who listens on TCP ``port`` on this machine, as far as this user can see."""
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]  # no stubs in the lock

        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return holder(conn.pid)
    except Exception:  # not allowed to look: say so rather than fail
        pass
    return "a process this user cannot see"


def is_wildcard(host: str) -> bool:
    """Whether binding ``host`` means every interface."""
    return host in WILDCARDS


def url_of(host: str, port: int, scheme: str = "http") -> str:
    """``http://host:port``, with brackets around an IPv6 address."""
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def local_url(host: str, port: int, scheme: str = "http") -> str:
    """A URL this machine reaches a socket bound to ``host`` at (loopback for wildcards)."""
    if is_wildcard(host):
        return url_of("::1" if host == "::" else "127.0.0.1", port, scheme)
    return url_of(host, port, scheme)


def interface_urls(port: int, scheme: str = "http") -> list[str]:
    """URLs of this machine's non-loopback IPv4 addresses (how other machines reach it)."""
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]  # no stubs in the lock

        addresses = [
            a.address
            for entries in psutil.net_if_addrs().values()
            for a in entries
            if a.family == socket.AF_INET and not a.address.startswith("127.")
        ]
    except Exception:
        return []
    return [url_of(address, port, scheme) for address in sorted(set(addresses))]
