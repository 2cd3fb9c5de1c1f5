"""Archive segments: the final tasks, written once beside the log (projections/archive.py).

Each segment is a file ``archive-<seq>.snap`` in the snapshot folder, written by the one
snapshot rule (``events.snapshot_files``: temporary name, fsync, rename, fsync the
folder), before any ``cluster`` snapshot that names it. Its first 32 bytes are a random
token that the naming snapshot records, so a snapshot (itself anchored to the log's hash)
only ever reads the very file written for it; the segment needs no anchor of its own.

Order of writes, and what a crash (kill -9) at any point leaves:

1. the segment file: a crash before or during it leaves at most a ``.tmp`` that is never
   read, and the previous snapshot, which names only older segments;
2. the snapshot naming it: a crash between 1 and 2 leaves a segment no snapshot names.
   The previous snapshot is restored and the tail folded: the tasks of that segment are
   in the previous snapshot or in the tail, and nothing is lost. The next snapshot seals
   them into a new segment and ``prune`` removes the orphan.

Segments are never rewritten, and removed only when the newest snapshot no longer names
them (older kept snapshots name a prefix of the newest's list). Derived data: delete the
folder and the next start folds the whole log.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from events.snapshot_files import SnapshotFiles

ARCHIVE = "archive"
TOKEN_BYTES = 32
SUFFIX = ".snapshots"


class SegmentUnavailable(LookupError):
    """A segment a snapshot names is missing, or is not the file written for it."""


def new_token() -> bytes:
    """The random token a new segment starts with."""
    return os.urandom(TOKEN_BYTES)


class ArchiveFiles:
    """The archive segments of one log (in its snapshot folder)."""

    def __init__(self, snapshot_folder: Path) -> None:
        # The folder is ``<db>.snapshots`` (``snapshot_dir``): the same files, the same rule.
        if not snapshot_folder.name.endswith(SUFFIX):
            raise ValueError(f"{snapshot_folder}: not a snapshot folder (<db>{SUFFIX})")
        db_path = snapshot_folder.with_name(snapshot_folder.name.removesuffix(SUFFIX))
        self._files = SnapshotFiles(db_path)

    def path(self, seq: int) -> Path:
        return self._files.path(ARCHIVE, seq)

    def write(self, seq: int, token: bytes, data: bytes) -> Path:
        """Write the segment sealed at ``seq`` atomically and durably (never pruned here)."""
        return self._files.write(ARCHIVE, seq, token, data)

    def read(self, seq: int, token: bytes) -> bytes:
        """The segment's data, if its file is the one written with ``token``."""
        try:
            blob = self.path(seq).read_bytes()
        except FileNotFoundError as exc:
            raise SegmentUnavailable(f"archive segment {seq} is missing") from exc
        if blob[:TOKEN_BYTES] != token:
            raise SegmentUnavailable(f"archive segment {seq} is not the one written")
        return blob[TOKEN_BYTES:]

    def check(self, segments: Iterable[tuple[int, bytes]]) -> None:
        """Raise ``SegmentUnavailable`` unless every (seq, token) has its file: read at
        restore, so that a missing segment means a full fold then, not a failed lookup later
        (32 bytes a segment: the data is read when first needed)."""
        for seq, token in segments:
            try:
                with self.path(seq).open("rb") as f:
                    head = f.read(TOKEN_BYTES)
            except FileNotFoundError as exc:
                raise SegmentUnavailable(f"archive segment {seq} is missing") from exc
            if head != token:
                raise SegmentUnavailable(f"archive segment {seq} is not the one written")

    def prune(self, named: Iterable[int], below: int) -> list[int]:
        """Remove the segments sealed before ``below`` that the newest snapshot (at
        ``below``) does not name: orphans of a crash, or of a chain begun anew."""
        keep = set(named)
        removed = []
        for seq, path in self._files.listing(ARCHIVE, below):
            if seq not in keep:
                path.unlink(missing_ok=True)
                removed.append(seq)
        return removed
