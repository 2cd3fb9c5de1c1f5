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

A full disk (``events.write_failures``): a commit that fails fails all its callers with
``StoreUnavailable`` and leaves nothing behind. DuckDB may invalidate the whole database
after a failed write (it does after a failed checkpoint): the writer then closes the
connection and opens the file again, and checks that the file ends where the writer
thinks it does (the last seq and hash) before it writes on; a commit reported failed
that the file holds after all is answered as the success it was. The outage is kept for
the health answer (``write_failure``) until writes have succeeded again for a while
(``outage_hold_s``). Every file of the log is private (``events.file_modes``): its folder
0700, the database and WAL 0600.

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
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import duckdb

from events.chain import GENESIS_HASH, VerifyResult, chain_hash, verify_chain
from events.chain import hash_at as _hash_at
from events.codec import Codec, check_decodes, encode_event, encode_event_fast
from events.envelope import MAX_SOURCE, MAX_TIME_US, NewEvent, Recorded
from events.file_modes import private_dir, private_file
from events.ids import is_uuid7, uuid7_fullmatch
from events.log_reader import LogReader, decode_table
from events.log_writer import Pending, Plan, learn, plan_group, write_plan
from events.recent_ids import IdMark, RecentIds
from events.schema import SELECT_COLUMNS, migrate
from events.snapshot_files import SnapshotFiles
from events.types import SCHEMA_VERSIONS
from events.write_failures import (
    Outage,
    StoreUnavailable,
    WriteFailure,
    is_storage_failure,
    reason_of,
)

# The id mark's snapshot name (``EventStore._id_mark``).
ID_MARK = "ids"

__all__ = [
    "GENESIS_HASH",
    "SELECT_COLUMNS",
    "CommitObserver",
    "CommitStats",
    "EventStore",
    "InvalidEvent",
    "Listener",
    "StoreClosed",
    "StoreUnavailable",
    "VerifyResult",
    "WriteFailure",
    "chain_hash",
    "decode_table",
    "verify_chain",
]

log = logging.getLogger("hakuriver.store")

Listener = Callable[[list[Recorded]], None]


class CommitStats(NamedTuple):
    """One group commit, as measured for the host's metrics (control_plane/metrics.py).

    ``events``: new events it stored (re-sends are not counted); ``append_s``: how long
    its oldest caller waited, from queuing its batch to the commit (the worst append
    latency of the group); ``commit_s``: the commit itself, on the writer thread.
    """

    events: int
    append_s: float
    commit_s: float


# Called on the event loop once per group commit that stored something (never per
# event): the log stays free of any metrics library, the host turns these into its own.
CommitObserver = Callable[[CommitStats], None]
# Called on the writer thread with the new connection when the file was opened again,
# before any reader uses it (instance settings are the new instance's to set again).
ReopenHook = Callable[[duckdb.DuckDBPyConnection], None]

