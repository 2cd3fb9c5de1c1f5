"""The shim zygote's client: a forked, ready shim per task instead of a new interpreter.

The zygote itself is ``shim.serve``; see its docstring for why it exists and what it
answers. The executor asks it first and starts the shim the slow way when it cannot.
"""

from __future__ import annotations

import hashlib
import marshal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from node_agent.executors import shim

SHIM_PATH = str(Path(shim.__file__).resolve())


class Zygote:
    """The client of the shim zygote (``shim.serve``): one per state directory.

    The zygote is started on first use in a session of its own, so it outlives the
    agent like the shims do, and a restarted agent finds it again by its address (an
    abstract socket named after the state directory and the shim's code, so a changed
    shim gets a fresh zygote). Any failure here returns None: the executor then starts
    the shim the slow way, so the zygote is only ever an optimisation.
    """

    def __init__(self, state_dir: Path) -> None:
        code = Path(SHIM_PATH).read_bytes()
        key = hashlib.sha256(code + sys.executable.encode() + str(state_dir).encode())
        self.address = f"hakuriver-zygote-{key.hexdigest()[:24]}"
        self.state_dir = state_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def spawn(self, state_dir: str, task_id: str, spec: Any) -> tuple[int, str] | None:
        """Fork a shim for the task; (shim pid, its answer line), or None."""
        request = marshal.dumps((state_dir, task_id, spec))
        for attempt in range(2):
            try:
                return self._ask(request)
            except OSError:
                if attempt or not self._start():
                    return None
        return None

    def _ask(self, request: bytes) -> tuple[int, str]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(30)
            conn.connect("\0" + self.address)
            conn.sendall(request)
            conn.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := conn.recv(4096):
                chunks.append(chunk)
        lines = b"".join(chunks).decode(errors="replace").split("\n")
        if len(lines) < 2 or not lines[0].isdigit():
            raise ConnectionError("the zygote gave no answer")
        return int(lines[0]), lines[1].strip()

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
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                        probe.connect("\0" + self.address)
                    return True
                except OSError:
                    if self._process.poll() is not None and self._process.returncode != 0:
                        return False
                    time.sleep(0.002)
            return False


class NoZygote:
    """No zygote: every shim is started the slow way (tests, or where one cannot run)."""

    def spawn(self, state_dir: str, task_id: str, spec: Any) -> tuple[int, str] | None:
        return None
