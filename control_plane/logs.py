"""Task output files: where they are and how to read a slice of them.

The node agent writes ``<shared_dir>/task_outputs/<id>.out`` and
``<shared_dir>/task_errors/<id>.err`` (seed 001); the host reads the same shared
storage. Reads are blocking file I/O: callers run them in a thread.

Every read is bounded, whatever the file's size: ``read_from`` returns at most
``MAX_CHUNK`` bytes, and ``read_tail`` reads at most ``MAX_TAIL_BYTES`` from the end
(blocks read backwards into a list, each byte read and counted once) and stops early
when its caller sets ``stop`` (the client left). A reader thread thus never outlives
its request by more than one block.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

Stream = Literal["stdout", "stderr"]
MAX_CHUNK = 8 << 20
# ``tail``: at most this many lines may be asked for (more is refused, naming ``tail``),
# and the answer holds at most this many bytes (the last whole lines that fit: clamped).
MAX_TAIL_LINES = 100_000
MAX_TAIL_BYTES = MAX_CHUNK
_BLOCK = 64 << 10


class Tail(NamedTuple):
    """The end of a file: its last lines, the file's size, and whether the bytes cap cut it."""

    data: bytes
    size: int
    clamped: bool = False


def log_path(shared_dir: Path, task_id: str, stream: Stream) -> Path:
    """The file holding a task's stdout or stderr."""
    if stream == "stdout":
        return shared_dir / "task_outputs" / f"{task_id}.out"
    return shared_dir / "task_errors" / f"{task_id}.err"


def log_size(path: Path) -> int:
    """The file's size now (0 while it does not exist)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def read_from(path: Path, offset: int, limit: int = MAX_CHUNK) -> tuple[bytes, int]:
    """Bytes from ``offset`` (at most ``limit``) and the offset after them.

    An offset at or past the end reads nothing (no seek beyond the file: an offset
    larger than the platform's ``off_t`` would fail there).
    """
    try:
        with path.open("rb") as f:
            if offset >= os.fstat(f.fileno()).st_size:
                return b"", offset
            f.seek(offset)
            data = f.read(limit)
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)


def read_tail(
    path: Path,
    lines: int,
    *,
    max_bytes: int = MAX_TAIL_BYTES,
    block: int = _BLOCK,
    stop: threading.Event | None = None,
) -> Tail:
    """The last ``lines`` lines of a file (at most ``max_bytes`` of them) and its size.

    Blocks are read from the end backwards into a list and their newlines counted as
    they arrive, so the work is linear in what is returned. When the lines asked for
    span more than ``max_bytes``, the answer is the last whole lines within that many
    bytes and ``clamped`` is true. ``stop`` set: the reading ends at the next block.
    """
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return Tail(b"", 0)
    with f:
        size = os.fstat(f.fileno()).st_size
        if lines <= 0 or size == 0:
            return Tail(b"", size)
        # A final newline ends the last line; it does not start another.
        wanted = lines + 1 if _last_byte(f, size) == b"\n" else lines
        blocks: list[bytes] = []
        newlines = 0
        pos = size
        floor = max(0, size - max_bytes)
        while pos > floor and newlines < wanted:
            if stop is not None and stop.is_set():
                return Tail(b"", size)
            step = min(block, pos - floor)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            blocks.append(chunk)
            newlines += chunk.count(b"\n")
        data = b"".join(reversed(blocks))
    clamped = newlines < wanted and pos > 0
    if newlines >= wanted:
        # Keep what follows the ``wanted``-th newline from the end.
        cut = len(data)
        for _ in range(wanted):
            cut = data.rindex(b"\n", 0, cut)
        data = data[cut + 1 :]
    elif clamped:
        # The bytes cap cut a line: start at the first whole one.
        start = data.find(b"\n")
        data = data[start + 1 :] if start >= 0 else b""
    return Tail(data, size, clamped)


def _last_byte(f: BinaryIO, size: int) -> bytes:
    f.seek(size - 1)
    return f.read(1)
