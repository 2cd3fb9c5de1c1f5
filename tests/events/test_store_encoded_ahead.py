"""Payloads encoded ahead of their append (``encode_checked``; the agent link makes them
while the log writes the batches before, issue 19): the log must hold exactly what a plain
append would, and a stale payload must never be stored for an event that changed since.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from support.factories import heartbeat, submitted

from events.codec import encode_event
from events.envelope import NewEvent
from events.store import EventStore, InvalidEvent, encode_checked
from events.types import NodeHeartbeat

pytestmark = pytest.mark.timeout(60)


async def _stored(store: EventStore) -> list[tuple[object, ...]]:
    return await store.query(
        "SELECT seq, id::VARCHAR, kind, stream, source, epoch_us(occurred_at), schema_version,"
        " payload"
        " FROM events ORDER BY seq"
    )


async def test_an_append_with_payloads_made_ahead_stores_what_a_plain_one_does(
    tmp_path: Path,
) -> None:
    events = [heartbeat("n1") for _ in range(50)] + [submitted() for _ in range(50)]
    async with (
        await EventStore.open(tmp_path / "plain.duckdb") as plain,
        await EventStore.open(tmp_path / "ahead.duckdb") as ahead,
    ):
        assert await plain.append(events, check_payloads=True) == list(range(1, 101))
        encoded = encode_checked(events)
        assert await ahead.append(events, check_payloads=True, encoded=encoded) == list(
            range(1, 101)
        )
        assert await _stored(plain) == await _stored(ahead)


async def test_an_event_rebuilt_since_its_payload_was_made_is_encoded_again(
    tmp_path: Path,
) -> None:
    # Given a payload made ahead for one heartbeat, then the event rebuilt with the same id
    # (what a decision that rewrites an event does) before its append
    original = heartbeat("n1")
    encoded = encode_checked([original])
    rebuilt = msgspec.structs.replace(original, event=NodeHeartbeat(node="n1", cpu_percent=42.0))
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        await store.append([rebuilt], check_payloads=True, encoded=encoded)
        ((payload,),) = await store.query("SELECT payload FROM events")
    # Then the log holds the rebuilt event's payload, not the stale one
    assert payload.encode() == encode_event(rebuilt.event)
    assert payload.encode() != encoded[original.id][1]


async def test_a_bad_event_not_made_ahead_is_refused_naming_its_place_in_the_whole_batch(
    tmp_path: Path,
) -> None:
    good = [heartbeat("n1") for _ in range(3)]
    encoded = encode_checked(good)
    bad: NewEvent = msgspec.structs.replace(
        heartbeat("n1"), event=NodeHeartbeat(node="n1", cpu_percent=float("nan"))
    )
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        with pytest.raises(InvalidEvent, match=r"events\[2\] \(node\.heartbeat\): would not"):
            await store.append([*good[:2], bad, good[2]], check_payloads=True, encoded=encoded)
        assert await store.read() == []


def test_encoding_ahead_refuses_what_the_append_refuses() -> None:
    bad = msgspec.structs.replace(
        heartbeat("n1"), event=NodeHeartbeat(node="n1", temperatures={"cpu": float("inf")})
    )
    with pytest.raises(InvalidEvent, match=r"events\[1\] \(node\.heartbeat\): would not read"):
        encode_checked([heartbeat("n1"), bad])
