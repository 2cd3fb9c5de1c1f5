"""A Docker engine that misbehaves as an overloaded one does: the real engine behind a
unix-socket proxy that, by rule, answers a call with a 500, drops its connection, or
answers only after the caller's timeout, the call having taken effect.

Every request gets a connection of its own (``Connection: close`` is added), so each is
seen and judged by ``fault(method, path)``, which returns one of:

- ``None``: passed through;
- ``("error", message)``: a 500 with the engine's JSON error body, never forwarded;
- ``("drop", "")``: forwarded, then the connection is closed before any answer (a dropped
  connection whose call took effect);
- ``("slow", seconds)``: forwarded, its answer held back that long (a timed-out call that
  took effect).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Fault = tuple[str, Any] | None

UPSTREAM = "/var/run/docker.sock"


class EngineProxy:
    """The proxy, listening on ``path``; ``url`` is its ``DOCKER_HOST``."""

    def __init__(self, path: Path, fault: Callable[[str, str], Fault], upstream: str = UPSTREAM):
        self.path = path
        self.fault = fault
        self.upstream = os.environ.get("DOCKER_HOST", "").removeprefix("unix://") or upstream
        self.faults: Counter[str] = Counter()  # kind -> how many were served
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(256)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="engine-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        with self._lock:
            self._open.add(client)
        try:
            head, rest = _read_head(client)
            if head is None:
                return
            lines = head.split(b"\r\n")
            method, path, _ = lines[0].decode().split(" ", 2)
            headers = [h for h in lines[1:] if h and not h.lower().startswith(b"connection:")]
            length = 0
            for h in headers:
                if h.lower().startswith(b"content-length:"):
                    length = int(h.split(b":", 1)[1])
            while len(rest) < length:
                chunk = client.recv(65536)
                if not chunk:
                    return
                rest += chunk
            fault = self.fault(method, path)
            if fault is not None:
                self.faults[fault[0]] += 1
            if fault is not None and fault[0] == "error":
                body = json.dumps({"message": fault[1]}).encode()
                client.sendall(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with self._lock:
                self._open.add(upstream)
            upstream.connect(self.upstream)
            upstream.sendall(b"\r\n".join([lines[0], *headers, b"Connection: close", b""]))
            upstream.sendall(b"\r\n" + rest)
            first = upstream.recv(65536)  # the call has taken effect once it answers
            if fault is not None and fault[0] == "drop":
                return
            if fault is not None and fault[0] == "slow":
                time.sleep(float(fault[1]))
            while first:
                client.sendall(first)
                first = upstream.recv(65536)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
                    with self._lock:
                        self._open.discard(sock)


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def first_times(rules: dict[str, Fault]) -> Callable[[str, str], Fault]:
    """A ``fault`` that applies ``rules[call]`` to the first call of each container only
    (``call`` is ``create``, ``start``, ``wait``...; a container is named by the create's
    ``name``, or by the id in the path)."""
    seen: set[tuple[str, str]] = set()
    lock = threading.Lock()

    def fault(method: str, path: str) -> Fault:
        if method != "POST":
            return None
        created = re.search(r"/containers/create\?(?:.*&)?name=([^&]+)", path)
        if created:
            call, target = "create", created.group(1)
        else:
            match = re.search(r"/containers/([^/?]+)/(\w+)", path)
            if not match:
                return None
            target, call = match.group(1), match.group(2)
        with lock:
            if call not in rules or (call, target) in seen:
                return None
            seen.add((call, target))
        return rules[call]

    return fault


@contextlib.contextmanager
def engine_proxy(path: Path, fault: Callable[[str, str], Fault]) -> Iterator[EngineProxy]:
    """An ``EngineProxy`` for the block's duration."""
    proxy = EngineProxy(path, fault)
    try:
        yield proxy
    finally:
        proxy.close()
