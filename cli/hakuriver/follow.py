"""Following the output of submitted tasks while waiting for them (``task submit --follow``).

Each task's standard output goes to stdout and its standard error to stderr, as it is
written. With several tasks every line is labelled with its task's number, as
``srun --label`` does (``12: loss 0.31``), and lines of different tasks never mix;
with one task the bytes pass through untouched. One thread and one streamed request
per task and stream: the control plane ends each stream once the task has ended and
its output is all sent.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import BinaryIO

from cli.hakuriver.client import ApiError, HakuClient, Stream


class Followers:
    """Threads copying the output of some tasks to this process's stdout and stderr."""

    def __init__(
        self,
        base_url: str,
        tasks: Sequence[tuple[str, str]],
        *,
        token: str | None = None,
        ca_fingerprint: str | None = None,
    ) -> None:
        self._token = token
        """``tasks``: (what to ask the API for, the label to show) per task."""
        self._pin = ca_fingerprint
        self.errors: list[str] = []
        self._label = len(tasks) > 1
        self._locks = {"stdout": threading.Lock(), "stderr": threading.Lock()}
        self._threads = [
            threading.Thread(
                target=self._copy,
                args=(base_url, ident, label, stream),
                name=f"hakuriver-follow-{label}-{stream}",
                daemon=True,  # Ctrl-C must not wait for a task that runs for days
            )
            for ident, label in tasks
            for stream in ("stdout", "stderr")
        ]
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds in all for the streams to end."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _copy(self, base_url: str, ident: str, label: str, stream: Stream) -> None:
        out = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
        prefix = f"{label}: ".encode() if self._label else b""
        pending = b""
        try:
            with HakuClient(base_url, token=self._token, ca_fingerprint=self._pin) as client:
                for chunk in client.follow_logs(ident, stream):
                    if not self._label:
                        self._write(stream, out, chunk)
                        continue
                    *lines, pending = (pending + chunk).split(b"\n")
                    if lines:
                        self._write(stream, out, b"".join(prefix + x + b"\n" for x in lines))
        except ApiError as exc:
            self.errors.append(f"{stream} of task {label}: {exc}")
        if pending:
            self._write(stream, out, prefix + pending + b"\n")

    def _write(self, stream: str, out: BinaryIO, data: bytes) -> None:
        with self._locks[stream]:
            try:
                out.write(data)
                out.flush()
            except (BrokenPipeError, ValueError):  # the reader went away: nobody to tell
                pass
