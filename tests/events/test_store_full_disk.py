"""The store on a full disk: failed commits fail their callers cleanly, and it writes on.

Each test puts the log on a real tmpfs of a few MiB (``support.small_disk``), fills it
with a file, and frees it again; nothing is mocked. Before the fix, a commit that hit
the full disk failed with DuckDB's own error (a 500 upstream) and a checkpoint that hit
it left DuckDB's database invalidated, so every later commit failed even after the
space came back (until the host was restarted).
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import duckdb
import pytest
from support.factories import heartbeat, submitted
from support.small_disk import Filler, small_disk
from support.waiting import async_wait_until

import events.store as store_module
from control_plane.history import HistoryService
from events.envelope import NewEvent
from events.snapshot_files import CLUSTER
from events.store import EventStore, StoreUnavailable
from replay_tools.audit import audit
from replay_tools.queries import sql_query

pytestmark = pytest.mark.timeout(60)


def big_batch(n: int = 40) -> list[NewEvent]:
    """Events enough to need new pages of the WAL (a full disk refuses them)."""
    return [submitted() for _ in range(n)]


async def append_until_refused(store: EventStore, tries: int = 50) -> StoreUnavailable:
    """Append batches until the full disk refuses one; that refusal."""
    for _ in range(tries):
        try:
            await store.append(big_batch())
        except StoreUnavailable as exc:
            return exc
    raise AssertionError(f"{tries} batches appended on a full disk")


async def test_a_commit_on_a_full_disk_fails_its_callers_and_the_next_one_writes_on(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk", 4) as disk:
        async with await EventStore.open(disk / "log.duckdb", outage_hold_s=0.5) as store:
            # Given a log with events, on a disk that is then filled
            assert await store.append([submitted(), heartbeat()]) == [1, 2]
            filler = Filler(disk)
            filler.fill()

            # When batches are appended, one group of several callers among them
            refused = await append_until_refused(store)
            before = store.last_seq
            callers = await asyncio.gather(
                *(store.append(big_batch(10)) for _ in range(3)), return_exceptions=True
            )

            # Then every caller of a failed group gets StoreUnavailable, naming the reason,
            # and nothing of their batches is in the log
            assert refused.reason == "no space left on device", refused
            assert all(isinstance(c, StoreUnavailable) for c in callers), callers
            assert store.last_seq == before
            rows = await store.query("SELECT count(*), max(seq) FROM events")
            assert rows == [(before, before)]
            failure = store.write_failure
            assert failure is not None and failure.what == "commit"
            assert failure.reason == "no space left on device" and failure.failures >= 2

            # When the space comes back, the same events are appended again
            filler.free()
            again = big_batch(5)
            seqs = await store.append(again)

            # Then they follow without a gap, and the chain holds
            assert seqs == list(range(before + 1, before + 6))
            assert (await store.verify()).ok
            # And the outage ends once writes have gone through for a while (on a full
            # disk, small writes may still land between failures: one proves nothing)
            assert store.write_failure is not None
            await store.append([heartbeat()])
            await async_wait_until(lambda: store.write_failure is None, 10)
        # And the file, reopened, holds exactly that: the chain and the invariants hold
        report = audit(disk / "log.duckdb")
        assert report.ok, report.to_dict()
        async with await EventStore.open(disk / "log.duckdb") as reopened:
            assert reopened.last_seq == before + 6


async def test_a_checkpoint_on_a_full_disk_does_not_leave_the_log_unwritable(
    tmp_path: Path,
) -> None:
    # A small checkpoint threshold: the idle writer checkpoints as soon as the WAL is big.
    with small_disk(tmp_path / "disk", 8) as disk:
        store = await EventStore.open(
            disk / "log.duckdb",
            checkpoint_soft_bytes=256 << 10,
            checkpoint_idle_s=0.05,
            outage_hold_s=0,
        )
        async with store:
            # Given a WAL past the threshold and a disk filled before the checkpoint
            filler = Filler(disk)
            store._checkpoint_not_before = float("inf")  # hold it while the disk fills
            wal = disk / "log.duckdb.wal"
            while not wal.exists() or wal.stat().st_size < 256 << 10:
                await store.append(big_batch())
            last = store.last_seq
            filler.fill()
            store._checkpoint_not_before = 0.0

            # When the idle writer checkpoints, DuckDB fails and invalidates the database
            await async_wait_until(lambda: store.reopens >= 1, 20)
            failure = store.write_failure
            assert failure is not None and failure.what == "checkpoint", failure
            assert failure.reason == "no space left on device"

            # Then the store opened the file again: readers read, and once space is back
            # the next commit writes on from where the log ended
            assert [r.seq for r in await store.read(after=last - 2)] == [last - 1, last]
            filler.free()
            assert await store.append([heartbeat()]) == [last + 1]
            await async_wait_until(lambda: store.write_failure is None, 20)
            assert store.checkpoints >= 1
            assert (await store.verify()).ok
        async with await EventStore.open(disk / "log.duckdb") as reopened:
            assert reopened.last_seq == last + 1
            assert (await reopened.verify()).ok


async def test_the_log_its_wal_and_its_snapshots_are_private_whatever_the_umask(
    tmp_path: Path,
) -> None:
    # Given a data folder others may enter, and a permissive umask
    folder = tmp_path / "data"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    old = os.umask(0o022)
    try:
        async with await EventStore.open(folder / "log.duckdb", checkpoint_idle_s=60) as store:
            # When the log is written, and a snapshot taken
            await store.append([submitted()])
            await store.save_snapshot(CLUSTER, 1, b"state")
            wal = folder / "log.duckdb.wal"
            assert wal.exists()
            modes = {
                p.name: stat.S_IMODE(p.stat().st_mode)
                for p in (folder, folder / "log.duckdb", wal, store.snapshot_dir)
            }
            modes["snapshot"] = stat.S_IMODE(next(store.snapshot_dir.glob("*.snap")).stat().st_mode)
    finally:
        os.umask(old)
    # Then the folder was made private at open, and every file is its owner's alone
    assert modes == {
        "data": 0o700,
        "log.duckdb": 0o600,
        "log.duckdb.wal": 0o600,
        "log.duckdb.snapshots": 0o700,
        "snapshot": 0o600,
    }


async def test_a_commit_reported_failed_that_is_durable_after_all_is_answered_as_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB does not promise that a commit which raised left nothing: the store checks
    where the file ends. Here the insert lands, then the storage reports a failure (as
    an fsync that fails after the write would): the callers get their seqs, the events
    are published once, and the chain goes on from them."""
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        await store.append([submitted()])
        seen: list[int] = []
        store.add_listener(lambda batch: seen.extend(r.seq for r in batch))
        real_write = store_module.write_plan

        def write_then_fail(con: Any, plan: Any) -> None:
            real_write(con, plan)
            raise duckdb.IOException("Could not fsync file: No space left on device")

        monkeypatch.setattr(store_module, "write_plan", write_then_fail)
        batch = big_batch(3)
        assert await store.append(batch) == [2, 3, 4]
        monkeypatch.setattr(store_module, "write_plan", real_write)

        assert await store.append(batch) == [2, 3, 4]  # a re-send: the same seqs
        assert await store.append([heartbeat()]) == [5]
        assert seen == [2, 3, 4, 5]
        assert (await store.verify()).ok


