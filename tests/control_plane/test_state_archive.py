"""The control plane's snapshots with the task archive (control_plane/state_files.py):
a restart restores the newest snapshot and reads archived tasks lazily, and a kill -9
between the archive's write and the snapshot's loses nothing."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
from pathlib import Path

from support.histories import ClusterSimulation

from control_plane.state_files import StateFiles
from events.archive_files import ArchiveFiles
from events.snapshot_files import CLUSTER, SnapshotFiles
from events.store import EventStore
from projections.cluster import ClusterState
from projections.tasks import FINAL_STATES

ROOT = Path(__file__).resolve().parents[2]


def _events(n_tasks: int, seed: int) -> list:
    sim = ClusterSimulation(random.Random(seed), nodes=3, offline_chance=0.001)
    return list(sim.events(n_tasks))


async def _append(path: Path, events: list, state: ClusterState | None = None) -> int:
    async with await EventStore.open(path) as store:
        if state is not None:
            store.add_listener(state.apply_all)
        for i in range(0, len(events), 500):
            await store.append(events[i : i + 500])
        return store.last_seq


async def _full_fold(path: Path) -> ClusterState:
    async with await EventStore.open(path) as store:
        return ClusterState.rebuild(None, await store.read(after=0))


async def _restart(path: Path) -> tuple[ClusterState, int]:
    async with await EventStore.open(path) as store:
        state, after, _ = await StateFiles(store).rebuild()
        return state, after


async def _snapshot(path: Path, state: ClusterState) -> int:
    async with await EventStore.open(path) as store:
        return await StateFiles(store).snapshot(state)


def _same(a: ClusterState, b: ClusterState) -> None:
    assert a.snapshot() == b.snapshot()  # every task, archived ones read back, in order
    assert (a.numbers, a.last_number) == (b.numbers, b.last_number)
    assert list(a.pending) == list(b.pending)


# The child restores, seals, writes the archive segment and is killed -9 right after it,
# before the snapshot naming the segment is written.
KILLED_AFTER_THE_SEGMENT = r"""
import asyncio, os, signal, sys
from control_plane.state_files import StateFiles
from events.archive_files import ArchiveFiles
from events.store import EventStore

written = ArchiveFiles.write

def write_then_die(self, seq, token, data):
    path = written(self, seq, token, data)
    print(seq, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    return path

ArchiveFiles.write = write_then_die

async def main():
    store = await EventStore.open(sys.argv[1])
    files = StateFiles(store)
    state, _, _ = await files.rebuild()
    await files.snapshot(state)

asyncio.run(main())
"""


def test_a_restart_restores_the_archived_snapshot_and_reads_segments_only_when_asked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.duckdb"
    state = ClusterState()
    asyncio.run(_append(path, _events(120, seed=1), state))
    seq = asyncio.run(_snapshot(path, state))
    final = [t.task_id for t in state.tasks.values() if t.state in FINAL_STATES]
    assert final and ArchiveFiles(tmp_path / "log.duckdb.snapshots").path(seq).exists()
    asyncio.run(_append(path, _events(40, seed=2)))

    restored, after = asyncio.run(_restart(path))
    assert after == seq
    assert restored.tasks.unread_segments() == 1  # not read by the restore nor the tail
    assert restored.tasks[final[0]].state in FINAL_STATES
    _same(restored, asyncio.run(_full_fold(path)))


def test_a_kill_9_between_the_archive_write_and_the_snapshot_loses_nothing(
    tmp_path: Path,
) -> None:
    # Given a log with a snapshot (its final tasks archived), then more tasks ended
    path = tmp_path / "log.duckdb"
    state = ClusterState()
    asyncio.run(_append(path, _events(100, seed=3), state))
    first = asyncio.run(_snapshot(path, state))
    asyncio.run(_append(path, _events(100, seed=4)))
    # When the host is killed -9 after writing the next segment, before its snapshot
    child = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_THE_SEGMENT, str(path)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    orphan = int(child.stdout.split()[0])
    archive = ArchiveFiles(tmp_path / "log.duckdb.snapshots")
    assert orphan > first and archive.path(orphan).exists()
    assert SnapshotFiles(path).listing(CLUSTER)[0][0] == first  # no snapshot names it
    # Then a restart restores the previous snapshot plus the tail: the full fold
    restored, after = asyncio.run(_restart(path))
    assert after == first
    _same(restored, asyncio.run(_full_fold(path)))
    # And the next snapshot archives those tasks anew and removes the orphan
    asyncio.run(_append(path, _events(10, seed=5), restored))
    newest = asyncio.run(_snapshot(path, restored))
    assert newest > orphan and not archive.path(orphan).exists()
    again, after = asyncio.run(_restart(path))
    assert after == newest
    _same(again, asyncio.run(_full_fold(path)))


def test_a_snapshot_naming_a_missing_segment_means_a_full_fold(tmp_path: Path) -> None:
    path = tmp_path / "log.duckdb"
    state = ClusterState()
    asyncio.run(_append(path, _events(60, seed=6), state))
    seq = asyncio.run(_snapshot(path, state))
    ArchiveFiles(tmp_path / "log.duckdb.snapshots").path(seq).unlink()
    restored, after = asyncio.run(_restart(path))
    assert after == 0  # not restored from the snapshot: folded from the start
    _same(restored, asyncio.run(_full_fold(path)))
