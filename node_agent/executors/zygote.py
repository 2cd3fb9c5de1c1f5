"""The shim zygote's client: a forked, ready shim per task instead of a new interpreter.

The zygote itself is ``shim.serve``; see its docstring for why it exists, who may talk
to it and what it answers. The executor asks it first and starts the shim the slow way
when it cannot.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from node_agent.executors import shim

SHIM_PATH = str(Path(shim.__file__).resolve())
# One request and its answer: the zygote serves each connection in a child of its own,
# so only a wedged zygote (or machine) makes this wait; then the slow path starts the shim.
ASK_TIMEOUT_S = 20.0  # above the shim's RUN_RECORD_S: it answers once the record is written


class Zygote:
    """The client of the shim zygote (``shim.serve``): one per state directory.

    The zygote is started on first use in a session of its own, so it outlives the
    agent like the shims do, and a restarted agent finds it again by its address: a
    socket file in the (private, 0700) state directory, named after the shim's code and
    the interpreter, so a changed shim gets a fresh zygote. Any failure here returns
    None: the executor then starts the shim the slow way, so the zygote is only ever an
    optimisation.
    """

    def __init__(self, state_dir: Path) -> None:
        code = Path(SHIM_PATH).read_bytes()
        key = hashlib.sha256(code + sys.executable.encode()).hexdigest()[:16]
        self.address = str(state_dir / f"zygote-{key}.sock")
        self.state_dir = state_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def spawn(
        self, task_id: str, spec: dict[str, Any]
    ) -> tuple[int, str, socket.socket | None] | None:
        """Fork a shim for the task; (shim pid, its answer line, the connection to the
        started shim), or None.

        A request the zygote refused comes back as (0, ``!`` and why, None): the slow path
        would refuse it the same way. The connection (None when the task did not start) is
        the caller's: the shim holds its end until the task's exit is recorded, then
        closes it, so the end of the stream is the first sign of the task's end, before
        the shim has even exited (``ProcessExecutor._shim_exit``).
        """
        request = shim.encode_request(task_id, spec)
        for attempt in range(2):
            try:
                return self._ask(request)
            except OSError:
                if attempt or not self._start():
                    return None
        return None

    def _connect(self) -> socket.socket:
        conn: socket.socket = shim.unix_socket(self.address, timeout=ASK_TIMEOUT_S)
        return conn

    def _ask(self, request: bytes) -> tuple[int, str, socket.socket | None]:
        conn = self._connect()
        try:
            deadline = time.monotonic() + ASK_TIMEOUT_S
            conn.sendall(request)
            received = b""
            try:
                # The answer is one line (a refusal: ``!`` and why) or two (the shim's pid,
                # then the task's pid or ``!`` and why), in one write; a started shim then
                # keeps the connection open until its task's exit is recorded.
                while not _whole_answer(received):
                    conn.settimeout(max(0.001, deadline - time.monotonic()))
                    chunk = conn.recv(4096)  # TimeoutError once past the deadline
                    if not chunk:
                        break
                    received += chunk
            except OSError:
                # Sent and not answered in time (or cut off): a shim may be starting the
                # task, so it is not asked again (``spawn`` retries OSErrors): the start
                # fails, with the shim's log.
                conn.close()
                return 0, "", None
        except BaseException:
            conn.close()
            raise
        if not received:
            # Accepted and read, then closed without a word: the forked shim died (it
            # answers its pid and how the start went in one write, at the end). It may
            # have started the task, so it is not asked again: the start fails, with the
            # shim's log. (A reset while waiting for the answer is an OSError above: not
            # asked again either; only a failed connect or send is.)
            conn.close()
            return 0, "", None
        lines = received.decode(errors="replace").split("\n")
        if lines[0].startswith("!"):
            conn.close()
            return 0, lines[0], None
        if len(lines) < 2 or not lines[0].isdigit():
            conn.close()
            return 0, "", None  # an answer cut short: as above, never asked again
        answer = lines[1].strip()
        if not answer or answer.startswith("!"):
            conn.close()
            return int(lines[0]), answer, None
        return int(lines[0]), answer, conn

    def _start(self) -> bool:
        with self._lock:
            if self._process is not None:
                self._process.poll()  # reap a previous zygote that exited while idle
            # Each forked shim sends its stderr to its task's log; the zygote says nothing.
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", SHIM_PATH, "--zygote", self.address],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    self._connect().close()
                    return True
                except OSError:
                    # Exited: refused to serve, or found another zygote that is leaving.
                    if self._process.poll() is not None:
                        return False
                    time.sleep(0.002)
            return False


def _whole_answer(received: bytes) -> bool:
    """Whether ``received`` holds a zygote's whole answer (see ``Zygote._ask``)."""
    if received.startswith(b"!"):
        return b"\n" in received
    return received.count(b"\n") >= 2


class NoZygote:
    """No zygote: every shim is started the slow way (tests, or where one cannot run)."""

    def spawn(
        self, task_id: str, spec: dict[str, Any]
    ) -> tuple[int, str, socket.socket | None] | None:
        return None
