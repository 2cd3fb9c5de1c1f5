"""EventStore: the append-only log in one DuckDB file.

One writer thread owns the write connection. ``append`` encodes and
validates on the caller's side, then queues the batch; the writer drains
everything queued into one transaction (group commit), assigns gap-free
``seq`` values in commit order, extends the hash chain and commits. Each
caller's future resolves only after that commit, so an acknowledged event is
durable (DuckDB fsyncs its WAL on commit).

Idempotency by event id uses UUIDv7 timestamps: the store keeps every id whose
embedded timestamp is at or above a watermark ``W`` in memory (bounded; older
entries are evicted and ``W`` rises past them). An incoming id stamped at or
above ``W`` is new unless it is in that window; one stamped below ``W``
(a late resend, a producer with a slow clock) is looked up in the table,
where zone maps on the time-ordered ids keep the scan short.

Checkpoints: DuckDB's automatic checkpoint would stall whichever commit
crosses the WAL threshold. The store turns it off and checkpoints when the
writer has been idle for a moment and the WAL is large, or unconditionally
when the WAL passes a hard limit.

The API has no update and no delete.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa

from events.codec import Codec, encode_event, gc_paused
from events.envelope import NewEvent, Recorded, now_us
from events.ids import id_timestamp_ms, is_uuid7
from events.schema import migrate
from events.snapshot_files import SnapshotFiles

GENESIS_HASH = bytes(32)

log = logging.getLogger("hakuriver.store")

Listener = Callable[[list[Recorded]], None]

# The events table's columns as ``decode_table`` expects them (times as Unix microseconds).
SELECT_COLUMNS = (
    "seq, id::VARCHAR, kind, stream, source, epoch_us(occurred_at), epoch_us(recorded_at),"
    " schema_version, payload, hash"
)

_TS = pa.timestamp("us", tz="UTC")
_ARROW_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("id", pa.string()),
        ("kind", pa.string()),
        ("stream", pa.string()),
        ("source", pa.string()),
        ("occurred_at", pa.timestamp("us", tz="UTC")),
        ("recorded_at", pa.timestamp("us", tz="UTC")),
        ("schema_version", pa.uint16()),
        ("payload", pa.string()),
        ("hash", pa.binary()),
    ]
)


class StoreClosed(Exception):
    """The store was closed while an operation waited on it."""


class InvalidEvent(ValueError):
    """An event the log refuses; the message names the event and the field."""


def chain_hash(prev: bytes, head: bytes, payload: bytes) -> bytes:
    """SHA-256 over the previous hash, this event's envelope head and its payload."""
    return hashlib.sha256(prev + head + payload).digest()


def _canonical_head(
    seq: int,
    event_id: str,
    kind: str,
    stream: str,
    source: str,
    occurred_at_us: int,
    recorded_at_us: int,
    schema_version: int,
) -> bytes:
    """The envelope fields of an event, unit-separated, as hashed before its payload."""
    return (
        f"{seq}\x1f{event_id}\x1f{kind}\x1f{stream}\x1f{source}\x1f"
        f"{occurred_at_us}\x1f{recorded_at_us}\x1f{schema_version}\x1f"
    ).encode()