async def test_user_sql_works_again_after_a_failed_checkpoint_reopened_the_log(
    tmp_path: Path,
) -> None:
    # Given a history service whose SQL slot has its cursor on the store's connection
    with small_disk(tmp_path / "disk", 8) as disk:
        store = await EventStore.open(
            disk / "log.duckdb",
            checkpoint_soft_bytes=256 << 10,
            checkpoint_idle_s=0.05,
            outage_hold_s=0,
        )
        service = HistoryService(store)
        try:
            await service.start()
            count = sql_query("SELECT count(*) AS n FROM events", 10)
            store._checkpoint_not_before = float("inf")
            wal = disk / "log.duckdb.wal"
            while not wal.exists() or wal.stat().st_size < 256 << 10:
                await store.append(big_batch())
            assert (await service.sql(count))["rows"] == [[store.last_seq]]
            # When a checkpoint fails on a full disk and the store opens its file again
            filler = Filler(disk)
            filler.fill()
            store._checkpoint_not_before = 0.0
            await async_wait_until(lambda: store._checkpoint_outage._last_failure > 0, 20)
            # (on a loaded machine the reopen right after the failure can fail too, while
            # the disk is still full: the idle writer tries it again once there is room)
            filler.free()
            await async_wait_until(lambda: store.reopens >= 1, 20)
            # Then user SQL runs on the new connection, every time, under its memory cap
            for _ in range(3):
                assert (await service.sql(count))["rows"] == [[store.last_seq]]
            cap = sql_query("SELECT current_setting('operator_memory_limit') AS cap", 1)
            assert (await service.sql(cap))["rows"][0][0], "the memory cap is set"
        finally:
            await service.close()
            await store.close()
