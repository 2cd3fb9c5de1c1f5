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
import hashlib
import time
from array import array
from collections.abc import Sequence
from itertools import accumulate
from typing import NamedTuple

import duckdb
import pyarrow as pa

from events.envelope import NewEvent, Recorded, now_us
from events.recent_ids import RecentIds
from events.types import AnyEvent

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
    incoming: Rows | None  # the new rows (None: every event was a re-send)
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

    One pass over the events, each field computed once: this loop and the commit are the
    whole cost of an append (docs/performance.md), so it builds the insert's columns as
    it goes and leaves the Arrow work to ``write_plan``.
    """
    seq_by_id = recent.seq_by_id
    watermark = recent.watermark_id

    # Which ids might already be stored below the in-memory window? (None before the
    # window has ever evicted: then every id not in it is new.) ``recent.below_watermark``
    # inlined: a string comparison.
    to_check = (
        [
            new.id
            for pending in batch
            for new in pending.events
            if new.id < watermark and new.id not in seq_by_id
        ]
        if recent.watermark_ms
        else []
    )
    known: dict[str, int] = {}
    if to_check:
        rows = con.execute(
            "SELECT id::VARCHAR, seq FROM events WHERE id IN (SELECT unnest(?::UUID[]))",
            [to_check],
        ).fetchall()
        known = {event_id: int(seq) for event_id, seq in rows}

    recorded_at = now_us()
    if not known:
        fresh = _plan_fresh(batch, seq_by_id, recorded_at, last_seq, last_hash)
        if fresh is not None:
            return fresh
    recorded_text = str(recorded_at)
    sha256 = hashlib.sha256
    seq = last_seq
    prev = last_hash
    assigned: dict[str, int] = {}
    seqs_per_caller: list[list[int]] = []
    rows_out = Rows(recorded_at)
    seqs, ids, kinds, streams = rows_out.seqs, rows_out.ids, rows_out.kinds, rows_out.streams
    sources, occurred, versions = rows_out.sources, rows_out.occurred, rows_out.versions
    payloads, hashes, records = rows_out.payloads, rows_out.hashes, rows_out.records
    for pending in batch:
        caller_seqs: list[int] = []
        for new, payload in zip(pending.events, pending.payloads, strict=True):
            eid = new.id
            existing = seq_by_id.get(eid) or assigned.get(eid)
            if existing is None and known:
                existing = known.get(eid)
            if existing is not None:
                caller_seqs.append(existing)
                continue
            seq += 1
            event = new.event
            kind = _tag(event)
            stream = event.stream
            source = new.source
            occurred_at = new.occurred_at_us
            version = new.schema_version
            # canonical_head(...), inlined: the same bytes, without a call per event.
            head = (
                f"{seq}\x1f{eid}\x1f{kind}\x1f{stream}\x1f{source}\x1f"
                f"{occurred_at}\x1f{recorded_text}\x1f{version}\x1f"
            ).encode()
            prev = sha256(prev + head + payload).digest()
            assigned[eid] = seq
            caller_seqs.append(seq)
            seqs.append(seq)
            ids.append(eid)
            kinds.append(kind)
            streams.append(stream)
            sources.append(source)
            occurred.append(occurred_at)
            versions.append(version)
            payloads.append(payload)
            hashes.append(prev)
            records.append(
                Recorded(
                    seq=seq,
                    id=eid,
                    kind=kind,
                    stream=stream,
                    source=source,
                    occurred_at_us=occurred_at,
                    recorded_at_us=recorded_at,
                    schema_version=version,
                    hash=prev,
                    event=event,
                )
            )
        seqs_per_caller.append(caller_seqs)
    if not seqs:
        return Plan(Committed(seqs_per_caller, [], last_seq, last_hash), None, [])
    committed = Committed(seqs_per_caller, records, seq, prev)
    return Plan(committed, rows_out, ids)


def _plan_fresh(
    batch: list[Pending],
    seq_by_id: dict[str, int],
    recorded_at: int,
    last_seq: int,
    last_hash: bytes,
) -> Plan | None:
    """``plan_group`` for a group with no re-sent event (None when it has one).

    The common case, column by column: each column is one comprehension instead of an
    append per event and field, and only the chain is a loop (each hash needs the one
    before it). The same rows, seqs and hashes as the general loop (a test compares them).
    """
    news = [new for pending in batch for new in pending.events]
    ids = [new.id for new in news]
    n = len(ids)
    if not n or not seq_by_id.keys().isdisjoint(ids) or len(set(ids)) != n:
        return None  # a re-send, or the same id twice in the group: the general loop
    rows = Rows(recorded_at)
    rows.ids = ids
    rows.seqs = seqs = list(range(last_seq + 1, last_seq + n + 1))
    events = [new.event for new in news]
    rows.kinds = kinds = [_tag(event) for event in events]
    rows.streams = streams = [event.stream for event in events]
    rows.sources = sources = [new.source for new in news]
    rows.occurred = occurred = [new.occurred_at_us for new in news]
    rows.versions = versions = [new.schema_version for new in news]
    if len(batch) == 1:
        payloads = batch[0].payloads
        if len(payloads) != n:
            raise ValueError("a pending batch has a payload per event")
    else:
        payloads = [payload for pending in batch for payload in pending.payloads]
    rows.payloads = payloads
    recorded_text = str(recorded_at)
    sha256 = hashlib.sha256
    prev = last_hash
    hashes = rows.hashes
    for seq, eid, kind, stream, source, occurred_at, version, payload in zip(
        seqs, ids, kinds, streams, sources, occurred, versions, payloads, strict=True
    ):
        # canonical_head(...), inlined (as in plan_group's loop).
        head = (
            f"{seq}\x1f{eid}\x1f{kind}\x1f{stream}\x1f{source}\x1f"
            f"{occurred_at}\x1f{recorded_text}\x1f{version}\x1f"
        ).encode()
        prev = sha256(prev + head + payload).digest()
        hashes.append(prev)
    rows.records = records = [
        Recorded(
            seq=seq,
            id=eid,
            kind=kind,
            stream=stream,
            source=source,
            occurred_at_us=occurred_at,
            recorded_at_us=recorded_at,
            schema_version=version,
            hash=digest,
            event=event,
        )
        for seq, eid, kind, stream, source, occurred_at, version, digest, event in zip(
            seqs, ids, kinds, streams, sources, occurred, versions, hashes, events, strict=True
        )
    ]
    seqs_per_caller = []
    start = 0
    for pending in batch:
        end = start + len(pending.events)
        seqs_per_caller.append(seqs[start:end])
        start = end
    return Plan(Committed(seqs_per_caller, records, seqs[-1], prev), rows, ids)


def _tag(event: AnyEvent) -> str:
    return event.__struct_config__.tag  # type: ignore[return-value]  # events.types.kind_of


class Rows:
    """The new rows of a plan, column by column, as ``write_plan`` inserts them."""

    __slots__ = (
        "hashes",
        "ids",
        "kinds",
        "occurred",
        "payloads",
        "recorded_at",
        "records",
        "seqs",
        "sources",
        "streams",
        "versions",
    )

    def __init__(self, recorded_at: int) -> None:
        self.recorded_at = recorded_at
        self.seqs: list[int] = []
        self.ids: list[str] = []
        self.kinds: list[str] = []
        self.streams: list[str] = []
        self.sources: list[str] = []
        self.occurred: list[int] = []
        self.versions: list[int] = []
        self.payloads: list[bytes] = []
        self.hashes: list[bytes] = []
        self.records: list[Recorded] = []

    def __len__(self) -> int:
        return len(self.seqs)

    def table(self) -> pa.Table:
        """The rows as one Arrow table in the events table's column order."""
        n = len(self.seqs)
        data = b"".join(self.payloads)
        if len(data) >= 1 << 31:  # past 32-bit offsets: let Arrow split it
            payload = pa.array(self.payloads, pa.binary()).cast(pa.large_string())
        else:
            # msgspec writes UTF-8: the column is built from its buffers, not checked again.
            offsets = array("i", accumulate(map(len, self.payloads), initial=0))
            payload = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
        digests = pa.Array.from_buffers(
            pa.binary(),
            n,
            [
                None,
                pa.py_buffer(array("i", range(0, 32 * n + 1, 32))),
                pa.py_buffer(b"".join(self.hashes)),
            ],
        )
        return pa.Table.from_arrays(
            [
                pa.array(self.seqs, pa.int64()),
                pa.array(self.ids, pa.string()),
                pa.array(self.kinds, pa.string()),
                pa.array(self.streams, pa.string()),
                pa.array(self.sources, pa.string()),
                pa.array(self.occurred, _TS),
                pa.array([self.recorded_at] * n, _TS),
                pa.array(self.versions, pa.uint16()),
                payload,
                digests,
            ],
            names=_ARROW_SCHEMA.names,
        )


