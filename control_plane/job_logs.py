"""A job's combined output: its ranks' ``.out`` files merged line by line.

Each rank's script merges its stderr into its stdout (``events.jobs``), so one file per
rank, ``<shared_dir>/task_outputs/<rank task id>.out``, holds all of it in order. With
more than one rank served, every line gets ``node-{rank} | `` in front (seed 002); lines
of different ranks never mix, and a rank's partial last line is held until its newline
comes (or, at the end, written with one). One rank alone passes through untouched.

``follow``: the files are read as they grow, rank after rank, until the job has ended
and every file is drained; without it, what is written now, rank by rank.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

from control_plane.logs import read_from

# How long a follower waits for the next commit before it reads the files again: output
# is written by the nodes straight to the shared storage, no event tells of it.
POLL_S = 0.2


class _RankLog:
    """One rank's file, where the reading is, and its partial last line."""

    def __init__(self, path: Path, prefix: bytes) -> None:
        self.path = path
        self.prefix = prefix
        self.position = 0
        self.pending = b""

    def take(self, data: bytes) -> bytes:
        """The whole lines of ``data`` (after what was held), prefixed; the rest is held."""
        if not self.prefix:
            return data
        *lines, self.pending = (self.pending + data).split(b"\n")
        return b"".join(self.prefix + line + b"\n" for line in lines)

    def flush(self) -> bytes:
        """The held partial line, ended (the file ends without a newline)."""
        held, self.pending = self.pending, b""
        return self.prefix + held + b"\n" if held else b""


def rank_logs(paths: Sequence[tuple[int, Path]], *, prefixed: bool) -> list[_RankLog]:
    """The readers of ``(rank, path)`` pairs (prefixed with ``node-{rank} | `` or not)."""
    return [_RankLog(path, f"node-{rank} | ".encode() if prefixed else b"") for rank, path in paths]


async def read_now(logs: Sequence[_RankLog]) -> AsyncIterator[bytes]:
    """What the files hold now, rank by rank."""
    for log in logs:
        while True:
            data, log.position = await asyncio.to_thread(read_from, log.path, log.position)
            if not data:
                break
            if out := log.take(data):
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
            data, log.position = await asyncio.to_thread(read_from, log.path, log.position)
            if data:
                got = True
                if out := log.take(data):
                    yield out
        if got:
            continue
        if done:
            break
        await changed(POLL_S)
    for log in logs:
        if out := log.flush():
            yield out
