"""One group commit: every batch queued meanwhile becomes one transaction of the log.

Runs on the store's writer thread, the only code that writes the ``events`` table. It
tells re-sent events from new ones (``events.recent_ids``, then the table for ids older
than the window), gives the new ones gap-free seqs in queue order, extends the hash
chain (``events.chain``) and inserts them in one statement, so the group lands whole or
not at all. ``events.store`` queues the batches, publishes the result and answers the
callers.

In two steps: ``plan_group`` works the commit out (reads only) and ``write_plan``
inserts it. A plan whose write failed still says where the log would end with it, so
the store can tell afterwards whether the file holds it or not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import NamedTuple

import duckdb
import pyarrow as pa

from events.chain import canonical_head, chain_hash
from events.envelope import NewEvent, Recorded, now_us
from events.ids import id_timestamp_ms
from events.recent_ids import RecentIds

_TS = pa.timestamp("us", tz="UTC")
# The events table's columns, as Arrow carries the insert.
_ARROW_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("id", pa.string()),
        ("kind", pa.string()),
        ("stream", pa.string()),
        ("source", pa.string()),
        ("occurred_at", _TS),
        ("recorded_at", _TS),
        ("schema_version", pa.uint16()),
        ("payload", pa.string()),
        ("hash", pa.binary()),
    ]
)


class Pending:
    """One caller's batch, encoded, waiting for the writer (since ``queued_at``, a
    monotonic time: how long appends wait is measured from it)."""

    __slots__ = ("events", "future", "payloads", "queued_at")

    def __init__(
        self, events: Sequence[NewEvent], payloads: list[bytes], future: asyncio.Future[list[int]]
    ) -> None:
        self.events = events
        self.payloads = payloads
        self.future = future
        self.queued_at = time.monotonic()


class Committed(NamedTuple):
    """What a group commit did: each caller's seqs, the new records, the chain's new end."""

    seqs_per_caller: list[list[int]]
    records: list[Recorded]
    last_seq: int
    last_hash: bytes

    @property
    def end(self) -> tuple[int, bytes]:
        """Where the log ends once this commit is in it: (last seq, last hash)."""
        return self.last_seq, self.last_hash


class Plan(NamedTuple):
    """A group commit worked out but not yet written: its rows, and what it will have done."""

    committed: Committed
    incoming: pa.Table | None  # the new rows (None: every event was a re-send)
    new_ids: list[str]


def commit_group(
    con: duckdb.DuckDBPyConnection,
    batch: list[Pending],
    recent: RecentIds,
    last_seq: int,
    last_hash: bytes,
) -> Committed:
    """Append the new events of ``batch`` after ``last_seq`` in one transaction.

    Re-sent events get their original seq and are not stored again. ``recent`` learns
    the new ids once the insert is durable; on an error nothing was written.
    """
    plan = plan_group(con, batch, recent, last_seq, last_hash)
    write_plan(con, plan)
    learn(recent, plan)
    return plan.committed


def plan_group(
    con: duckdb.DuckDBPyConnection,
    batch: list[Pending],
    recent: RecentIds,
    last_seq: int,
    last_hash: bytes,
) -> Plan:
    """Work out the group commit of ``batch`` after ``last_seq``: seqs, hashes, rows.

    Reads only (ids older than the memory window are looked up in the table); nothing
    is written until ``write_plan``, so a plan whose write fails can be checked against
    the file afterwards (``events.store`` does, after a failed commit).
    """
    seq_by_id = recent.seq_by_id
    watermark = recent.watermark_ms

    # Which ids might already be stored below the in-memory window?
    to_check = [
        new.id
        for pending in batch
        for new in pending.events
        if new.id not in seq_by_id and id_timestamp_ms(new.id) < watermark
    ]
    known: dict[str, int] = {}
    if to_check:
        rows = con.execute(
            "SELECT id::VARCHAR, seq FROM events WHERE id IN (SELECT unnest(?::UUID[]))",
            [to_check],
        ).fetchall()
        known = {event_id: int(seq) for event_id, seq in rows}

    recorded_at = now_us()
    seq = last_seq
    prev = last_hash
    assigned: dict[str, int] = {}
    fresh: list[tuple[NewEvent, bytes, int, bytes]] = []
    seqs_per_caller: list[list[int]] = []
    for pending in batch:
        caller_seqs: list[int] = []
        for new, payload in zip(pending.events, pending.payloads, strict=True):
            eid = new.id
            existing = assigned.get(eid) or seq_by_id.get(eid) or known.get(eid)
            if existing is not None:
                caller_seqs.append(existing)
                continue
            seq += 1
            head = canonical_head(
                seq,
                eid,
                new.kind,
                new.stream,
                new.source,
                new.occurred_at_us,
                recorded_at,
                new.schema_version,
            )
            prev = chain_hash(prev, head, payload)
            assigned[eid] = seq
            caller_seqs.append(seq)
            fresh.append((new, payload, seq, prev))
        seqs_per_caller.append(caller_seqs)
    if not fresh:
        return Plan(Committed(seqs_per_caller, [], last_seq, last_hash), None, [])

    n = len(fresh)
    news = [f[0] for f in fresh]
    incoming = pa.Table.from_arrays(
        [
            pa.array([f[2] for f in fresh], pa.int64()),
            pa.array([e.id for e in news], pa.string()),
            pa.array([e.kind for e in news], pa.string()),
            pa.array([e.stream for e in news], pa.string()),
            pa.array([e.source for e in news], pa.string()),
            pa.array([e.occurred_at_us for e in news], pa.int64()).cast(_TS),
            pa.array([recorded_at] * n, pa.int64()).cast(_TS),
            pa.array([e.schema_version for e in news], pa.uint16()),
            pa.array([f[1] for f in fresh], pa.binary()).cast(pa.string()),
            pa.array([f[3] for f in fresh], pa.binary()),
        ],
        schema=_ARROW_SCHEMA,
    )
    records = [
        Recorded(
            seq=s,
            id=e.id,
            kind=e.kind,
            stream=e.stream,
            source=e.source,
            occurred_at_us=e.occurred_at_us,
            recorded_at_us=recorded_at,
            schema_version=e.schema_version,
            hash=h,
            event=e.event,
        )
        for e, _, s, h in fresh
    ]
    committed = Committed(seqs_per_caller, records, seq, prev)
    return Plan(committed, incoming, [e.id for e in news])


def write_plan(con: duckdb.DuckDBPyConnection, plan: Plan) -> None:
    """Insert the plan's rows: one statement, one transaction, whole or not at all."""
    if plan.incoming is None:
        return
    con.register("incoming", plan.incoming)
    try:
        con.execute("INSERT INTO events SELECT * REPLACE (id::UUID AS id) FROM incoming").fetchall()
    finally:
        con.unregister("incoming")


def learn(recent: RecentIds, plan: Plan) -> None:
    """Teach the idempotency window the plan's new ids, once its rows are durable."""
    if plan.new_ids:
        recent.extend(plan.new_ids, (r.seq for r in plan.committed.records))
