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

Resuming (``from``, docs/api.md): what is read comes as ``Piece``s, each with its rank
and ``offset``, the byte offset in that rank's file just after what the piece stands
for (``RankLog.offset``: what is held of a partial line is not yet stood for). A reader
started at such an offset (``rank_logs(..., offsets)``) writes exactly what the first
one would have written after that piece: the held line is read again from its start,
and the only other state, whether the last line ended with ``\r`` (a ``\n`` then ends
the same line), is the byte before the offset, read again. So a follower cut off (the
host stopped or restarted) asks again from its offsets, and sees no line twice, none
lost, and no line broken where the first reading would not have broken it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import NamedTuple

from control_plane.errors import InvalidRequest
from control_plane.logs import log_size, read_from

# How long a follower waits for the next commit before it reads the files again: output
# is written by the nodes straight to the shared storage, no event tells of it.
POLL_S = 0.2
# How long a follower may hear nothing before a keep-alive (ndjson's ``{"alive": true}``);
# a client that hears nothing for several of these takes the host for gone
# (cli/hakuriver/jobs.py).
KEEPALIVE_S = 10.0
# What is read (and prefixed) at a time.
CHUNK = 1 << 20
# The longest line written as one: what a rank's partial line may hold.
MAX_LINE = 64 << 10
_LINE_END = re.compile(rb"[\r\n]")
# ``from``: ``RANK:OFFSET`` pairs, comma-separated (ASCII digits only: int() takes more).
_OFFSET_PAIR = re.compile(r"([0-9]{1,9}):([0-9]{1,19})")
MAX_FROM = 64 << 10


class Piece(NamedTuple):
    """Output of one rank: the bytes to write (prefixed if the answer is), and the offset
    in the rank's file just after what they stand for (where a resumed reading starts)."""

    rank: int
    data: bytes
    offset: int


class RankLog:
    """One rank's file, where the reading is, and its partial last line."""

    def __init__(self, rank: int, path: Path, prefix: bytes) -> None:
        self.rank = rank
        self.path = path
        self.prefix = prefix
        self.position = 0
        self.pending = bytearray()
        # The last line ended with \r: a \n right after it ends the same line.
        self.after_cr = False

    @property
    def offset(self) -> int:
        """Where a reading that resumes after what was written starts: the held partial
        line is read again."""
        return self.position - len(self.pending)

    def start_at(self, offset: int) -> None:
        """Read from ``offset`` on, as a reader that wrote everything before it would
        (blocking: the byte before it is read, to know whether a line ended with \r)."""
        self.position = offset
        if self.prefix and offset > 0:
            before, _ = read_from(self.path, offset - 1, 1)
            self.after_cr = before == b"\r"

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

    def piece(self, data: bytes) -> Piece:
        return Piece(self.rank, data, self.offset)


def rank_logs(
    paths: Sequence[tuple[int, Path]],
    *,
    prefixed: bool,
    offsets: dict[int, int] | None = None,
) -> list[RankLog]:
    """The readers of ``(rank, path)`` pairs (prefixed with ``node-{rank} | `` or not),
    each from its rank's offset in ``offsets`` (0 when not named; blocking then: on a
    worker thread)."""
    logs = [
        RankLog(rank, path, f"node-{rank} | ".encode() if prefixed else b"") for rank, path in paths
    ]
    for log in logs:
        if offsets and offsets.get(log.rank):
            log.start_at(offsets[log.rank])
    return logs


def parse_offsets(text: str, ranks: Collection[int]) -> dict[int, int]:
    """``from``: ``RANK:OFFSET[,RANK:OFFSET...]`` (byte offsets into the ranks' files, as
    the pieces of an earlier answer gave them), each rank one of ``ranks`` and named once;
    ``InvalidRequest`` naming ``from`` otherwise."""
    if len(text) > MAX_FROM:
        raise InvalidRequest("from", f"longer than {MAX_FROM} characters")
    offsets: dict[int, int] = {}
    for part in text.split(",") if text else []:
        match = _OFFSET_PAIR.fullmatch(part)
        if match is None:
            raise InvalidRequest(
                "from", f"{part[:40]!r} is not RANK:OFFSET (e.g. from=0:1234,1:99)"
            )
        rank, offset = int(match[1]), int(match[2])
        if rank not in ranks:
            raise InvalidRequest("from", f"rank {rank} is not one this answer reads")
        if rank in offsets:
            raise InvalidRequest("from", f"rank {rank} is named twice")
        if offset > 2**63 - 1:
            raise InvalidRequest("from", f"offset {offset} is too large")
        offsets[rank] = offset
    return offsets


async def read_now(logs: Sequence[RankLog]) -> AsyncIterator[Piece]:
    """What the files hold now (their sizes when this starts), rank by rank, a chunk at
    a time: a file still growing does not keep the answer going."""
    ends = [await asyncio.to_thread(log_size, log.path) for log in logs]
    for log, end in zip(logs, ends, strict=True):
        while True:
            out, got = await asyncio.to_thread(log.read, end)
            if not got:
                break
            if out:
                yield log.piece(out)
        if out := log.flush():
            yield log.piece(out)


async def follow(
    logs: Sequence[RankLog],
    ended: Callable[[], bool],
    changed: Callable[[float], Awaitable[None]],
    stopping: asyncio.Event,
    *,
    flush_on_stop: bool = True,
) -> AsyncIterator[Piece | None]:
    """The files as they grow, until ``ended()`` and all is read (or the host stops).

    ``changed(within_s)`` waits for the next commit (``ControlPlane.changed``). A None
    comes after each ``KEEPALIVE_S`` without output: the route sends a keep-alive, so a
    follower tells a silent job from a host that is gone. The held
    partial lines are written at the end; when the host stops, only if ``flush_on_stop``
    (a reader that will resume leaves them to the resumed reading, which holds them
    again: written now, the line would be broken in two).
    """
    said = time.monotonic()
    while not stopping.is_set():
        done = ended()  # before reading: what is written before the end is read after it
        got = False
        for log in logs:
            out, read = await asyncio.to_thread(log.read)
            got = got or read
            if out:
                said = time.monotonic()
                yield log.piece(out)
        if got:
            continue
        if done:
            break
        if time.monotonic() - said >= KEEPALIVE_S:
            said = time.monotonic()
            yield None  # nothing new for a while: the follower hears the host is there
        await changed(POLL_S)
    if stopping.is_set() and not flush_on_stop:
        return
    for log in logs:
        if out := log.flush():
            yield log.piece(out)
