"""The append path's shortcuts (issue 19): each must store and answer exactly what the plain
path did.

* A group of up to ``SMALL_GROUP`` new events is inserted from parameter lists, a larger one
  through Arrow with its payload and hash columns made from raw buffers: both must store the
  same bytes, times and chain, including multi-byte UTF-8 and the extreme times.
* The append's checks run inlined, with no message built for an event that passes: an event
  that fails still gets the message naming its index and field, and nothing is stored.
* The idempotency window compares ids with its watermark as strings, and finds the newest
  evicted stamp as the greatest evicted id: both must agree with the ids' timestamps.
"""

from __future__ import annotations

import random
from pathlib import Path

import duckdb
import msgspec
import pytest
from support.factories import heartbeat

from events import log_writer
from events.codec import encode_event
from events.envelope import MAX_TIME_US, NewEvent, Recorded, new_event
from events.ids import id_timestamp_ms, new_id
from events.recent_ids import RecentIds
from events.store import EventStore, InvalidEvent
from events.types import TaskSpec, TaskSubmitted

pytestmark = pytest.mark.timeout(60)


def _uuid7_at(ms: int, rng: random.Random) -> str:
    """A canonical UUIDv7 stamped ``ms`` with random bits."""
    value = (ms << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64) | (0b10 << 62)
    value |= rng.getrandbits(62)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _varied(n: int) -> list[NewEvent]:
    """Events whose strings are multi-byte UTF-8 in every text column, at extreme times."""
    out = []
    for i in range(n):
        spec = TaskSpec(
            command="\u00e9ch\u043e",  # a Latin e-acute, a Cyrillic o
            args=(f"✓ {i}", "日本語"),
            env={"ŁANG": "ß" * (i % 7)},
            batch_id=f"b-{i}",
            owner="zoë",
        )
        event = new_event(
            TaskSubmitted(task_id=new_id(), spec=spec),
            source=f"hôst-{i % 3}",
            occurred_at_us=(0, MAX_TIME_US, 1_700_000_000_123_456)[i % 3],
        )
        out.append(event)
    return out


@pytest.mark.parametrize("size", [1, log_writer.SMALL_GROUP, log_writer.SMALL_GROUP + 1, 700])
async def test_both_insert_paths_store_exactly_what_was_published(
    tmp_path: Path, size: int
) -> None:
    # Given a store whose listener keeps what each commit published
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        published: list[Recorded] = []
        store.add_listener(published.extend)
        await store.append([heartbeat()])
        events = _varied(size)
        # When one group of ``size`` new events is appended (the list path up to
        # SMALL_GROUP, Arrow beyond)
        seqs = await store.append(events)
        # Then the log reads back what was published, field for field, and the chain holds
        assert seqs == list(range(2, size + 2))
        stored = await store.read()
        assert stored == published
        assert [r.event for r in stored[1:]] == [e.event for e in events]
        assert [r.occurred_at_us for r in stored[1:]] == [e.occurred_at_us for e in events]
        assert len({r.recorded_at_us for r in stored[1:]}) == 1
        assert (await store.verify()).ok
        payloads = await store.query("SELECT payload FROM events WHERE seq > 1 ORDER BY seq")
    # And the stored payload is the canonical encoding, byte for byte
    assert [p.encode() for (p,) in payloads] == [encode_event(e.event) for e in events]


async def test_a_resend_within_a_large_group_keeps_its_seq_on_the_arrow_path(
    tmp_path: Path,
) -> None:
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        first = _varied(100)
        assert await store.append(first) == list(range(1, 101))
        # A group mixing re-sends (old and repeated within itself) with new events
        again = [*first[10:20], *_varied(80), first[10]]
        seqs = await store.append(again)
        assert seqs[:10] == list(range(11, 21))
        assert seqs[10:90] == list(range(101, 181))
        assert seqs[90] == 11
        assert store.last_seq == 180
        assert (await store.verify()).ok


