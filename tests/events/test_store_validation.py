"""What the log refuses on its producer's side, and what a reader survives (issue 14, item 2).

Every envelope field is checked before a batch joins a group commit: a value the commit could
not insert would fail every producer's batch in the group, and a payload that does not read
back would stop the host's next rebuild. A log that already holds such an event (written by a
build that let it through) is read around it: the event is skipped, counted and reported.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from support.factories import heartbeat, submitted

from events.chain import GENESIS_HASH
from events.envelope import NewEvent
from events.ids import new_id
from events.log_writer import Pending, commit_group
from events.recent_ids import RecentIds
from events.store import EventStore, InvalidEvent
from events.types import NodeHeartbeat, NodeRegistered
from projections.cluster import ClusterState
from replay_tools.audit import audit

pytestmark = pytest.mark.timeout(60)


def _beat(**envelope: object) -> NewEvent:
    return msgspec.structs.replace(heartbeat("n1"), **envelope)


BAD = [
    (_beat(schema_version=0), r"events\[1\]\.schema_version: 0 for node\.heartbeat"),
    (_beat(schema_version=70000), r"events\[1\]\.schema_version: 70000"),
    (_beat(occurred_at_us=-1), r"events\[1\]\.occurred_at_us: -1 is outside"),
    (_beat(occurred_at_us=2**63 - 1), r"events\[1\]\.occurred_at_us: 9223372036854775807"),
    (_beat(source=""), r"events\[1\]\.source: must not be empty"),
    (_beat(source="x" * 300), r"events\[1\]\.source: longer than 256"),
    (_beat(id="not-a-uuid"), r"events\[1\]\.id"),
    # JSON has no NaN: it would be stored as null and fail every later decode.
    (
        _beat(event=NodeHeartbeat(node="n1", cpu_percent=float("nan"))),
        r"events\[1\] \(node\.heartbeat\): would not read back: .*cpu_percent",
    ),
    (
        _beat(event=NodeHeartbeat(node="n1", temperatures={"cpu": float("inf")})),
        r"events\[1\] \(node\.heartbeat\): would not read back",
    ),
]


@pytest.mark.parametrize(("bad", "message"), BAD)
async def test_a_bad_envelope_is_refused_naming_its_field(
    tmp_path: Path, bad: NewEvent, message: str
) -> None:
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        with pytest.raises(InvalidEvent, match=message):
            # What an agent reported: its payloads are decoded back too
            await store.append([heartbeat("n1"), bad], check_payloads=True)
        assert await store.read() == []


async def test_one_producers_bad_batch_never_fails_another_in_the_same_group_commit(
    tmp_path: Path,
) -> None:
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        # Given good batches and bad ones appended at once (one group commit)
        good = [[submitted(), heartbeat("n1")] for _ in range(6)]
        bad = [[_beat(schema_version=70000)], [_beat(occurred_at_us=2**63 - 1)]]
        results = await asyncio.gather(
            *(store.append(b) for b in [good[0], bad[0], *good[1:4], bad[1], *good[4:]]),
            return_exceptions=True,
        )
        # Then only the bad ones fail, and every good one is committed, in one group
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 2 and all(isinstance(f, InvalidEvent) for f in failed), failed
        stored = {r.id for r in await store.read()}
        assert stored == {e.id for batch in good for e in batch}
        assert store.commits == 1
        assert (await store.verify()).ok


def _write_unchecked(path: Path, events: list[NewEvent]) -> None:
    """Commit events as a build without the checks did (the writer alone, no validation)."""
    import duckdb

    from events.codec import encode_event
    from events.schema import migrate

    con = duckdb.connect(str(path))
    try:
        migrate(con)
        recent = RecentIds(1000)
        recent.load(con, 0)
        payloads = [encode_event(e.event) for e in events]
        commit_group(con, [Pending(events, payloads, None)], recent, 0, GENESIS_HASH)  # type: ignore[arg-type]
    finally:
        con.close()


async def test_an_event_that_does_not_decode_is_skipped_counted_and_audited(
    tmp_path: Path,
) -> None:
    # Given a log written before the checks: a heartbeat at schema version 0 (no upcaster
    # reads it) and one whose NaN was stored as null, between good events
    path = tmp_path / "log.duckdb"
    registered = NewEvent(
        id=new_id(),
        source="n1",
        occurred_at_us=1,
        event=NodeRegistered(node="n1", address="", cores=2, memory_bytes=0),
    )
    nan = _beat(event=NodeHeartbeat(node="n1", cpu_percent=float("nan")))
    _write_unchecked(path, [registered, _beat(schema_version=0), nan, heartbeat("n1")])
    # When the host's store reads it back (as its rebuild does)
    async with await EventStore.open(path) as store:
        records = await store.read()
        # Then the two are skipped, noted once each (however often they are read), not fatal
        assert [r.seq for r in records] == [1, 4]
        await store.read()
        assert store.codec.undecodable_total == 2
        assert sorted(store.codec.undecodable) == [2, 3]
        assert "no upcaster for node.heartbeat from schema version 0" in store.codec.undecodable[2]
        assert "cpu_percent" in store.codec.undecodable[3]
        # And the state folds from what remains, and the chain still verifies
        state = ClusterState.rebuild(None, records)
        assert state.nodes["n1"].heartbeats == 1
        assert (await store.verify()).ok
    # And the audit names the version no reader can read
    report = audit(path)
    assert not report.ok
    [problem] = report.problems
    assert problem.kind == "payload" and problem.seq == 2
    assert "no upcaster for node.heartbeat from schema version 0" in problem.message
