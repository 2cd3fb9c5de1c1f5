"""HTTP/1.1 over a socket, as much as the CLI needs to talk to its own control plane.

One kept-alive connection; a request with an optional body; an answer read whole
(``Content-Length``, chunked, or until the server closes) or chunk by chunk as it
arrives (followed output, packaging progress). No redirects, proxies, cookies or
compression: the control plane uses none of them.

Why not ``http.client``: it imports the ``email`` package and ``ssl``, which took
as long as the interpreter's own start-up, and ``hakuriver task submit`` is mostly
start-up (docs/decisions.md, "A CLI that answers at once"). ``ssl`` is imported
here only for an ``https://`` URL; the connection then trusts what its ``tls`` function
says (a pinned CA: events/pinning.py), else the system's trust store.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssl import SSLContext

_MAX_LINE = 65536
_MAX_HEADERS = 100
# The most one answer (or one chunk) may hold; the API's largest answers are well below.
_MAX_PIECE = 1 << 30
# What the answer's numbers may look like: ASCII only (int() takes '²', '-1', '1_0'...).
_STATUS = re.compile(r"[0-9]{3}")
_LENGTH = re.compile(r"[0-9]{1,12}")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,12}")


class WireError(OSError):
    """The server's answer was not HTTP, or the connection broke in the middle of it."""


class Answer:
    """An answer's status line and headers (names in lower case), and its body if read."""

    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes = b""):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


class Connection:
    """One connection to ``host:port``, opened on first use and kept alive between requests."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        https: bool,
        timeout: float | None,
        headers: Mapping[str, str] | None = None,
        tls: Callable[[], SSLContext] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.https = https
        self.timeout = timeout
        # Sent with every request (the actor header: who makes the requests).
        self.headers = dict(headers or {})
        self.tls = tls
        self._reader: _Reader | None = None

    @property
    def is_open(self) -> bool:
        """Whether a connection is open (to be reused by the next request)."""
        return self._reader is not None

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def request(
        self, method: str, target: str, body: bytes | None = None, content_type: str = ""
    ) -> Answer:
        """Send one request and read its whole answer."""
        try:
            head = self._send(method, target, body, content_type, {})
            reader = self._reader
            assert reader is not None
            head.body = b"".join(_body(reader, head, method))
        except BaseException:
            # Whatever is left of the answer must not be read as the next one's start.
            self.close()
            raise
        if head.headers.get("connection", "").lower() == "close":
            self.close()
        return head

    def stream(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idle_s: float | None = None,
    ) -> tuple[Answer, Iterator[bytes]]:
        """Send one request; its status and headers, and its body as the pieces arrive.

        The connection waits for each piece without a time limit (a followed task may
        stay silent for hours), unless ``idle_s`` bounds it (an answer whose host sends
        keep-alives: silence past it is a host gone, ``TimeoutError``), and is closed when
        the body ends. ``headers`` are sent with this request only (a stream's
        ``Last-Event-ID``).
        """
        head = self._send(method, target, body, "", headers or {})
        reader = self._reader
        assert reader is not None
        reader.sock.settimeout(idle_s)

        def pieces() -> Iterator[bytes]:
            try:
                yield from _body(reader, head, method)
            finally:
                self.close()

        return head, pieces()

    def _send(
        self,
        method: str,
        target: str,
        body: bytes | None,
        content_type: str,
        headers: Mapping[str, str],
    ) -> Answer:
        if self._reader is None:
            self._reader = _Reader(self._connect())
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {f'[{self.host}]' if ':' in self.host else self.host}:{self.port}",
            "Accept: application/json, text/plain, */*",
        ]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines += [f"{name}: {value}" for name, value in {**self.headers, **headers}.items()]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
        self._reader.sock.sendall(data)
        return _head(self._reader)

    def _connect(self) -> socket.socket:
        context = None
        if self.https:
            import ssl

            context = self.tls() if self.tls is not None else ssl.create_default_context()
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is None:
            return sock
        try:
            return context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


class _Reader:
    """A socket read through a buffer: whole lines, or exactly so many bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = sock.makefile("rb")

    def close(self) -> None:
        self._buffer.close()
        self.sock.close()

    def line(self) -> bytes:
        line = self._buffer.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise WireError("an answer line is too long")
        if not line:
            raise WireError("the server closed the connection")
        return line

    def exactly(self, size: int) -> bytes:
        data = self._buffer.read(size)
        if len(data) != size:
            raise WireError("the server closed the connection in the middle of an answer")
        return data

    def some(self) -> bytes:
        return self._buffer.read1(_MAX_LINE)


def _head(reader: _Reader) -> Answer:
    """The status line and headers."""
    status_line = reader.line().decode("latin-1").rstrip("\r\n")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or not _STATUS.fullmatch(code):
        raise WireError(f"not an HTTP answer: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS):
        line = reader.line().decode("latin-1").rstrip("\r\n")
        if not line:
            return Answer(int(code), reason, headers)
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    raise WireError("too many headers in the answer")


def _body(reader: _Reader, head: Answer, method: str) -> Iterator[bytes]:
    """The body's pieces: chunk by chunk, by length, or until the server closes."""
    if method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
        return
    if "chunked" in head.headers.get("transfer-encoding", "").lower():
        while True:
            size_text = reader.line().split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise WireError(f"bad chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size > _MAX_PIECE:
                raise WireError(f"a chunk of {size} bytes is more than this client takes")
            if size == 0:
                while reader.line() not in (b"\r\n", b"\n"):  # trailers, then the end
                    pass
                return
            yield reader.exactly(size)
            reader.exactly(2)  # the chunk's CRLF
    length = head.headers.get("content-length")
    if length is not None:
        if not _LENGTH.fullmatch(length):
            raise WireError(f"bad Content-Length {length[:20]!r}")
        if int(length) > _MAX_PIECE:
            raise WireError(f"an answer of {length} bytes is more than this client takes")
        if int(length):
            yield reader.exactly(int(length))
        return
    while piece := reader.some():
        yield piece
    head.headers["connection"] = "close"