class VerifyResult(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of a hash-chain check over a range of the log."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""


class _Pending:
    """One caller's batch, encoded, waiting for the writer."""

    __slots__ = ("events", "future", "payloads")

    def __init__(
        self, events: Sequence[NewEvent], payloads: list[bytes], future: asyncio.Future[list[int]]
    ) -> None:
        self.events = events
        self.payloads = payloads
        self.future = future


class _RecentIds:
    """Every stored id stamped at or above ``watermark_ms``, bounded in size."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.seq_by_id: dict[str, int] = {}
        self.order: collections.deque[str] = collections.deque()
        self.watermark_ms = 0

    def extend(self, ids: Iterable[str], seqs: Iterable[int]) -> None:
        """Remember newly stored ids (in seq order), evicting the oldest past capacity."""
        order = self.order
        for event_id, seq in zip(ids, seqs, strict=True):
            self.seq_by_id[event_id] = seq
            order.append(event_id)
        excess = len(order) - self.capacity
        if excess > 0:
            pop, forget = order.popleft, self.seq_by_id.pop
            newest_evicted = self.watermark_ms - 1
            for _ in range(excess):
                old_id = pop()
                forget(old_id, None)
                newest_evicted = max(newest_evicted, id_timestamp_ms(old_id))
            self.watermark_ms = newest_evicted + 1


class EventStore:
    """The append-only event log over one DuckDB file (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        recent_ids: int = 100_000,
        checkpoint_idle_s: float = 0.2,
        checkpoint_soft_bytes: int = 16 << 20,
        checkpoint_hard_bytes: int = 512 << 20,
        ring_size: int = 20_000,
        keep_snapshots: int = 4,
    ) -> None:
        self.path = Path(path)
        self.codec = Codec()
        self._recent = _RecentIds(recent_ids)
        self._checkpoint_idle_s = checkpoint_idle_s
        self._checkpoint_soft = checkpoint_soft_bytes
        self._checkpoint_hard = checkpoint_hard_bytes
        self._ring: collections.deque[Recorded] = collections.deque(maxlen=ring_size)
        self._keep_snapshots = keep_snapshots
        self._snapshots = SnapshotFiles(self.path)
        self._listeners: list[Listener] = []
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._committed = asyncio.Condition()
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="hakuriver-log-writer")
        self._readers = ThreadPoolExecutor(4, thread_name_prefix="hakuriver-log-reader")
        self._reader_local = threading.local()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._closed = False
        # What readers see: set on the event loop together with the ring and the listeners,
        # so a seq is never visible before its events are (see ``_publish``).
        self.last_seq = 0
        # The writer thread's own position in the chain, ahead of ``last_seq`` between a
        # commit and its publication.
        self._written_seq = 0
        self._last_hash = GENESIS_HASH
        self.commits = 0
        self.checkpoints = 0

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path, **options: Any) -> EventStore:
        """Open (creating and migrating if needed) the log at ``path``."""
        store = cls(path, **options)
        await asyncio.get_running_loop().run_in_executor(store._writer_thread, store._open_sync)
        store._writer_task = asyncio.create_task(store._writer_loop(), name="event-log-writer")
        return store

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(str(self.path))
        # Checkpoints are ours to time (see the module docstring).
        con.execute("SET checkpoint_threshold = '1TB'").fetchall()
        migrate(con)
        rows = con.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchall()
        if rows:
            self.last_seq, self._last_hash = int(rows[0][0]), bytes(rows[0][1])
            self._written_seq = self.last_seq
        self._load_recent_ids(con)
        self._con = con

    def _load_recent_ids(self, con: duckdb.DuckDBPyConnection) -> None:
        cutoff = max(self.last_seq - self._recent.capacity, 0)
        table = con.sql(
            "SELECT id::VARCHAR AS id, seq FROM events WHERE seq > ? ORDER BY seq", params=[cutoff]
        ).to_arrow_table()
        self._recent.extend(table.column("id").to_pylist(), table.column("seq").to_pylist())
        if cutoff:
            # Every id not loaded must sit below the watermark.
            ((newest_unloaded,),) = con.execute(
                "SELECT max(id)::VARCHAR FROM events WHERE seq <= ?", [cutoff]
            ).fetchall()
            if newest_unloaded:
                self._recent.watermark_ms = max(
                    self._recent.watermark_ms, id_timestamp_ms(newest_unloaded) + 1
                )

    async def close(self) -> None:
        """Flush queued appends, checkpoint, and close the file."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._writer_task is not None:
            await self._writer_task
        loop = asyncio.get_running_loop()
        # Reads in flight finish on the open connection first (their cursors die with it).
        await asyncio.to_thread(self._readers.shutdown, True)
        await loop.run_in_executor(self._writer_thread, self._close_sync)
        self._writer_thread.shutdown(wait=True)
        async with self._committed:
            self._committed.notify_all()

    def _close_sync(self) -> None:
        if self._con is not None:
            with contextlib.suppress(duckdb.Error):
                self._con.execute("CHECKPOINT").fetchall()
            self._con.close()
            self._con = None

    async def __aenter__(self) -> EventStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` on the event loop with each committed batch, before acks."""
        self._listeners.append(listener)

    # -- append ------------------------------------------------------------------------------

    async def append(self, events: Sequence[NewEvent]) -> list[int]:
        """Durably append a batch, all or nothing; each event's seq (the original for re-sends)."""
        if self._closed:
            raise StoreClosed("the event store is closed")
        if not events:
            return []
        payloads = [self._validate_and_encode(i, e) for i, e in enumerate(events)]
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(events, payloads, future))
        self._wake.set()
        return await future

    @staticmethod
    def _validate_and_encode(index: int, new: NewEvent) -> bytes:
        if not is_uuid7(new.id):
            raise InvalidEvent(f"events[{index}].id: {new.id!r} is not a canonical UUIDv7")
        if not new.source:
            raise InvalidEvent(f"events[{index}].source: must not be empty")
        return encode_event(new.event)

    async def _writer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._checkpoint_idle_s)
                except TimeoutError:
                    await loop.run_in_executor(self._writer_thread, self._maybe_checkpoint, False)
                    continue
            batch, self._queue = self._queue, []
            try:
                seqs, recorded = await loop.run_in_executor(
                    self._writer_thread, self._commit_sync, batch
                )
            except BaseException as exc:  # the whole group failed: nothing was written
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            if recorded:
                self._publish(recorded)
                async with self._committed:
                    self._committed.notify_all()
            for pending, pending_seqs in zip(batch, seqs, strict=True):
                if not pending.future.done():
                    pending.future.set_result(pending_seqs)

    def _publish(self, recorded: list[Recorded]) -> None:
        # One synchronous step on the loop: ring, position and listeners move together, so a
        # reader that sees ``last_seq`` also finds every event up to it in the ring.
        self._ring.extend(recorded)
        self.last_seq = recorded[-1].seq
        for listener in self._listeners:
            listener(recorded)

    def _commit_sync(self, batch: list[_Pending]) -> tuple[list[list[int]], list[Recorded]]:
        con = self._con
        assert con is not None
        recent = self._recent
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
        seq = self._written_seq
        prev = self._last_hash
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
                head = _canonical_head(
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
            return seqs_per_caller, []

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
        # One statement is one transaction: the batch lands whole or not at all.
        con.register("incoming", incoming)
        try:
            con.execute(
                "INSERT INTO events SELECT * REPLACE (id::UUID AS id) FROM incoming"
            ).fetchall()
        finally:
            con.unregister("incoming")
        # Only now, with the commit durable, does the writer move on; readers follow when
        # the loop publishes the batch.
        self._written_seq, self._last_hash = seq, prev
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
        recent.extend((e.id for e in news), (f[2] for f in fresh))
        self.commits += 1
        self._maybe_checkpoint(after_commit=True)
        return seqs_per_caller, records

    def _maybe_checkpoint(self, after_commit: bool) -> None:
        try:
            wal = os.path.getsize(f"{self.path}.wal")
        except OSError:
            return
        limit = self._checkpoint_hard if after_commit else self._checkpoint_soft
        if wal >= limit and self._con is not None:
            try:
                self._con.execute("CHECKPOINT").fetchall()
            except duckdb.Error as exc:
                # The commit before it is durable in the WAL; a checkpoint that fails (a full
                # disk) must not report that commit as failed. The next one tries again.
                log.warning("checkpoint of %s failed: %s", self.path, exc)
                return
            self.checkpoints += 1

    # -- reading -----------------------------------------------------------------------------

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor on the store's connection, for a reader with a thread of its own.

        It sees every committed event. The caller closes it (closing the store closes it
        too) and must not write through it: the store is the log's only writer.
        """
        if self._con is None:
            raise RuntimeError("the event store is not open")
        return self._con.cursor()

    def _reader(self) -> duckdb.DuckDBPyConnection:
        cur: duckdb.DuckDBPyConnection | None = getattr(self._reader_local, "cur", None)
        if cur is None:
            assert self._con is not None, "store is not open"
            cur = self._con.cursor()
            self._reader_local.cur = cur
        return cur

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only SQL statement on a reader cursor, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._readers, lambda: self._reader().execute(sql, list(params)).fetchall()
        )

    async def read(
        self,
        *,
        after: int = 0,
        until_seq: int | None = None,
        until_us: int | None = None,
        kinds: Iterable[str] | None = None,
        streams: Iterable[str] | None = None,
        sources: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Recorded]:
        """Events after seq ``after`` (up to a seq or a time), in seq order, filtered."""
        where = ["seq > ?"]
        params: list[Any] = [after]
        if until_seq is not None:
            where.append("seq <= ?")
            params.append(until_seq)
        if until_us is not None:
            where.append("recorded_at <= make_timestamptz(?::BIGINT)")
            params.append(until_us)
        for column, values in (("kind", kinds), ("stream", streams), ("source", sources)):
            if values is not None:
                where.append(f"{column} IN (SELECT unnest(?::VARCHAR[]))")
                params.append(list(values))
        sql = f"SELECT {SELECT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"

        def fetch() -> list[Recorded]:
            table = self._reader().sql(sql, params=params).to_arrow_table()
            with gc_paused():
                return decode_table(self.codec, table)

        return await asyncio.get_running_loop().run_in_executor(self._readers, fetch)

    async def subscribe(self, after: int = 0, *, page: int = 10_000) -> AsyncIterator[Recorded]:
        """Every event after ``after``: first those already stored, then each new commit, once."""
        cursor = after
        while True:
            last = self.last_seq
            ring = self._ring
            chunk: list[Recorded] = []
            if cursor < last and ring and ring[0].seq <= cursor + 1 <= ring[-1].seq:
                # Served from memory: the ring holds a contiguous run of published commits.
                chunk = list(itertools.islice(ring, cursor + 1 - ring[0].seq, None))
            elif cursor < last:
                # A bounded range of seqs (gap-free), so a stretch of unknown kinds that
                # decodes to nothing still moves the cursor by exactly what was read.
                upper = min(cursor + page, last)
                chunk = await self.read(after=cursor, until_seq=upper)
                if not chunk:
                    cursor = upper
                    continue
            else:
                if self._closed:
                    return
                async with self._committed:
                    await self._committed.wait_for(
                        lambda seen=cursor: self.last_seq > seen or self._closed  # type: ignore[misc]
                    )
                continue
            for record in chunk:
                if record.seq > cursor:
                    cursor = record.seq
                    yield record

    # -- integrity ---------------------------------------------------------------------------

    async def verify(self, start: int = 1, end: int | None = None) -> VerifyResult:
        """Recompute the hash chain over [start, end]; name the first seq that does not match."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._verify_sync, start, end)

    def _verify_sync(self, start: int, end: int | None) -> VerifyResult:
        return verify_chain(self._reader(), start, end)

    # -- snapshots (events.snapshot_files: derived data beside the log) -----------------------

    @property
    def snapshot_dir(self) -> Path:
        """Where snapshots live: beside the database, never inside the log."""
        return self._snapshots.folder

    async def save_snapshot(self, name: str, seq: int, data: bytes) -> Path:
        """Store folded state at ``seq`` as a file (derived data: rebuildable, prunable).

        The file starts with the log's hash at ``seq``; a snapshot whose hash no
        longer matches the log (a restored or replaced database) is never used.
        """

        def write() -> Path:
            anchor = _hash_at(self._reader(), seq)
            if anchor is None:
                raise ValueError(f"seq {seq} is not in the log")
            return self._snapshots.write(name, seq, anchor, data, keep=self._keep_snapshots)

        return await asyncio.get_running_loop().run_in_executor(self._readers, write)

    async def latest_snapshot(
        self, name: str, at_or_before: int | None = None
    ) -> tuple[int, bytes] | None:
        """The newest valid snapshot called ``name`` at or before a seq, as (seq, data)."""
        limit = self.last_seq if at_or_before is None else min(at_or_before, self.last_seq)

        def latest() -> tuple[int, bytes] | None:
            cursor = self._reader()
            return self._snapshots.latest(name, limit, lambda seq: _hash_at(cursor, seq))

        return await asyncio.get_running_loop().run_in_executor(self._readers, latest)


def _hash_at(con: duckdb.DuckDBPyConnection, seq: int) -> bytes | None:
    rows = con.execute("SELECT hash FROM events WHERE seq = ?", [seq]).fetchall()
    return bytes(rows[0][0]) if rows else None


def verify_chain(
    con: duckdb.DuckDBPyConnection, start: int = 1, end: int | None = None, *, page: int = 100_000
) -> VerifyResult:
    """Check seq continuity and the hash chain of the ``events`` table on ``con``."""
    prev = GENESIS_HASH
    if start > 1:
        found = con.execute("SELECT hash FROM events WHERE seq = ?", [start - 1]).fetchall()
        if not found:
            return VerifyResult(ok=False, checked=0, first_bad_seq=start - 1, reason="seq missing")
        prev = bytes(found[0][0])
    expected = start
    checked = 0
    stored = con.execute("SELECT coalesce(max(seq), 0) FROM events").fetchall()[0][0]
    last = stored if end is None else min(end, stored)
    last = int(last or 0)
    while expected <= last:
        upper = min(expected + page - 1, last)
        rows = con.execute(
            f"SELECT {SELECT_COLUMNS} FROM events WHERE seq BETWEEN ? AND ? ORDER BY seq",
            [expected, upper],
        ).fetchall()
        for seq, eid, kind, stream, source, occ, rec, version, payload, digest in rows:
            if seq != expected:
                return VerifyResult(
                    ok=False,
                    checked=checked,
                    first_bad_seq=expected,
                    reason="seq missing" if seq > expected else "seq duplicated",
                )
            head = _canonical_head(seq, eid, kind, stream, source, occ, rec, version)
            prev = chain_hash(prev, head, payload.encode())
            if prev != bytes(digest):
                return VerifyResult(
                    ok=False, checked=checked, first_bad_seq=seq, reason="hash mismatch"
                )
            expected += 1
            checked += 1
        if expected <= upper:
            return VerifyResult(
                ok=False, checked=checked, first_bad_seq=expected, reason="seq missing"
            )
    return VerifyResult(ok=True, checked=checked)


def decode_table(codec: Codec, table: pa.Table) -> list[Recorded]:
    """Rows of ``SELECT_COLUMNS`` as ``Recorded`` envelopes, skipping unknown kinds."""
    # Column-wise conversion is several times faster than row tuples for long reads.
    columns = [column.to_pylist() for column in table.columns]
    decode = codec.decode
    out: list[Recorded] = []
    append = out.append
    for seq, eid, kind, stream, source, occ, rec, version, payload, digest in zip(
        *columns, strict=True
    ):
        event = decode(kind, version, payload)
        if event is not None:
            append(
                Recorded(
                    seq=seq,
                    id=eid,
                    kind=kind,
                    stream=stream,
                    source=source,
                    occurred_at_us=occ,
                    recorded_at_us=rec,
                    schema_version=version,
                    hash=digest,
                    event=event,
                )
            )
    return out
