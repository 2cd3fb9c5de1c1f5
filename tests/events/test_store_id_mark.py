"""The id mark (events/store.py ``_id_mark``, issue 19): the idempotency watermark at open
without reading the id of every row older than the memory window (at 10M events that read
alone made a restart grow with the history).

The mark is a snapshot file anchored to the log: (seq S, an id at or above every id stored
at or below S), written at each checkpoint and at close. Idempotency must hold whatever
the mark: a resend of any stored event gets its original seq, never a second row.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import duckdb
import msgspec
import pytest
from support.factories import submitted

from events.chain import hash_at
from events.envelope import NewEvent
from events.ids import id_timestamp_ms
from events.recent_ids import IdMark, RecentIds
from events.snapshot_files import SnapshotFiles
from events.store import ID_MARK, EventStore

pytestmark = pytest.mark.timeout(60)


async def _log(path: Path, count: int) -> list[NewEvent]:
    events = [submitted() for _ in range(count)]
    async with await EventStore.open(path, recent_ids=5) as store:
        for start in range(0, count, 7):  # several commits
            await store.append(events[start : start + 7])
    return events


def _true_newest_up_to(path: Path, seq: int) -> str:
    con = duckdb.connect(str(path), read_only=True)
    try:
        ((newest,),) = con.execute(
            "SELECT max(id)::VARCHAR FROM events WHERE seq <= ?", [seq]
        ).fetchall()
    finally:
        con.close()
    return str(newest)


async def test_a_closed_log_reopens_from_its_mark_and_stays_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "log.duckdb"
    events = await _log(path, 40)
    # Given the mark written at close, at the log's end
    ((seq, _),) = SnapshotFiles(path).listing(ID_MARK)
    assert seq == 40
    # anchored to this log, and a bound of every id stored
    con = duckdb.connect(str(path), read_only=True)
    try:
        mark = SnapshotFiles(path).latest(ID_MARK, 40, lambda at: hash_at(con, at))
    finally:
        con.close()
    assert mark is not None and mark[0] == 40
    bound, watermark_ms, capacity = mark[1].decode().split(" ")
    assert bound >= _true_newest_up_to(path, 40)
    assert int(capacity) == 5 and int(watermark_ms) > 0
    below = _true_newest_up_to(path, 35)
    async with await EventStore.open(path, recent_ids=5) as store:
        # Then the watermark is above every id not in the window
        assert store._recent.watermark_ms > id_timestamp_ms(below)
        # And a resend of any stored event, old or recent, gets its original seq
        assert await store.append([events[0], events[20], events[39]]) == [1, 21, 40]
        assert store.last_seq == 40
        rows = await store.query("SELECT count(*), count(DISTINCT id) FROM events")
        assert rows == [(40, 40)]


async def test_the_mark_is_what_the_open_uses(tmp_path: Path) -> None:
    # Given a mark (anchored to this log) naming an id above every stored one
    path = tmp_path / "log.duckdb"
    await _log(path, 30)
    files = SnapshotFiles(path)
    for _, old in files.listing(ID_MARK):
        old.unlink()
    con = duckdb.connect(str(path))
    try:
        anchor = hash_at(con, 28)
    finally:
        con.close()
    assert anchor is not None
    above = "7fffffff-ffff-7fff-bfff-ffffffffffff"
    files.write(ID_MARK, 28, anchor, above.encode())
    # When the log opens, its watermark comes from the mark, not from the rows
    async with await EventStore.open(path, recent_ids=5) as store:
        assert store._recent.watermark_ms == id_timestamp_ms(above) + 1


async def test_a_mark_of_another_log_is_ignored(tmp_path: Path) -> None:
    # Given log B holding log A's mark (a copied folder, a restored database)
    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    await _log(a, 30)
    events_b = await _log(b, 30)
    shutil.rmtree(SnapshotFiles(b).folder)
    shutil.copytree(SnapshotFiles(a).folder, SnapshotFiles(b).folder)
    # When B opens, A's mark does not anchor: B reads its own ids, and stays idempotent
    below = _true_newest_up_to(b, 25)
    async with await EventStore.open(b, recent_ids=5) as store:
        assert store._recent.watermark_ms > id_timestamp_ms(below)
        assert await store.append([events_b[0], events_b[29]]) == [1, 30]


async def test_a_mark_older_than_the_window_is_completed_from_the_rows_after_it(
    tmp_path: Path,
) -> None:
    # (a kill -9 long after the last checkpoint: the mark is behind the window's start)
    path = tmp_path / "log.duckdb"
    await _log(path, 60)
    con = duckdb.connect(str(path), read_only=True)
    try:
        recent = RecentIds(5)
        low_mark = IdMark(10, _true_newest_up_to(path, 10))
        newest = recent.load(con, 60, low_mark)
    finally:
        con.close()
    # The rows between the mark and the window's start were read: the watermark is above
    # every id not in the window, and the bound returned is above every id stored
    assert recent.watermark_ms > id_timestamp_ms(_true_newest_up_to(path, 55))
    assert newest >= _true_newest_up_to(path, 60)


async def test_the_writer_keeps_its_bound_above_every_id_it_stores(tmp_path: Path) -> None:
    path = tmp_path / "log.duckdb"
    await _log(path, 20)
    before = _true_newest_up_to(path, 20)
    async with await EventStore.open(path, recent_ids=5) as store:
        assert store._max_id >= before
        later = [submitted() for _ in range(5)]
        await store.append(later)
        assert store._max_id >= max(e.id for e in later)


async def test_a_checkpoint_writes_the_mark_where_the_log_is(tmp_path: Path) -> None:
    # (a checkpoint after every commit here: the mark must not wait for a clean close,
    # which a kill -9 never gives)
    path = tmp_path / "log.duckdb"
    async with await EventStore.open(path, recent_ids=5, checkpoint_hard_bytes=1) as store:
        events = [submitted() for _ in range(12)]
        await store.append(events[:6])
        await store.append(events[6:])
        ((seq, _),) = SnapshotFiles(path).listing(ID_MARK, 12)[:1]
        assert seq == 12
        found = SnapshotFiles(path).read_unchecked(ID_MARK, 12)
        assert found is not None
        anchor, data = found
        ((stored_hash,),) = await store.query("SELECT hash FROM events WHERE seq = 12")
        assert anchor == bytes(stored_hash)
        assert data.decode().split(" ")[0] >= max(e.id for e in events)


def _stamped(ms: int, counter: int = 0) -> NewEvent:
    """A submission whose id is a UUIDv7 stamped ``ms`` (a producer's clock, set)."""
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | 12345
    return msgspec.structs.replace(submitted(), id=str(uuid.UUID(int=value)))


BASE_MS = 1_800_000_000_000


async def _stamped_log(path: Path, count: int, stored: int | None = None) -> list[NewEvent]:
    """``count`` events stamped 10 ms apart from ``BASE_MS``, the first ``stored`` of them
    (all by default) appended in commits of 7 by a store with a window of 5, closed."""
    events = [_stamped(BASE_MS + 10 * i) for i in range(count)]
    async with await EventStore.open(path, recent_ids=5) as store:
        for start in range(0, count if stored is None else stored, 7):
            await store.append(events[start : min(start + 7, stored or count)])
    return events


async def test_after_a_clean_close_the_watermark_is_the_writers_window_not_above_it(
    tmp_path: Path,
) -> None:
    # Given 40 events stamped 10 ms apart, the window holding the newest 5 (seqs 36..40),
    # closed cleanly (the mark at the log's end, with the writer's window)
    path = tmp_path / "log.duckdb"
    base = BASE_MS
    events = await _stamped_log(path, 40)
    before = base + 10 * 34 + 1  # above seq 35's stamp, the newest evicted
    # When it opens again, the watermark is the writer's: every id not in the window is
    # below it, and the window's own stamps are not (the mark's bound alone, the newest
    # id stored, put it above all of them, sending a lagging clock's ids to the table)
    async with await EventStore.open(path, recent_ids=5) as store:
        assert store._recent.watermark_ms == before
        assert store._max_id >= events[-1].id
        # And idempotency holds on both sides of it: resends old and recent keep their
        # seqs; an event of a lagging clock, stamped inside the window's span, is new
        late = _stamped(base + 10 * 36 + 5, counter=1)
        assert await store.append([events[0], events[34], events[37], late]) == [1, 35, 38, 41]
        rows = await store.query("SELECT count(*), count(DISTINCT id) FROM events")
        assert rows == [(41, 41)]


async def test_a_marks_window_is_used_only_at_the_logs_end_and_for_its_own_capacity(
    tmp_path: Path,
) -> None:
    # Given the mark a clean close wrote at seq 40 (window of 5), kept aside, and the log
    # then grown to 47 events
    path = tmp_path / "log.duckdb"
    base = BASE_MS
    events = await _stamped_log(path, 47, stored=40)
    found = SnapshotFiles(path).read_unchecked(ID_MARK, 40)
    assert found is not None
    bound, watermark_ms, capacity = found[1].decode().split(" ")
    at_40 = IdMark(40, bound, int(watermark_ms), int(capacity))
    assert at_40.watermark_ms == base + 10 * 34 + 1
    async with await EventStore.open(path, recent_ids=5) as store:
        await store.append(events[40:])
    con = duckdb.connect(str(path), read_only=True)
    try:
        # When a store whose log ends past the mark opens with it, the rows between the
        # mark and its window (seqs 41, 42) are read: the mark's window is not its own
        recent = RecentIds(5)
        recent.load(con, 47, at_40)
        assert recent.watermark_ms == base + 10 * 41 + 1
        # and one with another window, at the mark's seq, takes the mark's bound
        recent = RecentIds(8)
        recent.load(con, 40, at_40)
        assert recent.watermark_ms == id_timestamp_ms(bound) + 1 == base + 10 * 39 + 1
    finally:
        con.close()


@pytest.mark.parametrize("window", ["0 5", "-3 5", "x 5", "5", "999999999999999 5"])
async def test_a_mark_whose_window_no_writer_could_have_is_read_for_its_bound_alone(
    tmp_path: Path, window: str
) -> None:
    # Given a log closed cleanly, its mark at the end replaced by one naming the same bound
    # and a window no writer has (a watermark of 0 would skip every table lookup)
    path = tmp_path / "log.duckdb"
    events = await _stamped_log(path, 40)
    files = SnapshotFiles(path)
    found = files.read_unchecked(ID_MARK, 40)
    assert found is not None
    anchor, data = found
    bound = data.decode().split(" ")[0]
    for _, old in files.listing(ID_MARK):
        old.unlink()
    files.write(ID_MARK, 40, anchor, f"{bound} {window}".encode())
    # When it opens, the watermark comes from the bound, and every resend keeps its seq
    async with await EventStore.open(path, recent_ids=5) as store:
        assert store._recent.watermark_ms == id_timestamp_ms(bound) + 1
        assert await store.append([events[0], events[20], events[39]]) == [1, 21, 40]
        rows = await store.query("SELECT count(*), count(DISTINCT id) FROM events")
        assert rows == [(40, 40)]
