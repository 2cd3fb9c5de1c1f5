"""The CLI's HTTP client (wire.py) against a server that answers badly, on loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from cli.hakuriver.wire import Connection, WireError

pytestmark = pytest.mark.timeout(30)

GOOD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def server() -> Iterator[tuple[int, list[bytes]]]:
    """A loopback server answering each request with the next canned answer."""
    answers: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while answers:
                    if not conn.recv(65536):
                        break
                    conn.sendall(answers.pop(0))
                    if answers and answers[0] == b"<close>":
                        answers.pop(0)
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port, answers
    listener.close()


@pytest.mark.parametrize(
    "bad",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",  # read(-1): for ever
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x10\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xc2\xb2\r\n\r\nxx",  # '2' as a superscript
        b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\nxx",
        b"HTTP/1.1 \xd9\xa2\xd9\xa0\xd9\xa0 OK\r\nContent-Length: 0\r\n\r\n",  # Arabic digits
    ],
)
def test_a_malformed_answer_is_refused_and_the_connection_not_reused(
    server: tuple[int, list[bytes]], bad: bytes
) -> None:
    port, answers = server
    answers += [bad, b"<close>", GOOD]
    conn = Connection("127.0.0.1", port, https=False, timeout=5)
    with pytest.raises(WireError):
        conn.request("GET", "/x")
    # The rest of the bad answer is never read as the next answer's start.
    assert not conn.is_open
    assert conn.request("GET", "/y").body == b"ok"
    conn.close()