# After a failed checkpoint, the next attempt waits this long, doubling up to the cap.
CHECKPOINT_RETRY_S = 1.0
CHECKPOINT_RETRY_MAX_S = 60.0


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
        outage_hold_s: float = 5.0,
        folder_traverse: bool | None = None,
    ) -> None:
        self.path = Path(path)
        # Whether others may pass through the log's folder (events.file_modes.private_dir):
        # None keeps a traverse-only folder so, the host says True when the shared dir is in it.
        self._folder_traverse = folder_traverse
        self.codec = Codec()
        self._recent = RecentIds(recent_ids)
        self._checkpoint_idle_s = checkpoint_idle_s
        self._checkpoint_soft = checkpoint_soft_bytes
        self._checkpoint_hard = checkpoint_hard_bytes
        self._ring: collections.deque[Recorded] = collections.deque(maxlen=ring_size)
        self._keep_snapshots = keep_snapshots
        self._snapshots = SnapshotFiles(self.path)
        self._listeners: list[Listener] = []
        self._observers: list[CommitObserver] = []
        self._queue: list[Pending] = []
        # Set once per published commit and replaced: what subscribers at the end wait on.
        self._commit_signal = asyncio.Event()
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="hakuriver-log-writer")
        self._readers = LogReader(self.codec)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The writer's state, on the loop (see ``_kick``): whether a group commit or an idle
        # checkpoint is on the writer thread, whether a kick is scheduled, the idle timer,
        # and an event set whenever the writer thread has nothing of ours.
        self._busy = False
        self._kick_due = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._settled = asyncio.Event()
        self._settled.set()
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
        self.reopens = 0
        self._reopen_hooks: list[ReopenHook] = []
        # Outages of the log's storage, one per kind of write (events.write_failures).
        self._commit_outage = Outage("commit", log, str(self.path), outage_hold_s)
        self._checkpoint_outage = Outage("checkpoint", log, str(self.path), outage_hold_s)
        self._checkpoint_retry_s = CHECKPOINT_RETRY_S
        self._checkpoint_not_before = 0.0
        # Whether the WAL DuckDB made since the last open or checkpoint was set to 0600.
        self._wal_private = False
        # A plan whose write failed while the file could not be checked (see _write_sync),
        # and the records of durable plans not yet handed to the loop.
        self._unresolved: Plan | None = None
        self._landed: list[Recorded] = []
        # At or above every id stored (the writer's): the id mark written at checkpoints.
        self._max_id = ""

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path, **options: Any) -> EventStore:
        """Open (creating and migrating if needed) the log at ``path``."""
        store = cls(path, **options)
        store._loop = asyncio.get_running_loop()
        await store._loop.run_in_executor(store._writer_thread, store._open_sync)
        store._arm_idle_timer()
        return store

    def _open_sync(self) -> None:
        if not self.path.parent.exists():
            private_dir(self.path.parent, traverse=self._folder_traverse)
        con = self._connect_sync()
        # Tightened once the log is ours: a host refused (the file is in use) changes nothing.
        private_dir(self.path.parent, traverse=self._folder_traverse)
        self.last_seq, self._last_hash = _tail(con)
        self._written_seq = self.last_seq
        self._max_id = self._recent.load(con, self.last_seq, self._id_mark(con))
        self._con = con
        self._readers.attach(con)

    def _connect_sync(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(str(self.path))
        try:
            # Checkpoints are ours to time (see the module docstring).
            con.execute("SET checkpoint_threshold = '1TB'").fetchall()
            migrate(con)
        except BaseException:
            con.close()
            raise
        private_file(self.path)
        self._wal_private = private_file(f"{self.path}.wal")
        return con

    def on_reopen(self, hook: ReopenHook) -> None:
        """Call ``hook`` with the new connection whenever the file is opened again."""
        self._reopen_hooks.append(hook)

    def _reopen_sync(self) -> None:
        """Close the connection and open the file again (DuckDB invalidated it).

        Raises ``StoreUnavailable`` when the file cannot be opened now; the next commit
        tries again. Readers fail meanwhile and find the new connection afterwards.
        """
        old, self._con = self._con, None
        self._readers.detach()
        if old is not None:
            with contextlib.suppress(duckdb.Error):
                old.close()  # its cursors (the readers') close with it
        try:
            con = self._connect_sync()
        except duckdb.Error as exc:
            raise StoreUnavailable(reason_of(exc), str(exc)) from exc
        try:
            for hook in self._reopen_hooks:
                hook(con)
            tail = _tail(con)
        except BaseException as exc:
            con.close()  # or DuckDB would hand this instance to the next connect
            if isinstance(exc, duckdb.Error):
                raise StoreUnavailable(reason_of(exc), str(exc)) from exc
            raise
        self._con = con
        self._resolve_sync(tail)
        self._readers.attach(con)
        self.reopens += 1
        log.warning("reopened the event log %s (reopen %d)", self.path, self.reopens)

    async def close(self) -> None:
        """Flush queued appends, checkpoint, and close the file."""
        if self._closed:
            return
        self._closed = True
        self._cancel_idle_timer()
        while self._busy or self._queue:  # flush what was queued before the close
            if not self._busy:
                self._kick()
            await self._settled.wait()
        loop = asyncio.get_running_loop()
        # Reads in flight finish on the open connection first (their cursors die with it).
        await self._readers.close()
        await loop.run_in_executor(self._writer_thread, self._close_sync)
        self._writer_thread.shutdown(wait=True)
        self._signal_commit()

    def _close_sync(self) -> None:
        self._readers.detach()
        if self._con is not None:
            with contextlib.suppress(duckdb.Error):
                self._con.execute("CHECKPOINT").fetchall()
                self._write_id_mark()
            self._con.close()
            self._con = None

    # -- the id mark: the next open's idempotency watermark without reading every id ---------

    def _id_mark(self, con: duckdb.DuckDBPyConnection) -> IdMark | None:
        """The newest id mark of this log (snapshot ``ids``: anchored, so one of another
        or a restored database is ignored): at seq S, an id at or above every id stored
        at or below S, and the writer's window watermark and capacity then (``IdMark``);
        None when there is none (a log written before marks: the open reads every id
        once, as it always did). A mark of the first format (the id alone) still counts."""
        try:
            found = self._snapshots.latest(ID_MARK, self.last_seq, lambda seq: _hash_at(con, seq))
        except OSError:
            return None
        if found is None:
            return None
        seq, data = found
        try:
            bound, *window = data.decode("ascii").split(" ")
        except UnicodeDecodeError:
            return None
        if not is_uuid7(bound):
            return None
        if len(window) == 2 and all(part.isdigit() for part in window):
            return IdMark(seq, bound, int(window[0]), int(window[1]))
        return IdMark(seq, bound)

    def _write_id_mark(self) -> None:
        """After a checkpoint: the writer's position, its bound of every id stored, and its
        window's watermark and capacity (``<bound> <watermark_ms> <capacity>``)."""
        if not self._written_seq or not self._max_id:
            return
        recent = self._recent
        data = f"{self._max_id} {recent.watermark_ms} {recent.capacity}".encode()
        try:
            self._snapshots.write(ID_MARK, self._written_seq, self._last_hash, data, keep=2)
        except OSError as exc:  # derived data: the next open reads the ids instead
            log.warning("could not write the id mark of %s: %s", self.path, exc)

    async def __aenter__(self) -> EventStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def writing(self) -> bool:
        """Whether the writer thread is busy now (a group commit, an idle checkpoint): the
        loop is free meanwhile, for work that can be done ahead of its turn."""
        return self._busy

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` on the event loop with each committed batch, before acks."""
        self._listeners.append(listener)

    def add_commit_observer(self, observer: CommitObserver) -> None:
        """Call ``observer`` on the event loop with each group commit's figures
        (``CommitStats``), after its batch is published."""
        self._observers.append(observer)

    # -- append ------------------------------------------------------------------------------

    async def append(
        self,
        events: Sequence[NewEvent],
        *,
        check_payloads: bool = False,
        encoded: Encoded | None = None,
    ) -> list[int]:
        """Durably append a batch, all or nothing; each event's seq (the original for re-sends).

        ``check_payloads``: also decode each encoded payload back before queuing it, for
        events made outside this process (an agent's reports): a value that encodes but
        does not read back (a NaN, stored as null) is refused instead of stored.

        ``encoded``: payloads made ahead by ``encode_checked`` (checked as
        ``check_payloads`` checks); an event found there, the same object, is not
        encoded again.
        """
        if self._closed:
            raise StoreClosed("the event store is closed")
        if not events:
            return []
        payloads = (
            _encode_all(events, check_payloads)
            if not encoded
            else _encode_known(events, check_payloads, encoded)
        )
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._queue.append(Pending(events, payloads, future))
        if not self._busy and not self._kick_due:
            # Scheduled, not run now: the callers already woken on the loop (those a
            # commit just answered) append theirs first, and all go in one group.
            self._kick_due = True
            loop.call_soon(self._kick)
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

    # -- the writer: one group on the writer thread at a time, driven from the loop ----------
    #
    # One thread handoff each way per group: the loop submits the whole queue to the
    # writer thread (``_kick``), the thread commits it and hands the outcome back with one
    # ``call_soon_threadsafe`` (``_finish``), which publishes and answers the callers in
    # that same callback: no task to wake in between, no future to chain.

    def _kick(self) -> None:
        """Hand everything queued to the writer thread as one group (on the loop)."""
        self._kick_due = False
        if self._busy or not self._queue:
            return
        batch, self._queue = self._queue, []
        self._start(self._group_on_thread, batch, time.monotonic())

    def _start(self, fn: Callable[..., None], *args: Any) -> None:
        self._cancel_idle_timer()
        self._busy = True
        self._settled.clear()
        try:
            self._writer_thread.submit(fn, *args)
        except BaseException as exc:  # the executor is shut down: nothing ran
            self._busy = False
            self._settled.set()
            for pending in args[0] if fn == self._group_on_thread else ():
                if not pending.future.done():
                    pending.future.set_exception(StoreClosed(f"the event store is closed: {exc}"))

    def _group_on_thread(self, batch: list[Pending], started: float) -> None:
        """On the writer thread: commit ``batch``, then hand the outcome to the loop."""
        try:
            outcome: Any = self._commit_sync(batch)
            failure: BaseException | None = None
        except BaseException as exc:  # the whole group failed: nothing was written
            outcome, failure = None, exc
        self._to_loop(self._finish, batch, started, outcome, failure)

    def _to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(callback, *args)

    def _finish(
        self,
        batch: list[Pending],
        started: float,
        outcome: tuple[list[list[int]], list[Recorded]] | None,
        failure: BaseException | None,
    ) -> None:
        """On the loop, once the group is durable (or failed): publish, then answer."""
        self._busy = False
        self._settled.set()
        try:
            if failure is not None or outcome is None:
                exc = failure or RuntimeError("the group commit returned nothing")
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                return
            seqs, recorded = outcome
            if recorded:
                # Measured at the commit's end, before the listeners (the fold, log lines)
                # run: the figures are the write's, as their names say.
                done = time.monotonic()
                self._publish(recorded)
                if self._observers:
                    # The queue is in arrival order: its first batch waited the longest.
                    self._observe(
                        CommitStats(len(recorded), done - batch[0].queued_at, done - started)
                    )
                self._signal_commit()
            for pending, pending_seqs in zip(batch, seqs, strict=True):
                if not pending.future.done():
                    pending.future.set_result(pending_seqs)
        finally:
            self._next()

    def _next(self) -> None:
        """After a group or an idle checkpoint: the next group, or the idle timer."""
        if self._queue:
            if not self._kick_due:
                self._kick_due = True
                assert self._loop is not None
                self._loop.call_soon(self._kick)
        elif not self._closed:
            self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        # Idle checkpoints: when no group has come for ``checkpoint_idle_s``, and again
        # after each such period while the writer stays idle (the check is one stat).
        self._cancel_idle_timer()
        assert self._loop is not None
        self._idle_timer = self._loop.call_later(self._checkpoint_idle_s, self._idle)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle(self) -> None:
        self._idle_timer = None
        if self._busy or self._queue or self._closed:
            return
        self._start(self._idle_on_thread)

    def _idle_on_thread(self) -> None:
        try:
            self._maybe_checkpoint(False)
        finally:  # whatever happened, the loop must learn the writer is free again
            self._to_loop(self._idle_done)

    def _idle_done(self) -> None:
        self._busy = False
        self._settled.set()
        self._next()

    def _signal_commit(self) -> None:
        signal, self._commit_signal = self._commit_signal, asyncio.Event()
        signal.set()

    def _observe(self, stats: CommitStats) -> None:
        for observer in self._observers:
            try:
                observer(stats)
            except Exception:  # a measurement must never stop the writer
                log.exception("a commit observer failed")

    def _publish(self, recorded: list[Recorded]) -> None:
        # One synchronous step on the loop: ring, position and listeners move together, so a
        # reader that sees ``last_seq`` also finds every event up to it in the ring.
        self._ring.extend(recorded)
        self.last_seq = recorded[-1].seq
        for listener in self._listeners:
            # The rows are durable whatever a listener does: one that raises is logged, the
            # others still run, and the group's callers are answered (they hung for ever).
            try:
                listener(recorded)
            except Exception:
                log.exception("a listener of the event log failed at seq %d", recorded[-1].seq)

    def _commit_sync(self, batch: list[Pending]) -> tuple[list[list[int]], list[Recorded]]:
        try:
            plan = self._write_sync(batch)
        except Exception as exc:
            if not is_storage_failure(exc):
                raise
            self._commit_outage.failed(exc)
            raise StoreUnavailable(reason_of(exc), str(exc)) from exc
        # What is durable now: this plan's records, after those of an earlier plan found
        # in the file after all (``_resolve_sync``). The loop publishes them in order.
        recorded, self._landed = self._landed, []
        if recorded:
            self._commit_outage.succeeded()  # only a write proves the storage takes them
            self.commits += 1
            if not self._wal_private:
                self._wal_private = private_file(f"{self.path}.wal")
            self._maybe_checkpoint(after_commit=True)
        return plan.committed.seqs_per_caller, recorded

    def _write_sync(self, batch: list[Pending]) -> Plan:
        """Plan and write one group; the writer's position moves only once it is durable."""
        if self._con is None:  # an earlier reopen failed: the file is needed again
            self._reopen_sync()
        assert self._con is not None
        try:
            plan = plan_group(self._con, batch, self._recent, self._written_seq, self._last_hash)
        except duckdb.Error as exc:
            if is_storage_failure(exc):
                self._revive_sync()
            raise
        try:
            write_plan(self._con, plan)
        except duckdb.Error as exc:
            if not is_storage_failure(exc):
                raise
            # Nothing of it should be in the file; make sure (a plan still unresolved
            # when the file cannot be opened now is checked at the next open).
            self._unresolved = plan
            self._revive_sync()
            if (self._written_seq, self._last_hash) != plan.committed.end:
                raise
            return plan
        self._adopt(plan)
        return plan

    def _adopt(self, plan: Plan) -> None:
        """``plan`` is durable: the writer moves past it, its records wait for publication."""
        learn(self._recent, plan)
        if plan.new_ids:
            newest = max(plan.new_ids)
            if newest > self._max_id:
                self._max_id = newest
        self._written_seq, self._last_hash = plan.committed.end
        self._landed.extend(plan.committed.records)

    def _revive_sync(self) -> None:
        """After a storage failure: reopen the file if DuckDB gave up on the connection,
        and check where the file ends (``_resolve_sync``)."""
        try:
            assert self._con is not None
            tail = _tail(self._con)
        except duckdb.Error:  # invalidated: DuckDB refuses every statement now
            self._reopen_sync()
        else:
            self._resolve_sync(tail)

    def _resolve_sync(self, tail: tuple[int, bytes]) -> None:
        """The file ends at ``tail``: where the writer is, or after the plan whose write
        was reported failed (then it is durable after all, and adopted). Anything else
        is not the log this writer was writing: refuse to write on."""
        plan, self._unresolved = self._unresolved, None
        if tail == (self._written_seq, self._last_hash):
            return
        if plan is not None and tail == plan.committed.end:
            log.warning("a commit reported failed is in the event log after all (seq %d)", tail[0])
            self._adopt(plan)
            return
        con, self._con = self._con, None
        self._readers.detach()
        if con is not None:
            con.close()
        raise RuntimeError(
            f"the event log {self.path} ends at seq {tail[0]}, its writer at"
            f" {self._written_seq}: another process wrote it; stop it and restart the host"
        )

    def _maybe_checkpoint(self, after_commit: bool) -> None:
        # After a commit, its records are durable: nothing here may fail that commit.
        try:
            self._checkpoint_if_due(after_commit)
        except Exception:
            log.exception("checkpoint of %s failed", self.path)

    def _checkpoint_if_due(self, after_commit: bool) -> None:
        if self._con is None and not after_commit:
            # A reopen after a failed checkpoint failed (DuckDB can hand back the
            # invalidated instance while a reader's cursor on it is still in use): the idle
            # writer tries again, with the checkpoint's backoff, instead of waiting for
            # the next commit to need the file.
            if time.monotonic() >= self._checkpoint_not_before:
                try:
                    self._reopen_sync()
                except StoreUnavailable:
                    self._checkpoint_not_before = time.monotonic() + self._checkpoint_retry_s
                    self._checkpoint_retry_s = min(
                        self._checkpoint_retry_s * 2, CHECKPOINT_RETRY_MAX_S
                    )
            return
        try:
            wal = os.path.getsize(f"{self.path}.wal")
        except OSError:
            return
        limit = self._checkpoint_hard if after_commit else self._checkpoint_soft
        if wal < limit or self._con is None or time.monotonic() < self._checkpoint_not_before:
            return
        try:
            self._con.execute("CHECKPOINT").fetchall()
        except duckdb.Error as exc:
            # The commit before it is durable in the WAL; a checkpoint that fails (a full
            # disk) must not report that commit as failed. DuckDB has invalidated the
            # database meanwhile: open it again (the WAL is replayed), try later.
            self._checkpoint_outage.failed(exc)
            self._checkpoint_not_before = time.monotonic() + self._checkpoint_retry_s
            self._checkpoint_retry_s = min(self._checkpoint_retry_s * 2, CHECKPOINT_RETRY_MAX_S)
            with contextlib.suppress(StoreUnavailable):
                self._reopen_sync()
            return
        # Counted before the outage ends: whoever sees the outage over (on the loop) sees
        # the checkpoint that ended it.
        self.checkpoints += 1
        self._write_id_mark()
        self._checkpoint_retry_s = CHECKPOINT_RETRY_S
        self._wal_private = False  # DuckDB makes a new WAL at the next commit
        self._checkpoint_outage.succeeded()

    @property
    def write_failure(self) -> WriteFailure | None:
        """The current outage of the log's storage (a failing commit first), or None."""
        return self._commit_outage.current or self._checkpoint_outage.current

    @property
    def generation(self) -> int:
        """Which connection readers use now: it changes each time the file is opened
        again, and a cursor taken under an older generation is closed."""
        return self._readers.generation

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
                # Checked and taken in one step with the test above (no await between):
                # the next publication (or the close) sets this signal.
                await self._commit_signal.wait()
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


def _encode_all(events: Sequence[NewEvent], check_payloads: bool) -> list[bytes]:
    """Each event's payload, checked as ``EventStore._validate_and_encode`` checks it.

    The same checks inlined, with no message built for an event that passes: this runs on
    the event loop for every appended event. Any event that fails one goes through
    ``_validate_and_encode``, which raises the ``InvalidEvent`` naming its field.
    """
    match, encode, versions = uuid7_fullmatch, encode_event_fast, SCHEMA_VERSIONS
    payloads = []
    for new in events:
        eid, source, event = new.id, new.source, new.event
        if (
            type(eid) is not str
            or match(eid) is None
            or not source
            or len(source) > MAX_SOURCE
            or new.schema_version != versions.get(event.__struct_config__.tag)  # type: ignore[arg-type]
            or not 0 <= new.occurred_at_us <= MAX_TIME_US
        ):
            break
        try:
            payloads.append(encode(event))
        except (UnicodeEncodeError, OverflowError, TypeError, ValueError):
            break
    if check_payloads:
        # Each payload decoded back (events from outside the host): one check per event,
        # none of them building a message; the first that fails goes the slow way below.
        check = check_decodes
        for index, payload in enumerate(payloads):
            if check(payload) is not None:
                del payloads[index:]
                break
    if len(payloads) == len(events):
        return payloads
    index = len(payloads)  # the first event the fast path did not take: it says why
    return payloads + [
        EventStore._validate_and_encode(i, e, check_payloads)
        for i, e in enumerate(events)
        if i >= index
    ]


# Payloads encoded ahead of their append, by event id: (the event, its payload).
Encoded = dict[str, tuple[NewEvent, bytes]]


def encode_checked(events: Sequence[NewEvent]) -> Encoded:
    """Each event's payload, made and checked now as ``append(check_payloads=True)``
    would (``InvalidEvent`` names the first event that fails), for an ``append`` later.

    The agent link encodes a batch while the log writes the batches before it: the
    append then only looks the payloads up (``_encode_known``)."""
    payloads = _encode_all(events, True)
    return {new.id: (new, payload) for new, payload in zip(events, payloads, strict=True)}


def _encode_known(events: Sequence[NewEvent], check_payloads: bool, known: Encoded) -> list[bytes]:
    """``_encode_all``, taking each payload made ahead for the very same event object
    (an event rebuilt since, or another one with its id, is encoded and checked here)."""
    payloads: list[bytes] = []
    rest: list[int] = []
    get = known.get
    for index, new in enumerate(events):
        entry = get(new.id)
        if entry is not None and entry[0] is new:
            payloads.append(entry[1])
        else:
            payloads.append(b"")
            rest.append(index)
    if rest:
        try:
            made = _encode_all([events[i] for i in rest], check_payloads)
        except InvalidEvent:
            # Raised again on the whole batch: the message names the event's own place.
            return _encode_all(events, check_payloads)
        for index, payload in zip(rest, made, strict=True):
            payloads[index] = payload
    return payloads


def _tail(con: duckdb.DuckDBPyConnection) -> tuple[int, bytes]:
    """The seq and chain hash the log file ends with (0 and the genesis hash when empty)."""
    rows = con.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchall()
    return (int(rows[0][0]), bytes(rows[0][1])) if rows else (0, GENESIS_HASH)
