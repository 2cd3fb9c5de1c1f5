"""A command run on a real pseudo-terminal, as a user at a terminal would run it.

``Terminal(argv, env)`` forks the command with a pty as its controlling terminal
(so it gets SIGWINCH on a resize), lets the test type (``send``), wait for text
with a deadline (``expect``), resize the window and collect the exit code.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import termios
import time

CURSOR_QUERY = b"\x1b[6n"


class Terminal:
    """A child process on a pty; see the module docstring."""

    def __init__(
        self, argv: list[str], env: dict[str, str], *, rows: int = 24, cols: int = 80
    ) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: the pty is its controlling terminal
            try:
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = b""
        self.code: int | None = None
        self._answered = 0
        self.resize(rows, cols, signal_child=False)

    def resize(self, rows: int, cols: int, *, signal_child: bool = True) -> None:
        """Set the window size; the kernel sends SIGWINCH to the foreground group."""
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        if signal_child:
            os.kill(self.pid, signal.SIGWINCH)

    def send(self, text: str) -> None:
        """Type ``text``."""
        os.write(self.fd, text.encode())

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not data:
            return False
        self.output += data
        # Answer cursor-position queries like a terminal emulator (busybox ash asks, and
        # waits for the answer). Counted over the whole output: a query may arrive split.
        asked = self.output.count(CURSOR_QUERY)
        while self._answered < asked:
            os.write(self.fd, b"\x1b[1;1R")
            self._answered += 1
        return True

    def expect(self, text: str, timeout: float = 20) -> None:
        """Read until ``text`` has appeared in the output; fail after ``timeout``."""
        wanted = text.encode()
        deadline = time.monotonic() + timeout
        while wanted not in self.output:
            if time.monotonic() > deadline or not self._read(0.1):
                if wanted in self.output:
                    return
                raise AssertionError(f"{text!r} not seen within {timeout}s in {self.output!r}")

    def read_for(self, seconds: float) -> None:
        """Collect whatever arrives during ``seconds`` (no condition to wait for)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and self._read(max(0.0, end - time.monotonic())):
            pass

    def wait(self, timeout: float = 20) -> int:
        """Read until the child exits; its exit code."""
        deadline = time.monotonic() + timeout
        while self.code is None:
            self._read(0.05)
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.code = os.waitstatus_to_exitcode(status)
                while self._read(0):
                    if not select.select([self.fd], [], [], 0)[0]:
                        break
            elif time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise AssertionError(f"still running after {timeout}s: {self.output!r}")
        return self.code

    def close(self) -> None:
        """Kill the child if it still runs and close the terminal."""
        if self.code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)
