"""The audit's verified watermark: where the last passing audit ended, so the next reads on.

A passing audit up to seq W writes a small file (by default ``audit-watermark.json`` in the
log's snapshot folder, ``events.snapshot_files.snapshot_dir``) holding W, **the stored
chain hash of W**, and the audit's state at W (each task not yet final, with the resources
held, and each node's registered capacity). The next audit:

1. checks that the log still holds exactly W rows up to W and that row W's stored hash is
   the recorded one (two cheap reads). Any edit at or below W made by recomputing the chain
   changes W's hash, a deleted or added row below W changes the count: either is reported
   (``kind: "watermark"``) and the whole log is re-verified to locate it;
2. verifies the chain from W + 1 on, starting from the recorded hash, and the invariants of
   the new rows by folding them from the recorded state. Two uniqueness probes (event ids,
   task ids submitted again) still look at the older rows, through DuckDB semi-joins over
   two columns that return only collisions.

What it does not protect against: an edit below W that leaves the hash column alone (the
row's own stored hash then no longer matches its bytes, which only re-hashing the rows finds:
``--full``), and anyone who can write the watermark file (they can move it forward over rows
they changed). Keep the watermark where the log's writer cannot write (``--watermark FILE``)
when that matters. A missing or unreadable watermark means a full verify, never a pass.

The file is written atomically (temporary file, fsync, rename), so a kill at any moment
leaves the old watermark or the new one, never a torn one; a torn temporary is ignored.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import msgspec

from events.snapshot_files import snapshot_dir

WATERMARK_NAME = "audit-watermark.json"
FORMAT = 1


class Held(msgspec.Struct, frozen=True, array_like=True):
    """What a task holds on its node (as its ``task.placed`` said)."""

    node: str
    cores: int
    memory: int
    gpus: list[int]


class Watermark(msgspec.Struct, kw_only=True):
    """The state of a passing audit at ``seq``: enough to verify what comes after."""

    format: int = FORMAT
    seq: int
    hash: str  # row ``seq``'s stored chain hash, hex
    tasks: dict[str, str]  # each task not final at ``seq``: its state
    held: dict[str, Held]  # each task holding resources at ``seq``
    nodes: dict[str, tuple[int | None, int | None]]  # node: (cores, memory) last registered


def default_path(log: str | os.PathLike[str]) -> Path:
    """Where the watermark of the log at ``log`` lives unless told otherwise."""
    return snapshot_dir(log) / WATERMARK_NAME


def read(path: Path) -> tuple[Watermark | None, str]:
    """The watermark at ``path``, or None with why it cannot be used (then verify fully)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, "no watermark: verified from the first event"
    except OSError as exc:
        return None, f"watermark unreadable ({exc.strerror}): verified from the first event"
    try:
        mark = msgspec.json.decode(raw, type=Watermark)
        if mark.format != FORMAT or mark.seq < 1 or len(bytes.fromhex(mark.hash)) != 32:
            raise ValueError("unknown format")
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return None, "watermark corrupt: ignored, verified from the first event"
    return mark, ""


def write(path: Path, mark: Watermark) -> str:
    """Write ``mark`` atomically; the note says where, or why it could not be written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as out:
            out.write(msgspec.json.encode(mark))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return f"watermark not written ({exc.strerror})"
    return f"watermark at seq {mark.seq}"
