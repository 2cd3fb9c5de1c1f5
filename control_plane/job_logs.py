"""A job's combined output: its ranks' ``.out`` files merged line by line.

Each rank's script merges its stderr into its stdout (``events.jobs``), so one file per
rank, ``<shared_dir>/task_outputs/<rank task id>.out``, holds all of it in order. With
more than one rank served, every line gets ``node-{rank} | `` in front (seed 002); lines
of different ranks never mix, and a rank's partial last line is held until its line ends
(or, at the end, written with a newline). One rank alone passes through untouched.

A line ends at ``\\n`` or at ``\\r``: a progress bar (tqdm) that redraws its line with
``\\r`` is prefixed at every update, so a terminal shows each rank's latest state
instead of one endless line (``\\r\\n`` stays one line end). A line longer than
``MAX_LINE`` (64 KiB) is cut: every ``MAX_LINE`` bytes are written as a line of their
own, and the line goes on, prefixed again, on the next one. So what is held per rank is
bounded whatever a job prints.

The files are read ``CHUNK`` (1 MiB) at a time, and each chunk is prefixed on the same
worker thread that read it: a log request holds about a chunk per rank, whatever the
output's size, and never keeps the event loop busy for more than handing a chunk on.

``follow``: the files are read as they grow, rank after rank, until the job has ended
and every file is drained; without it, what is written when the request came, rank by
rank.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

from control_plane.logs import log_size, read_from

# How long a follower waits for the next commit before it reads the files again: output
# is written by the nodes straight to the shared storage, no event tells of it.
POLL_S = 0.2
# What is read (and prefixed) at a time.
CHUNK = 1 << 20
# The longest line written as one: what a rank's partial line may hold.
MAX_LINE = 64 << 10
_LINE_END = re.compile(rb"[\r\n]")


class _RankLog:
    """One rank's file, where the reading is, and its partial last line."""

    def __init__(self, path: Path, prefix: bytes) -> None:
        self.path = path
        self.prefix = prefix
        self.position = 0
        self.pending = bytearray()
        # The last line ended with \r: a \n right after it ends the same line.
        self.after_cr = False

    def take(self, data: bytes) -> bytes:
        """The lines of ``data`` that end (after what was held), prefixed; the rest is
        held (at most ``MAX_LINE`` bytes: past it, a piece of the line is written)."""
        if not self.prefix:
            return data
        out = bytearray()
        view = memoryview(data)
        start = 0
        for match in _LINE_END.finditer(data):
            end = match.start()
            mark = data[end : end + 1]
            if mark == b"\n" and end == start and self.after_cr and not self.pending:
                out += b"\n"  # the \n of a \r\n: its line was written
            else:
                self._add(out, view[start:end])
                out += self.prefix
                out += self.pending
                out += mark
                self.pending.clear()
            self.after_cr = mark == b"\r"
            start = end + 1
        if start < len(data):
            self._add(out, view[start:])
        return bytes(out)

    def _add(self, out: bytearray, part: memoryview) -> None:
        """Hold ``part`` as the line's continuation, writing out each ``MAX_LINE`` piece."""
        if not part:
            return
        self.after_cr = False
        while len(self.pending) + len(part) > MAX_LINE:
            room = MAX_LINE - len(self.pending)
            out += self.prefix
            out += self.pending
            out += part[:room]
            out += b"\n"
            self.pending.clear()
            part = part[room:]
        self.pending += part

    def flush(self) -> bytes:
        """The held partial line, ended (the file ends without a newline)."""
        if not self.pending:
            return b""
        held = self.prefix + bytes(self.pending) + b"\n"
        self.pending.clear()
        return held

    def read(self, end: int | None = None) -> tuple[bytes, bool]:
        """The next chunk, prefixed (blocking: on a worker thread), and whether anything
        was read. ``end``: read no further than this offset."""
        limit = CHUNK if end is None else min(CHUNK, end - self.position)
        if limit <= 0:
            return b"", False
        data, self.position = read_from(self.path, self.position, limit)
        return (self.take(data), True) if data else (b"", False)


def rank_logs(paths: Sequence[tuple[int, Path]], *, prefixed: bool) -> list[_RankLog]:
    """The readers of ``(rank, path)`` pairs (prefixed with ``node-{rank} | `` or not)."""
    return [_RankLog(path, f"node-{rank} | ".encode() if prefixed else b"") for rank, path in paths]


async def read_now(logs: Sequence[_RankLog]) -> AsyncIterator[bytes]:
    """What the files hold now (their sizes when this starts), rank by rank, a chunk at
    a time: a file still growing does not keep the answer going."""
    ends = [await asyncio.to_thread(log_size, log.path) for log in logs]
    for log, end in zip(logs, ends, strict=True):
        while True:
            out, got = await asyncio.to_thread(log.read, end)
            if not got:
                break
            if out:
                yield out
        if out := log.flush():
            yield out


async def follow(
    logs: Sequence[_RankLog],
    ended: Callable[[], bool],
    changed: Callable[[float], Awaitable[None]],
    stopping: asyncio.Event,
) -> AsyncIterator[bytes]:
    """The files as they grow, until ``ended()`` and all is read (or the host stops).

    ``changed(within_s)`` waits for the next commit (``ControlPlane.changed``).
    """
    while not stopping.is_set():
        done = ended()  # before reading: what is written before the end is read after it
        got = False
        for log in logs:
            out, read = await asyncio.to_thread(log.read)
            got = got or read
            if out:
                yield out
        if got:
            continue
        if done:
            break
        await changed(POLL_S)
    for log in logs:
        if out := log.flush():
            yield out
