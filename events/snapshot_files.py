"""Snapshot files: folded state kept beside the log and tied to it by the log's own hash.

The one rule for every snapshot in the project:

* folder: ``<db>.snapshots/`` next to the database file (``snapshot_dir``), never in it;
* name: ``<name>-<seq, 15 digits>.snap``; the control plane writes ``cluster`` snapshots
  (``EventStore.save_snapshot``), ``replay_tools.snapshots`` writes ``history`` ones, and
  the store its ``ids`` mark (``EventStore._write_id_mark``);
* content: the log's chain hash at ``seq`` (32 bytes, the anchor), then the data;
* write: to ``<name>-<seq>.tmp`` (mode 0600, in a 0700 folder: ``events.file_modes``),
  fsync, rename over the final name, fsync the folder, so a reader finds the old file
  or the whole new one, and the rename survives a power cut. A write that fails removes
  its temporary file; one that a crash leaves behind is never read, and the next write of
  that name removes it;
* read: only while the anchor equals the log's hash at that seq. A snapshot of a
  replaced or restored database no longer matches, and is ignored rather than used.

Each name has one writer at a time (the control plane for ``cluster``, its history
service or an offline tool with the host stopped for ``history``). Snapshots are derived
data: any of them can be deleted, and a rebuild then folds more of the log.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path

from events.file_modes import open_private, private_dir

CLUSTER = "cluster"
HISTORY = "history"
ANCHOR_BYTES = 32

# The log's stored chain hash at a seq, or None when the log has no such seq.
HashAt = Callable[[int], bytes | None]

_NAME = re.compile(r"[a-z]+")


def snapshot_dir(db_path: str | os.PathLike[str]) -> Path:
    """Where the snapshots of the log at ``db_path`` live: beside it, never inside it."""
    path = Path(db_path)
    return path.with_name(path.name + ".snapshots")


class SnapshotFiles:
    """The snapshot files of one log: their names, the atomic write, pruning, the anchored read."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.folder = snapshot_dir(db_path)

    def path(self, name: str, seq: int) -> Path:
        """The file of the snapshot ``name`` at ``seq``."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"snapshot name {name!r}: lower-case letters only")
        return self.folder / f"{name}-{seq:015d}.snap"

    def listing(self, name: str, at_or_before: int | None = None) -> list[tuple[int, Path]]:
        """(seq, path) of the files of snapshot ``name``, newest first, anchored or not."""
        self.path(name, 0)  # the name check
        found: list[tuple[int, Path]] = []
        for path in self.folder.glob(f"{name}-*.snap"):
            try:
                seq = int(path.stem.rsplit("-", 1)[1])
            except ValueError:
                continue
            if at_or_before is None or seq <= at_or_before:
                found.append((seq, path))
        return sorted(found, reverse=True)

    def write(
        self, name: str, seq: int, anchor: bytes, data: bytes, *, keep: int | None = None
    ) -> Path:
        """Store ``data`` as snapshot ``name`` at ``seq``, atomically and durably.

        ``anchor`` is the log's hash at ``seq``. With ``keep``, only the newest ``keep``
        files of this name stay afterwards.
        """
        if len(anchor) != ANCHOR_BYTES:
            raise ValueError(f"anchor: {len(anchor)} bytes, not a {ANCHOR_BYTES}-byte hash")
        final = self.path(name, seq)
        created = not self.folder.exists()
        private_dir(self.folder)
        if created:
            _fsync_dir(self.folder.parent)
        for stale in self.folder.glob(f"{name}-*.tmp"):  # left by a crash mid-write
            stale.unlink(missing_ok=True)
        tmp = final.with_suffix(".tmp")
        try:
            with os.fdopen(open_private(tmp), "wb") as out:
                out.write(anchor)
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.folder)
        if keep is not None:
            for _, old in self.listing(name)[keep:]:
                old.unlink(missing_ok=True)
        return final

    def anchored(self, seq: int, path: Path, hash_at: HashAt) -> bytes | None:
        """The data of the snapshot file ``path`` (taken at ``seq``) if it belongs to this log."""
        blob = _read(path)
        if blob is None or len(blob) < ANCHOR_BYTES:
            return None
        return blob[ANCHOR_BYTES:] if hash_at(seq) == blob[:ANCHOR_BYTES] else None

    def read(self, name: str, seq: int, hash_at: HashAt) -> bytes | None:
        """The data of snapshot ``name`` at ``seq`` if its file exists and belongs to this log."""
        return self.anchored(seq, self.path(name, seq), hash_at)

    def read_unchecked(self, name: str, seq: int) -> tuple[bytes, bytes] | None:
        """(anchor, data) of snapshot ``name`` at ``seq``; the caller checks the anchor."""
        blob = _read(self.path(name, seq))
        if blob is None or len(blob) < ANCHOR_BYTES:
            return None
        return blob[:ANCHOR_BYTES], blob[ANCHOR_BYTES:]

    def latest(
        self, name: str, at_or_before: int | None, hash_at: HashAt
    ) -> tuple[int, bytes] | None:
        """The newest snapshot ``name`` at or before a seq, of this log, as (seq, data)."""
        for seq, path in self.listing(name, at_or_before):
            data = self.anchored(seq, path, hash_at)
            if data is not None:
                return seq, data
        return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:  # pruned meanwhile
        return None


def _fsync_dir(folder: Path) -> None:
    """Make the folder's entries (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
            os.fsync(fd)
    finally:
        os.close(fd)