# Up to this many rows a group is inserted from parameter lists: an Arrow scan costs a
# fixed setup about as large as a durable commit, which small groups (single appends
# from many callers) would pay each time. Larger groups go through Arrow, cheaper per row.
SMALL_GROUP = 64

_INSERT_LISTS = (
    # The lists go in as Python gives them (no cast of a whole list: binding one costs
    # more than the insert of a few rows); the table's types convert each value.
    "INSERT INTO events SELECT unnest(?), unnest(?), unnest(?), unnest(?), unnest(?),"
    " make_timestamptz(unnest(?)), make_timestamptz(?), unnest(?), unnest(?), unnest(?)"
)


def write_plan(con: duckdb.DuckDBPyConnection, plan: Plan) -> None:
    """Insert the plan's rows: one statement, one transaction, whole or not at all."""
    rows = plan.incoming
    if rows is None:
        return
    if len(rows) <= SMALL_GROUP:
        con.execute(
            _INSERT_LISTS,
            [
                rows.seqs,
                rows.ids,
                rows.kinds,
                rows.streams,
                rows.sources,
                rows.occurred,
                rows.recorded_at,
                rows.versions,
                [p.decode() for p in rows.payloads],
                rows.hashes,
            ],
        ).fetchall()
        return
    con.register("incoming", rows.table())
    try:
        con.execute("INSERT INTO events SELECT * REPLACE (id::UUID AS id) FROM incoming").fetchall()
    finally:
        con.unregister("incoming")


def learn(recent: RecentIds, plan: Plan) -> None:
    """Teach the idempotency window the plan's new ids, once its rows are durable."""
    if plan.new_ids:
        assert plan.incoming is not None  # new ids are new rows
        recent.extend(plan.new_ids, plan.incoming.seqs)
