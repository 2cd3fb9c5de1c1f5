"""The docker-shell client on a real pseudo-terminal against a real websocket server.

The server here stands in for the host's shell route (it echoes keys and records
resizes), so the client's own terminal handling is tested without a Docker engine:
raw keys out, output back, window sizes forwarded, the exit code returned.
"""

from __future__ import annotations

import json
import os
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from tests.support.terminal import Terminal
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
CLIENT = "import sys; from cli.hakuriver.shell import run_shell; sys.exit(run_shell(sys.argv[1]))"


class EchoShell:
    """A websocket server that behaves like the host's shell route, minus the container."""

    def __init__(self) -> None:
        self.opened: dict[str, list[str]] = {}
        self.sizes: list[tuple[int, int]] = []
        self._server = serve(self._session, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}/shell"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _session(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.opened = parse_qs(urlparse(ws.request.path).query)
        typed = b""
        try:
            for message in ws:
                if isinstance(message, str):
                    control: dict[str, Any] = json.loads(message)
                    if control.get("type") == "resize":
                        self.sizes.append((control["rows"], control["cols"]))
                    continue
                ws.send(message)  # the echo a shell's line editor would give
                typed += message
                if b"bye\r" in typed:
                    ws.send(json.dumps({"type": "exit", "code": 5}))
                    return
        except ConnectionClosed:
            pass

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)


@pytest.fixture
def echo_shell() -> Iterator[EchoShell]:
    server = EchoShell()
    yield server
    server.close()


def client_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env["TERM"] = "xterm-test"
    return env


def connected(term: Terminal, server: EchoShell) -> None:
    """Wait until the client holds its websocket and has put the terminal in raw mode."""
    wait_until(lambda: bool(server.opened), timeout=15)
    # The master reports the slave's modes: without ECHO, the client has gone raw, so
    # whatever the test types now reaches the server byte for byte.
    wait_until(lambda: not termios.tcgetattr(term.fd)[3] & termios.ECHO, timeout=10)


def test_keys_sizes_and_exit_code_travel(echo_shell: EchoShell) -> None:
    term = Terminal([sys.executable, "-c", CLIENT, echo_shell.url], client_env(), rows=33, cols=101)
    try:
        connected(term, echo_shell)
        term.send("hello\r")
        term.expect("hello")
        assert echo_shell.opened == {"rows": ["33"], "cols": ["101"], "term": ["xterm-test"]}
        term.resize(41, 120)
        wait_until(lambda: (41, 120) in echo_shell.sizes, timeout=10)
        term.send("bye\r")
        assert term.wait() == 5
    finally:
        term.close()


def test_a_storm_of_resizes_never_stalls_the_keys(echo_shell: EchoShell) -> None:
    """Window changes arrive while keys are sent (a user dragging a window edge).

    Regression: the SIGWINCH handler once set a threading.Event; a signal arriving
    while the main thread held that Event's lock (inside ``clear()``) deadlocked the
    session, and no key was ever sent again.
    """
    term = Terminal([sys.executable, "-c", CLIENT, echo_shell.url], client_env())
    try:
        connected(term, echo_shell)
        term.send("start\r")
        term.expect("start")
        for i in range(1500):
            term.resize(30 + i % 7, 90 + i % 11)  # the ioctl and an explicit SIGWINCH
            if i % 20 == 0:
                term.send(f"k{i};")
                term.read_for(0)
        term.resize(50, 150)
        term.send("end-of-storm\r")
        term.expect("k1480;")
        term.expect("end-of-storm", timeout=20)
        wait_until(lambda: echo_shell.sizes[-1:] == [(50, 150)], timeout=10)
        term.send("bye\r")
        assert term.wait() == 5
    finally:
        term.close()
