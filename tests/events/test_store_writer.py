"""The writer's handoff (issue 19): the loop hands the whole queue to the writer thread,
which answers with one callback that publishes and acknowledges. What that must keep:

* appends started together go in one group commit (the handoff waits for the callers
  already running on the loop, so a group is not cut after its first append);
* a group that fails fails all its callers, and the writer goes on with the next;
* ``close`` flushes what was queued before it, and each of those appends is durable;
* an idle writer still checkpoints a large WAL (a timer now, not a task waiting).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import duckdb
import pytest
from support.factories import submitted
from support.waiting import async_wait_until

from events.store import EventStore, StoreUnavailable

pytestmark = pytest.mark.timeout(60)


async def test_appends_started_together_are_one_group_commit(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        before = store.commits
        seqs = await asyncio.gather(*(store.append([submitted()]) for _ in range(16)))
        assert sorted(s[0] for s in seqs) == list(range(1, 17))
        assert store.commits == before + 1
        # And the next round, started by the acknowledgements, is one group again.
        seqs = await asyncio.gather(*(store.append([submitted()]) for _ in range(16)))
        assert store.commits == before + 2
        assert store.last_seq == 32


async def test_a_failed_group_fails_its_callers_and_the_writer_goes_on(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        commit = store._commit_sync
        failing = True

        def fail_once(batch: Any) -> Any:
            if failing:
                raise RuntimeError("refused by the test")
            return commit(batch)

        store._commit_sync = fail_once  # type: ignore[method-assign]
        results = await asyncio.gather(
            *(store.append([submitted()]) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results), results
        failing = False
        assert await store.append([submitted()]) == [1]
        assert [r.seq for r in await store.read()] == [1]


async def test_close_flushes_appends_queued_before_it(tmp_path: Path) -> None:
    """A group is on the writer thread (held there), more appends queue behind it, and
    the store is closed: every one of them is committed and answered, none refused."""
    path = tmp_path / "log.duckdb"
    store = await EventStore.open(path)
    commit, release = store._commit_sync, threading.Event()

    def held(batch: Any) -> Any:
        release.wait(15)
        return commit(batch)

    store._commit_sync = held  # type: ignore[method-assign]
    events = [submitted() for _ in range(40)]
    first = [asyncio.ensure_future(store.append([e])) for e in events[:10]]
    await async_wait_until(lambda: store._busy, 10)  # the first group is on the thread
    queued = [asyncio.ensure_future(store.append([e])) for e in events[10:]]
    await asyncio.sleep(0)  # the later appends are queued behind it
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)
    release.set()
    await closing
    assert sorted(a.result()[0] for a in first + queued) == list(range(1, 41))
    assert store.commits == 2
    async with await EventStore.open(path) as again:
        assert sorted(r.id for r in await again.read()) == sorted(e.id for e in events)


async def test_an_idle_writer_checkpoints_a_large_wal(tmp_path: Path) -> None:
    path = tmp_path / "log.duckdb"
    async with await EventStore.open(
        path, checkpoint_idle_s=0.05, checkpoint_soft_bytes=1
    ) as store:
        await store.append([submitted() for _ in range(50)])
        assert path.with_name(path.name + ".wal").stat().st_size > 0
        await async_wait_until(lambda: store.checkpoints >= 1, 10)
        # Appends after it are served as before (the idle check left the writer free).
        assert await store.append([submitted()]) == [51]


async def test_an_idle_writer_opens_the_file_again_after_a_failed_reopen(tmp_path: Path) -> None:
    """A reopen that failed (DuckDB handed back the invalidated instance, or the file could
    not be opened) is tried again by the idle writer, not only by the next commit."""
    async with await EventStore.open(tmp_path / "log.duckdb", checkpoint_idle_s=0.02) as store:
        await store.append([submitted()])
        connect, refusals = store._connect_sync, [1]

        def refused_once() -> Any:
            if refusals:
                refusals.pop()
                raise duckdb.IOException("refused by the test")
            return connect()

        store._connect_sync = refused_once  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        with pytest.raises(StoreUnavailable):
            await loop.run_in_executor(store._writer_thread, store._reopen_sync)
        assert store._con is None and store.reopens == 0
        await async_wait_until(lambda: store.reopens >= 1, 10)
        assert await store.append([submitted()]) == [2]


async def test_a_listener_that_raises_does_not_hold_back_the_answer(tmp_path: Path) -> None:
    # Given a store with a listener that fails, and one after it
    seen: list[int] = []

    def broken(recorded: Any) -> None:
        raise RuntimeError("a projection bug")

    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        store.add_listener(broken)
        store.add_listener(lambda recorded: seen.extend(r.seq for r in recorded))
        # When events are appended: their callers are answered (the rows are durable), the
        # next listener still sees them, and the writer goes on
        first = await asyncio.wait_for(store.append([submitted()]), 10)
        second = await asyncio.wait_for(store.append([submitted()]), 10)
    assert (first, second) == ([1], [2]) and seen == [1, 2]
