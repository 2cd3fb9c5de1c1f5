"""Task output files: where they are and how to read a slice of them.

The node agent writes ``<shared_dir>/task_outputs/<id>.out`` and
``<shared_dir>/task_errors/<id>.err`` (seed 001); the host reads the same shared
storage. Reads are blocking file I/O: callers run them in a thread.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Literal

Stream = Literal["stdout", "stderr"]
MAX_CHUNK = 8 << 20


def log_path(shared_dir: Path, task_id: str, stream: Stream) -> Path:
    """The file holding a task's stdout or stderr."""
    if stream == "stdout":
        return shared_dir / "task_outputs" / f"{task_id}.out"
    return shared_dir / "task_errors" / f"{task_id}.err"


def read_from(path: Path, offset: int, limit: int = MAX_CHUNK) -> tuple[bytes, int]:
    """Bytes from ``offset`` (at most ``limit``) and the offset after them."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(limit)
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)


def read_tail(path: Path, lines: int, block: int = 64 << 10) -> tuple[bytes, int]:
    """The last ``lines`` lines of a file and the file's size (the offset to follow from)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return b"", 0
    with f:
        size = os.fstat(f.fileno()).st_size
        if lines <= 0:
            return b"", size
        pos = size
        data = b""
        # A final newline ends the last line; it does not start another.
        wanted = lines + 1 if size and _last_byte(f, size) == b"\n" else lines
        while pos > 0 and data.count(b"\n") < wanted:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
        parts = data.split(b"\n")
        keep = parts[-wanted:] if len(parts) > wanted else parts
        return b"\n".join(keep), size


def _last_byte(f: BinaryIO, size: int) -> bytes:
    f.seek(size - 1)
    return f.read(1)
