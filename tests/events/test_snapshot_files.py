"""The one snapshot module: folder and names, atomic write, pruning, the anchored read.

Real logs in real DuckDB files; a failing write is a real one (a file size limit the
kernel enforces, in a child process).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from support.factories import submitted

from events.snapshot_files import CLUSTER, SnapshotFiles, snapshot_dir
from events.store import EventStore

pytestmark = pytest.mark.timeout(60)


async def make_log(path: Path, events: int = 6) -> None:
    async with await EventStore.open(path) as store:
        await store.append([submitted() for _ in range(events)])


def hashes_of(path: Path) -> Callable[[int], bytes | None]:
    """The log's ``hash_at``, read once from a closed log (a copy of its hashes)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        table = {
            int(seq): bytes(digest)
            for seq, digest in con.sql("SELECT seq, hash FROM events").fetchall()
        }
    finally:
        con.close()
    return table.get


async def test_the_folder_and_names_are_one_rule(tmp_path: Path) -> None:
    db = tmp_path / "log.duckdb"
    files = SnapshotFiles(db)
    assert files.folder == snapshot_dir(db) == tmp_path / "log.duckdb.snapshots"
    assert files.path(CLUSTER, 42).name == "cluster-000000000000042.snap"
    async with await EventStore.open(db) as store:
        assert store.snapshot_dir == files.folder
    with pytest.raises(ValueError, match="snapshot name 'cluster-x'"):
        files.path("cluster-x", 1)


async def test_write_then_read_back_newest_first_and_prune(tmp_path: Path) -> None:
    db = tmp_path / "log.duckdb"
    await make_log(db)
    hash_of = hashes_of(db)
    files = SnapshotFiles(db)
    for seq in (1, 3, 5, 6):
        anchor = hash_of(seq)
        assert anchor is not None
        files.write(CLUSTER, seq, anchor, f"state@{seq}".encode(), keep=3)
    # Then the newest three stay, newest first, and nothing temporary is left
    assert [seq for seq, _ in files.listing(CLUSTER)] == [6, 5, 3]
    assert [seq for seq, _ in files.listing(CLUSTER, at_or_before=5)] == [5, 3]
    assert not list(files.folder.glob("*.tmp"))
    assert files.read(CLUSTER, 5, hash_of) == b"state@5"
    assert files.latest(CLUSTER, 4, hash_of) == (3, b"state@3")
    assert files.latest(CLUSTER, 2, hash_of) is None
    with pytest.raises(ValueError, match="anchor: 3 bytes"):
        files.write(CLUSTER, 2, b"abc", b"x")


async def test_a_snapshot_whose_anchor_no_longer_matches_is_ignored(tmp_path: Path) -> None:
    # Given two different logs, each with its own snapshots
    first, second = tmp_path / "a" / "log.duckdb", tmp_path / "b" / "log.duckdb"
    for db in (first, second):
        db.parent.mkdir()
        await make_log(db)
    first_hash, second_hash = hashes_of(first), hashes_of(second)
    SnapshotFiles(first).write(CLUSTER, 4, first_hash(4) or b"", b"first@4")
    replaced = SnapshotFiles(second)
    replaced.write(CLUSTER, 2, second_hash(2) or b"", b"second@2")
    # When a newer snapshot of the first log lands beside the second (a restored backup)
    shutil.copy(SnapshotFiles(first).path(CLUSTER, 4), replaced.path(CLUSTER, 4))
    # Then it is listed but never read: the older snapshot that matches is used
    assert [seq for seq, _ in replaced.listing(CLUSTER)] == [4, 2]
    assert replaced.read(CLUSTER, 4, second_hash) is None
    assert replaced.latest(CLUSTER, None, second_hash) == (2, b"second@2")
    # And a torn file (shorter than its anchor) is no snapshot either
    replaced.path(CLUSTER, 5).write_bytes(b"torn")
    assert replaced.latest(CLUSTER, None, second_hash) == (2, b"second@2")
    assert replaced.read_unchecked(CLUSTER, 5) is None
    # And through the store, on the second log, the same
    async with await EventStore.open(second) as store:
        assert await store.latest_snapshot(CLUSTER) == (2, b"second@2")


FAILING_WRITE = r"""
import resource, signal, sys
from events.snapshot_files import SnapshotFiles

# A file size limit the kernel enforces: the write fails part way, as on a full disk.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    SnapshotFiles(sys.argv[1]).write("cluster", 6, bytes.fromhex(sys.argv[2]), b"x" * 100_000)
except OSError as exc:
    print("failed", exc.errno)
else:
    print("written")
"""


def test_a_write_that_fails_midway_leaves_no_file_and_the_old_snapshot(tmp_path: Path) -> None:
    # Given a log with a snapshot at seq 3
    db = tmp_path / "log.duckdb"
    asyncio.run(make_log(db))
    hash_of = hashes_of(db)
    files = SnapshotFiles(db)
    files.write(CLUSTER, 3, hash_of(3) or b"", b"state@3")
    anchor = hash_of(6)
    assert anchor is not None
    # When writing the next one fails part way through
    out = subprocess.run(
        [sys.executable, "-c", FAILING_WRITE, str(db), anchor.hex()],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert out.stdout.startswith("failed"), out.stdout + out.stderr
    # Then neither a temporary file nor a partial snapshot is left, and the old one is used
    # (the store's own id mark, written when make_log closed it, is another name's file)
    left = sorted(p.name for p in files.folder.iterdir() if not p.name.startswith("ids-"))
    assert left == ["cluster-000000000000003.snap"]
    assert files.latest(CLUSTER, None, hash_of) == (3, b"state@3")


async def test_a_temporary_file_left_by_a_crash_is_never_read_and_goes_at_the_next_write(
    tmp_path: Path,
) -> None:
    db = tmp_path / "log.duckdb"
    await make_log(db)
    hash_of = hashes_of(db)
    files = SnapshotFiles(db)
    files.write(CLUSTER, 2, hash_of(2) or b"", b"state@2")
    # Given what a process killed mid-write leaves: the whole data under the temporary name
    left = files.path(CLUSTER, 6).with_suffix(".tmp")
    left.write_bytes((hash_of(6) or b"") + b"state@6")
    # Then readers do not see it
    assert [seq for seq, _ in files.listing(CLUSTER)] == [2]
    assert files.latest(CLUSTER, None, hash_of) == (2, b"state@2")
    # And the next write of that name removes it
    files.write(CLUSTER, 4, hash_of(4) or b"", b"state@4")
    assert not left.exists()
    assert files.latest(CLUSTER, None, hash_of) == (4, b"state@4")