# The envelope checks, through the inlined path (no payload decode asked for).
FAST_BAD = [
    (dict(schema_version=0), r"events\[2\]\.schema_version: 0 for node\.heartbeat"),
    (dict(occurred_at_us=-1), r"events\[2\]\.occurred_at_us: -1 is outside"),
    (dict(occurred_at_us=MAX_TIME_US + 1), r"events\[2\]\.occurred_at_us"),
    (dict(source=""), r"events\[2\]\.source: must not be empty"),
    (dict(source="x" * 257), r"events\[2\]\.source: longer than 256"),
    (dict(id="not-a-uuid"), r"events\[2\]\.id"),
    (dict(id=new_id().upper()), r"events\[2\]\.id"),
    (dict(id=123), r"events\[2\]\.id"),
]


@pytest.mark.parametrize(("change", "message"), FAST_BAD)
async def test_the_inlined_checks_name_the_failing_event_and_store_nothing(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        bad = msgspec.structs.replace(heartbeat("n1"), **change)
        batch = [heartbeat("n1"), heartbeat("n2"), bad, heartbeat("n3")]
        with pytest.raises(InvalidEvent, match=message):
            await store.append(batch)
        assert await store.read() == []
        # The same events without the bad one go in whole
        assert await store.append([batch[0], batch[1], batch[3]]) == [1, 2, 3]


def test_an_event_that_cannot_be_encoded_is_refused_by_the_inlined_path() -> None:
    from events.store import _encode_all

    # A lone surrogate encodes to no UTF-8: the message names the event
    bad = msgspec.structs.replace(heartbeat("n1"), event=heartbeat("\ud800").event)
    with pytest.raises(InvalidEvent, match=r"events\[1\] \(node\.heartbeat\): cannot be encoded"):
        _encode_all([heartbeat("n1"), bad], False)


def test_the_watermark_compares_ids_as_their_timestamps() -> None:
    rng = random.Random(19)
    window = RecentIds(10)
    for _ in range(2000):
        watermark = rng.randrange(0, 1 << 48)
        window.watermark_ms = watermark
        for ms in (watermark - 1, watermark, watermark + 1, rng.randrange(0, 1 << 48)):
            if 0 <= ms < 1 << 48:
                event_id = _uuid7_at(ms, rng)
                assert window.below_watermark(event_id) == (id_timestamp_ms(event_id) < watermark)


def test_eviction_raises_the_watermark_past_the_newest_evicted_stamp_in_any_order() -> None:
    rng = random.Random(7)
    window = RecentIds(50)
    stored: list[str] = []
    for _ in range(60):
        # Commits of several ids from producers with clocks apart: stamps not in seq order,
        # several evicted at once
        batch = [
            _uuid7_at(1_700_000_000_000 + rng.randrange(0, 5000), rng)
            for _ in range(rng.randint(1, 30))
        ]
        window.extend(batch, range(len(stored) + 1, len(stored) + len(batch) + 1))
        stored.extend(batch)
        evicted = stored[: max(0, len(stored) - 50)]
        kept = stored[-50:]
        # Then every kept id is in the window, every evicted one sits below the watermark
        assert set(window.seq_by_id) == set(kept)
        if evicted:
            newest = max(id_timestamp_ms(e) for e in evicted)
            assert window.watermark_ms >= newest + 1
            assert all(window.below_watermark(e) for e in evicted)


async def test_a_resend_evicted_from_the_window_is_found_in_the_table(tmp_path: Path) -> None:
    # Given a window of 5 ids and 20 stored events
    async with await EventStore.open(tmp_path / "log.duckdb", recent_ids=5) as store:
        events = [heartbeat(f"n{i}") for i in range(20)]
        for event in events:
            await store.append([event])
        # When the oldest are re-sent among new ones, in a small and in a large group
        assert await store.append([events[0], heartbeat("x"), events[3]]) == [1, 21, 4]
        large = [*events[:8], *(heartbeat("y") for _ in range(70))]
        seqs = await store.append(large)
        # Then they keep their seqs and nothing is stored twice
        assert seqs[:8] == list(range(1, 9))
        assert seqs[8:] == list(range(22, 92))
        rows = await store.query("SELECT count(*), count(DISTINCT id) FROM events")
        assert rows == [(91, 91)]


def test_the_list_insert_refuses_a_group_whole(tmp_path: Path) -> None:
    """The list path is one statement: a row the table refuses leaves none of the group."""
    from events.schema import migrate

    con = duckdb.connect(str(tmp_path / "log.duckdb"))
    migrate(con)
    rows = log_writer.Rows(1_700_000_000_000_000)
    for seq, event_id in ((1, new_id()), (2, "not-a-uuid")):
        rows.seqs.append(seq)
        rows.ids.append(event_id)
        rows.kinds.append("node.heartbeat")
        rows.streams.append("node:n1")
        rows.sources.append("n1")
        rows.occurred.append(1)
        rows.versions.append(1)
        rows.payloads.append(b"{}")
        rows.hashes.append(bytes(32))
    plan = log_writer.Plan(log_writer.Committed([], [], 2, bytes(32)), rows, rows.ids)
    with pytest.raises(duckdb.ConversionException):
        log_writer.write_plan(con, plan)
    assert con.execute("SELECT count(*) FROM events").fetchall() == [(0,)]
    con.close()


def _plan_both_ways(
    batch: list[log_writer.Pending], recent: RecentIds, monkeypatch: pytest.MonkeyPatch
) -> tuple[log_writer.Plan, log_writer.Plan]:
    """The plan of ``batch`` through the fresh-group shortcut and through the general loop."""
    from events.chain import GENESIS_HASH

    fast = log_writer.plan_group(None, batch, recent, 7, GENESIS_HASH)  # type: ignore[arg-type]
    with monkeypatch.context() as patch:
        patch.setattr(log_writer, "_plan_fresh", lambda *args: None)
        slow = log_writer.plan_group(None, batch, recent, 7, GENESIS_HASH)  # type: ignore[arg-type]
    return fast, slow


def _columns(plan: log_writer.Plan) -> dict[str, object]:
    rows = plan.incoming
    assert rows is not None
    return {name: getattr(rows, name) for name in log_writer.Rows.__slots__}


def test_the_fresh_group_shortcut_plans_what_the_general_loop_plans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A group of three callers' batches with no re-send: the shortcut's rows, hashes,
    records and each caller's seqs are those of the per-event loop (the recorded time is
    pinned so both plans stamp the same one)."""
    monkeypatch.setattr(log_writer, "now_us", lambda: 1_700_000_000_000_000)
    events = _varied(9)
    batch = [
        log_writer.Pending(chunk, [encode_event(e.event) for e in chunk], None)  # type: ignore[arg-type]
        for chunk in (events[:4], events[4:5], events[5:])
    ]
    calls: list[int] = []
    fresh = log_writer._plan_fresh
    monkeypatch.setattr(log_writer, "_plan_fresh", lambda *a: calls.append(1) or fresh(*a))
    fast, slow = _plan_both_ways(batch, RecentIds(100), monkeypatch)
    assert calls == [1]  # the shortcut did plan the first one
    assert fast.committed == slow.committed
    assert fast.committed.seqs_per_caller == [[8, 9, 10, 11], [12], [13, 14, 15, 16]]
    assert _columns(fast) == _columns(slow)
    assert fast.new_ids == slow.new_ids


def test_a_group_with_a_resend_or_a_repeated_id_leaves_the_shortcut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shortcut gives way whenever an id is already stored or twice in the group: the
    re-send keeps its seq, the repeat is stored once."""
    monkeypatch.setattr(log_writer, "now_us", lambda: 1_700_000_000_000_000)
    events = _varied(3)
    payloads = [encode_event(e.event) for e in events]
    recent = RecentIds(100)
    recent.extend([events[0].id], [3])
    resent = log_writer.plan_group(
        None,  # type: ignore[arg-type]
        [log_writer.Pending(events, payloads, None)],  # type: ignore[arg-type]
        recent,
        7,
        b"\0" * 32,
    )
    assert resent.committed.seqs_per_caller == [[3, 8, 9]]
    twice = log_writer.plan_group(
        None,  # type: ignore[arg-type]
        [
            log_writer.Pending(events[1:], payloads[1:], None),  # type: ignore[arg-type]
            log_writer.Pending(events[1:2], payloads[1:2], None),  # type: ignore[arg-type]
        ],
        RecentIds(100),
        7,
        b"\0" * 32,
    )
    assert twice.committed.seqs_per_caller == [[8, 9], [8]]
    assert twice.new_ids == [events[1].id, events[2].id]
