"""EventStore: the append-only log in one DuckDB file, and the facade over its parts.

One writer thread owns the write connection. ``append`` encodes and validates on the
caller's side, then queues the batch; the writer drains everything queued into one
transaction (group commit), assigns gap-free ``seq`` values in commit order, extends
the hash chain and commits. Each caller's future resolves only after that commit, so an
acknowledged event is durable (DuckDB fsyncs its WAL on commit). Before the callers are
answered, the event loop publishes the batch: the ring of recent events, ``last_seq``
and the listeners move in one step.

Checkpoints: DuckDB's automatic checkpoint would stall whichever commit crosses the WAL
threshold. The store turns it off and checkpoints when the writer has been idle for a
moment and the WAL is large, or unconditionally when the WAL passes a hard limit.

The parts, a module each:

* ``events.log_writer``: one group commit (re-sends, seqs, the hash chain, the insert);
* ``events.recent_ids``: the idempotency window of recently stored ids;
* ``events.chain``: the hash chain's format and its check;
* ``events.log_reader``: reads on reader threads, each in a READ ONLY transaction;
* ``events.snapshot_files``: snapshot files beside the log.

This module keeps the queue, the writer loop, publication and subscriptions, and
re-exports the names callers import from it. The API has no update and no delete.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb

from events.chain import GENESIS_HASH, VerifyResult, chain_hash, verify_chain
from events.chain import hash_at as _hash_at
from events.codec import Codec, check_decodes, encode_event
from events.envelope import MAX_SOURCE, MAX_TIME_US, NewEvent, Recorded
from events.ids import is_uuid7
from events.log_reader import LogReader, decode_table
from events.log_writer import Pending, commit_group
from events.recent_ids import RecentIds
from events.schema import SELECT_COLUMNS, migrate
from events.snapshot_files import SnapshotFiles
from events.types import SCHEMA_VERSIONS

__all__ = [
    "GENESIS_HASH",
    "SELECT_COLUMNS",
    "EventStore",
    "InvalidEvent",
    "Listener",
    "StoreClosed",
    "VerifyResult",
    "chain_hash",
    "decode_table",
    "verify_chain",
]

log = logging.getLogger("hakuriver.store")

Listener = Callable[[list[Recorded]], None]


class StoreClosed(Exception):
    """The store was closed while an operation waited on it."""


class InvalidEvent(ValueError):
    """An event the log refuses; the message names the event and the field."""


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
        self._recent = RecentIds(recent_ids)
        self._checkpoint_idle_s = checkpoint_idle_s
        self._checkpoint_soft = checkpoint_soft_bytes
        self._checkpoint_hard = checkpoint_hard_bytes
        self._ring: collections.deque[Recorded] = collections.deque(maxlen=ring_size)
        self._keep_snapshots = keep_snapshots
        self._snapshots = SnapshotFiles(self.path)
        self._listeners: list[Listener] = []
        self._queue: list[Pending] = []
        self._wake = asyncio.Event()
        self._committed = asyncio.Condition()
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="hakuriver-log-writer")
        self._readers = LogReader(self.codec)
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
        self._recent.load(con, self.last_seq)
        self._con = con
        self._readers.attach(con)

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
        await self._readers.close()
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

    async def append(
        self, events: Sequence[NewEvent], *, check_payloads: bool = False
    ) -> list[int]:
        """Durably append a batch, all or nothing; each event's seq (the original for re-sends).

        ``check_payloads``: also decode each encoded payload back before queuing it, for
        events made outside this process (an agent's reports): a value that encodes but
        does not read back (a NaN, stored as null) is refused instead of stored.
        """
        if self._closed:
            raise StoreClosed("the event store is closed")
        if not events:
            return []
        payloads = [self._validate_and_encode(i, e, check_payloads) for i, e in enumerate(events)]
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue.append(Pending(events, payloads, future))
        self._wake.set()
        return await future

    @staticmethod
    def _validate_and_encode(index: int, new: NewEvent, check_payload: bool = False) -> bytes:
        # Every envelope field is checked against what the log's columns and this build's
        # decoder accept, here on the caller's side: a value the group commit could not
        # insert (a schema_version past uint16) would fail every batch committed with it,
        # and one that does not read back (an unknown schema version; with check_payload,
        # a NaN stored as null) would stop the host's next rebuild. The payload check costs
        # a decode per event (about 5 us): only events from outside the host pay it.
        where = f"events[{index}]"
        if not is_uuid7(new.id):
            raise InvalidEvent(f"{where}.id: {new.id!r} is not a canonical UUIDv7")
        if not new.source:
            raise InvalidEvent(f"{where}.source: must not be empty")
        if len(new.source) > MAX_SOURCE:
            raise InvalidEvent(f"{where}.source: longer than {MAX_SOURCE} characters")
        kind = new.kind
        if new.schema_version != SCHEMA_VERSIONS[kind]:
            raise InvalidEvent(
                f"{where}.schema_version: {new.schema_version} for {kind}; this build"
                f" records version {SCHEMA_VERSIONS[kind]} (it encodes the payload itself)"
            )
        if not 0 <= new.occurred_at_us <= MAX_TIME_US:
            raise InvalidEvent(
                f"{where}.occurred_at_us: {new.occurred_at_us} is outside 0..{MAX_TIME_US}"
                " (Unix microseconds up to the year 9999)"
            )
        try:
            payload = encode_event(new.event)
        except (UnicodeEncodeError, OverflowError, TypeError, ValueError) as exc:
            raise InvalidEvent(f"{where} ({kind}): cannot be encoded: {exc}") from None
        problem = check_decodes(payload) if check_payload else None
        if problem is not None:
            raise InvalidEvent(f"{where} ({kind}): would not read back: {problem}")
        return payload

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

    def _commit_sync(self, batch: list[Pending]) -> tuple[list[list[int]], list[Recorded]]:
        assert self._con is not None
        done = commit_group(self._con, batch, self._recent, self._written_seq, self._last_hash)
        if not done.records:
            return done.seqs_per_caller, []
        # Only now, with the commit durable, does the writer move on; readers follow when
        # the loop publishes the batch.
        self._written_seq, self._last_hash = done.last_seq, done.last_hash
        self.commits += 1
        self._maybe_checkpoint(after_commit=True)
        return done.seqs_per_caller, done.records

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

    # -- reading (events.log_reader: read-only, on reader threads) -----------------------------

    def reader_cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor for a reader with threads of its own, to read in ``read_only`` only.

        DuckDB allows no second, read-only connection to the file in this process
        (``events.log_reader``). The caller closes the cursor (closing the store closes
        it too); the store is the log's only writer.
        """
        return self._readers.cursor()

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one SQL statement in a READ ONLY transaction, off the event loop."""
        return await self._readers.query(sql, params)

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
        return await self._readers.read(
            after=after,
            until_seq=until_seq,
            until_us=until_us,
            kinds=kinds,
            streams=streams,
            sources=sources,
            limit=limit,
        )

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

    async def verify(self, start: int = 1, end: int | None = None) -> VerifyResult:
        """Recompute the hash chain over [start, end]; name the first seq that does not match."""
        return await self._readers.verify(start, end)

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

        def write(cursor: duckdb.DuckDBPyConnection) -> Path:
            anchor = _hash_at(cursor, seq)
            if anchor is None:
                raise ValueError(f"seq {seq} is not in the log")
            return self._snapshots.write(name, seq, anchor, data, keep=self._keep_snapshots)

        return await self._readers.run(write)

    async def latest_snapshot(
        self, name: str, at_or_before: int | None = None
    ) -> tuple[int, bytes] | None:
        """The newest valid snapshot called ``name`` at or before a seq, as (seq, data)."""
        limit = self.last_seq if at_or_before is None else min(at_or_before, self.last_seq)
        return await self._readers.run(
            lambda cur: self._snapshots.latest(name, limit, lambda seq: _hash_at(cur, seq))
        )
