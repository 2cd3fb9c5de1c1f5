"""The EventStore contract, against real DuckDB files."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import duckdb
import pytest
from support.factories import heartbeat, started, submitted

from events.envelope import NewEvent, Recorded
from events.ids import new_id
from events.log_reader import read_only
from events.store import EventStore, InvalidEvent
from events.types import TaskSubmitted

pytestmark = pytest.mark.timeout(60)


async def test_batch_is_appended_atomically_in_order(tmp_path: Path) -> None:
    # Given an empty log
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        batch = [submitted(), heartbeat(), submitted()]
        # When one batch is appended
        seqs = await store.append(batch)
        # Then it gets consecutive seqs, in order, and reads back identically
        assert seqs == [1, 2, 3]
        back = await store.read()
        assert [r.id for r in back] == [e.id for e in batch]
        assert [r.event for r in back] == [e.event for e in batch]
        assert back[1].stream == "node:node1" and back[1].source == "node1"


async def test_a_batch_with_an_invalid_event_is_rejected_whole(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        good = submitted()
        bad = NewEvent(id="not-a-uuid", source="host", occurred_at_us=1, event=good.event)
        with pytest.raises(InvalidEvent, match=r"events\[1\]\.id"):
            await store.append([good, bad])
        assert await store.read() == []
        assert store.last_seq == 0


async def test_re_appending_returns_original_seq_without_a_second_row(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        first = submitted()
        second = heartbeat()
        assert await store.append([first, second]) == [1, 2]
        # Duplicates across batches and inside one batch
        again = submitted()
        assert await store.append([second, again, again, first]) == [2, 3, 3, 1]
        rows = await store.query("SELECT count(*), count(DISTINCT id) FROM events")
        assert rows == [(3, 3)]


async def test_resend_of_an_id_older_than_the_memory_window_is_found_in_the_table(
    tmp_path: Path,
) -> None:
    # A tiny window forces the fallback lookup in DuckDB.
    async with await EventStore.open(tmp_path / "log.duckdb", recent_ids=2) as store:
        events = [submitted() for _ in range(10)]
        for event in events:
            await store.append([event])
        assert len(store._recent.seq_by_id) == 2
        assert await store.append([events[0], events[5]]) == [1, 6]
        assert store.last_seq == 10


async def test_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "log.duckdb"
    events = [submitted() for _ in range(5)]
    async with await EventStore.open(path) as store:
        await store.append(events)
        last_hash = store._last_hash
    async with await EventStore.open(path) as store:
        assert store.last_seq == 5
        assert store._last_hash == last_hash
        # Idempotency survives the restart too
        assert await store.append([events[2]]) == [3]
        assert await store.append([heartbeat()]) == [6]
        assert (await store.verify()).ok


async def test_idempotency_survives_reopen_beyond_the_memory_window(tmp_path: Path) -> None:
    path = tmp_path / "log.duckdb"
    events = [submitted() for _ in range(20)]
    async with await EventStore.open(path, recent_ids=5) as store:
        await store.append(events)
    async with await EventStore.open(path, recent_ids=5) as store:
        assert await store.append([events[0], events[19]]) == [1, 20]
        assert store.last_seq == 20


async def test_concurrent_appenders_never_leave_gaps_or_reorder(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "log.duckdb") as store:

        async def producer(n: int) -> list[tuple[int, str]]:
            out = []
            for _ in range(n):
                batch = [submitted() for _ in range(random.randint(1, 5))]
                seqs = await store.append(batch)
                out.extend(zip(seqs, (e.id for e in batch), strict=True))
            return out

        results = await asyncio.gather(*(producer(30) for _ in range(16)))
        acked = dict(pair for result in results for pair in result)
        rows = await store.query("SELECT seq, id::VARCHAR FROM events ORDER BY seq")
        assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))
        assert dict(rows) == acked
        # Group commit merged concurrent appends into fewer transactions
        assert store.commits < sum(len(r) for r in results)
        assert (await store.verify()).ok


async def test_each_callers_batch_stays_contiguous_under_group_commit(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        batches = [[submitted() for _ in range(7)] for _ in range(20)]
        results = await asyncio.gather(*(store.append(b) for b in batches))
        for seqs in results:
            assert seqs == list(range(seqs[0], seqs[0] + 7))


async def test_subscribe_delivers_catch_up_then_live_exactly_once(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "log.duckdb", ring_size=4) as store:
        await store.append([submitted() for _ in range(10)])
        seen: list[int] = []
        done = asyncio.Event()

        async def follow() -> None:
            async for record in store.subscribe(after=3):
                seen.append(record.seq)
                if record.seq == 40:
                    done.set()
                    return

        follower = asyncio.create_task(follow())
        # Live appends, some while the follower is still catching up
        for _ in range(10):
            await store.append([heartbeat(), submitted(), heartbeat()])
        await asyncio.wait_for(done.wait(), 10)
        await follower
        assert seen == list(range(4, 41))


@pytest.mark.timeout(20)
async def test_a_subscriber_arriving_between_a_commit_and_its_publication_waits(
    tmp_path: Path,
) -> None:
    """The window that hung the suite: the writer thread has committed seq 2, the loop has
    not yet put it in the ring. A subscriber checking then must wait, not spin (a spin
    never yields, so the loop could never publish: a hang)."""
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        await store.append([submitted()])
        committed, release = threading.Event(), threading.Event()
        commit = store._commit_sync

        def commit_then_hold(batch: Any) -> Any:
            result = commit(batch)
            committed.set()  # durable now; its publication waits for ``release``
            release.wait(15)
            return result

        store._commit_sync = commit_then_hold  # type: ignore[method-assign]
        appending = asyncio.create_task(store.append([submitted()]))
        assert await asyncio.to_thread(committed.wait, 15)

        # When a subscriber asks for what follows seq 1 inside the window
        follower = store.subscribe(after=1)
        first = asyncio.ensure_future(anext(follower))
        for _ in range(20):  # let it run through its loop many times (no timing involved)
            await asyncio.sleep(0)

        # Then it waits for the publication, and gets seq 2 once, when it comes
        assert not first.done()
        release.set()
        assert await appending == [2]
        record = await asyncio.wait_for(first, 10)
        assert record.seq == 2
        await follower.aclose()


class _HeldCommits:
    """Wraps a store's commit so that, when asked, it pauses after the commit is durable
    and before the loop publishes it: the window in which subscribers once spun."""

    def __init__(self, store: EventStore) -> None:
        self._commit = store._commit_sync
        self.committed = threading.Event()
        self.release = threading.Event()
        self.holding = False
        store._commit_sync = self  # type: ignore[method-assign]

    def __call__(self, batch: Any) -> Any:
        result = self._commit(batch)
        if self.holding:
            self.committed.set()
            self.release.wait(15)
        return result

    def hold_next(self) -> None:
        self.committed.clear()
        self.release.clear()
        self.holding = True

    def let_go(self) -> None:
        self.holding = False
        self.release.set()


@pytest.mark.timeout(60)
async def test_subscribers_arriving_in_the_publication_window_get_every_event_once(
    tmp_path: Path,
) -> None:
    """The interleaving above, repeated: 200 commits, each held between its commit and its
    publication while subscribers start at random points (from the log, from the ring,
    inside the unpublished batch); each sees every seq once, in order."""
    rng = random.Random(7)
    async with await EventStore.open(tmp_path / "log.duckdb", ring_size=16) as store:
        held = _HeldCommits(store)
        for _ in range(200):
            before = store.last_seq
            size = rng.randint(1, 6)
            held.hold_next()
            batch = [submitted() for _ in range(size)]
            appending: asyncio.Task[list[int]] = asyncio.create_task(store.append(batch))
            assert await asyncio.to_thread(held.committed.wait, 15)
            after_each = [rng.randint(max(0, before - 30), before + size - 1) for _ in range(4)]
            followers = [
                (after, asyncio.create_task(_follow(store, after, before + size, rng)))
                for after in after_each
            ]
            for _ in range(rng.randint(0, 5)):
                await asyncio.sleep(0)  # let the followers run inside the window
            held.let_go()
            await appending
            for after, task in followers:
                seen = await asyncio.wait_for(task, 10)
                assert seen == list(range(after + 1, before + size + 1))


async def _follow(store: EventStore, after: int, until: int, rng: random.Random) -> list[int]:
    seen: list[int] = []
    async for record in store.subscribe(after=after, page=rng.choice((3, 7, 1000))):
        seen.append(record.seq)
        if record.seq == until:
            break
    return seen


async def test_unknown_kind_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "log.duckdb"
    async with await EventStore.open(path) as store:
        await store.append([submitted(), submitted()])
    # A newer build wrote a kind this one does not know
    con = duckdb.connect(str(path))
    con.execute(
        "INSERT INTO events SELECT 3, uuid(), 'task.teleported', 'task:x', 'host', now(), now(),"
        ' 1, \'{"kind":"task.teleported"}\', hash FROM events WHERE seq = 2'
    )
    con.close()
    async with await EventStore.open(path) as store:
        records = await store.read()
        assert [r.seq for r in records] == [1, 2]
        assert store.codec.skipped == {"task.teleported": 1}


async def test_editing_one_stored_byte_fails_verification_at_that_seq(tmp_path: Path) -> None:
    path = tmp_path / "log.duckdb"
    async with await EventStore.open(path) as store:
        tid = new_id()
        await store.append([submitted(tid), *[heartbeat() for _ in range(8)], started(tid)])
        assert (await store.verify()).ok
    con = duckdb.connect(str(path))
    # "cpu_percent":12.5 -> "cpu_percent":12.6 in seq 6
    con.execute("UPDATE events SET payload = replace(payload, '12.5', '12.6') WHERE seq = 6")
    con.close()
    async with await EventStore.open(path) as store:
        result = await store.verify()
        assert not result.ok
        assert result.first_bad_seq == 6
        assert result.checked == 5
        # A range that ends before the edit still verifies
        assert (await store.verify(1, 5)).ok


async def test_append_after_close_is_refused(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "log.duckdb")
    await store.close()
    with pytest.raises(Exception, match="closed"):
        await store.append([submitted()])


async def test_listeners_see_each_commit_before_the_ack(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        seen: list[Recorded] = []
        store.add_listener(seen.extend)
        events = [submitted(), heartbeat()]
        seqs = await store.append(events)
        assert [r.seq for r in seen] == seqs
        assert isinstance(seen[0].event, TaskSubmitted)
        await store.append(events)  # duplicates produce no new records
        assert len(seen) == 2


CRASH_CHILD = r"""
import asyncio, sys
from events.store import EventStore
from events.envelope import new_event
from events.types import NodeHeartbeat

async def main():
    store = await EventStore.open(sys.argv[1])
    async def producer(i):
        while True:
            hb = NodeHeartbeat(node=f"n{i}")
            batch = [new_event(hb, source=f"n{i}") for _ in range(1 + i % 3)]
            seqs = await store.append(batch)
            for event, seq in zip(batch, seqs):
                sys.stdout.write(f"{seq} {event.id}\n")
            sys.stdout.flush()
    await asyncio.gather(*(producer(i) for i in range(4)))

asyncio.run(main())
"""


@pytest.mark.timeout(120)
def test_every_acknowledged_event_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "log.duckdb"
    for round_ in range(3):
        # Given a child process appending and printing each acknowledged seq
        child = subprocess.Popen(
            [sys.executable, "-c", CRASH_CHILD, str(path)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert child.stdout is not None
        acked: dict[int, str] = {}
        target = random.randint(100, 1200)
        for line in child.stdout:
            seq, eid = line.split()
            acked[int(seq)] = eid
            if len(acked) >= target:
                break
        # When it is SIGKILLed at an arbitrary moment
        child.send_signal(signal.SIGKILL)
        child.wait()
        for line in child.stdout:  # acks printed before death count too
            if line.count(" ") == 1 and line.endswith("\n"):
                seq, eid = line.split()
                acked[int(seq)] = eid
        # Then every acknowledged event is there, once, with the same seq
        con = duckdb.connect(str(path))
        rows = dict(con.execute("SELECT seq, id::VARCHAR FROM events").fetchall())
        con.close()
        missing = {s: e for s, e in acked.items() if rows.get(s) != e}
        assert not missing, f"round {round_}: {len(missing)} acknowledged events lost"
        assert sorted(rows) == list(range(1, len(rows) + 1))

    async def check() -> None:
        async with await EventStore.open(path) as store:
            assert (await store.verify()).ok

    asyncio.run(check())


async def test_snapshots_are_files_anchored_to_the_log(tmp_path: Path) -> None:
    path = tmp_path / "log.duckdb"
    async with await EventStore.open(path, keep_snapshots=2) as store:
        await store.append([submitted() for _ in range(6)])
        for seq in (2, 4, 5):
            await store.save_snapshot("cluster", seq, f"state@{seq}".encode())
        # Retention keeps the newest two
        assert len(list(store.snapshot_dir.glob("cluster-*.snap"))) == 2
        assert await store.latest_snapshot("cluster") == (5, b"state@5")
        assert await store.latest_snapshot("cluster", at_or_before=4) == (4, b"state@4")
        assert await store.latest_snapshot("cluster", at_or_before=3) is None
        with pytest.raises(ValueError, match="not in the log"):
            await store.save_snapshot("cluster", 99, b"x")
    # A different log in the same place: the old snapshots no longer match its hashes
    path.unlink()
    async with await EventStore.open(path) as store:
        await store.append([submitted() for _ in range(6)])
        assert await store.latest_snapshot("cluster") is None


async def test_read_filters_by_kind_stream_source_seq_and_time(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        tid = new_id()
        await store.append([submitted(tid), heartbeat("n1"), heartbeat("n2")])
        first_batch_at = (await store.read())[-1].recorded_at_us
        await store.append([started(tid, "n2"), heartbeat("n1")])
        assert [r.seq for r in await store.read(kinds=["node.heartbeat"])] == [2, 3, 5]
        assert [r.seq for r in await store.read(streams=[f"task:{tid}"])] == [1, 4]
        assert [r.seq for r in await store.read(sources=["n2"])] == [3, 4]
        assert [r.seq for r in await store.read(after=2, until_seq=4)] == [3, 4]
        assert [r.seq for r in await store.read(until_us=first_batch_at)] == [1, 2, 3]
        assert [r.seq for r in await store.read(after=1, limit=2)] == [2, 3]


async def test_verifying_past_the_end_checks_what_is_there(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        await store.append([submitted() for _ in range(3)])
        result = await store.verify(1, 10)
        assert result.ok and result.checked == 3


async def test_readers_cannot_write_the_log(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        await store.append([submitted() for _ in range(3)])
        # When a reader tries to change the log, DuckDB refuses it
        for sql in (
            "DELETE FROM events",
            "UPDATE events SET kind = 'task.teleported'",
            "INSERT INTO events SELECT * FROM events",
        ):
            with pytest.raises(duckdb.TransactionException, match="read-only"):
                await store.query(sql)
        cursor = store.reader_cursor()
        try:
            with read_only(cursor), pytest.raises(duckdb.TransactionException):
                cursor.execute("DELETE FROM events")
        finally:
            cursor.close()
        # Then the log is whole, and the writer and the readers go on as before
        assert (await store.verify()).checked == 3
        assert await store.append([submitted()]) == [4]
        assert await store.query("SELECT count(*), max(seq) FROM events") == [(4, 4)]
        assert [r.seq for r in await store.read(after=2)] == [3, 4]
