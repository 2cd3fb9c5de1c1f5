"""History on a running control plane: reads through the store's connection, and snapshots.

The host holds the log's DuckDB file open read-write, so history reads go through
cursors of the store's own connection (``replay_tools.logfile.store_cursor``), on
threads of their own: never the event loop. Each reader thread keeps one cursor with
the documented SQL views (TEMP views over the store's ``events`` table), over which
``history(cursor)`` is the same ``replay_tools.history.History`` the CLI's ``--db``
mode uses on a file: one implementation of every history answer. A cursor of that
connection could write, so every unit of work runs in a READ ONLY transaction
(``events.log_reader.read_only``; user SQL in the one ``run_readonly_sql`` opens).

User SQL (``POST /api/sql``) never runs on those reader threads: it has slots of its own
(``SqlLimits``: a thread and a cursor each, ``[database] sql_slots``), a per-connection
cap on the memory its operators may hold (DuckDB's ``operator_memory_limit``, set on the
slot's cursor before the configuration is locked), and a timeout after which the
statement is interrupted. A statement that finds every slot busy waits a little, then
is answered 503. So the feed, the dashboard and time travel always have their readers,
whatever users ask (docs/decisions.md). DuckDB has no per-connection thread setting:
the slots bound how many statements run at once, each with DuckDB's shared worker pool.

At start the service hardens the DuckDB instance (``replay_tools.analytics.harden``:
no file or network access, no extension loading, configuration locked): user SQL runs
on the same instance as the log, and nothing the host does needs those (snapshots and
exports are written by Python). It then keeps ``history`` snapshots current in the
background (``HistoryWriter``), so ``state --at`` stays fast as the log grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, TypeVar

import duckdb
import msgspec
import pyarrow as pa

from control_plane.errors import Unavailable
from control_plane.views import NodeOut, TaskOut
from events.envelope import Recorded
from events.log_reader import begin_read_only, read_only
from events.store import EventStore
from projections.cluster import ClusterState
from projections.tasks import ENDED_STATES
from replay_tools.analytics import harden, install_views
from replay_tools.history import History, Json
from replay_tools.logfile import LogFile, store_cursor
from replay_tools.queries import ExportQuery, HistoryError, SqlQuery
from replay_tools.snapshots import HISTORY_EVERY, HistoryWriter

log = logging.getLogger("hakuriver.host")

T = TypeVar("T")
Cursor = duckdb.DuckDBPyConnection


class StateOut(msgspec.Struct, kw_only=True):
    """The cluster at one seq, as ``GET /api/nodes`` and ``GET /api/tasks`` show it."""

    seq: int
    includes_ended_tasks: bool
    nodes: list[NodeOut]
    tasks: list[TaskOut]


def state_document(state: ClusterState, *, ended: bool) -> StateOut:
    """The state as JSON-ready views: nodes by name, tasks in submission order."""
    tasks = state.tasks.values()
    return StateOut(
        seq=state.last_seq,
        includes_ended_tasks=ended,
        nodes=[NodeOut.of(n) for n in sorted(state.nodes.values(), key=lambda n: n.name)],
        tasks=[TaskOut.of(t) for t in tasks if ended or t.state not in ENDED_STATES],
    )


class HistoryClosed(Exception):
    """The control plane is stopping: history answers no more questions."""


class SqlLimits(NamedTuple):
    """What user SQL may use (``[database] sql_*``): its own slots, memory, time."""

    slots: int = 1
    timeout_s: float = 30.0
    memory: str = "512MB"  # per statement: DuckDB's operator_memory_limit of its cursor
    wait_s: float = 5.0  # how long a statement waits for a free slot before a 503


DEFAULT_SQL = SqlLimits()
# Closing waits this long for reader threads (their cursors interrupted first).
CLOSE_WAIT_S = 10.0
# A due history snapshot is written after this long without a commit, or this long
# after it fell due under a load that never pauses (``HistoryService._lull``).
SNAPSHOT_QUIET_S = 0.25
SNAPSHOT_MAX_DELAY_S = 10.0


class HistoryService:
    """Reader threads with cursors on the store, the history snapshot writer, commit waits."""

    def __init__(
        self,
        store: EventStore,
        *,
        snapshot_every: int = HISTORY_EVERY,
        readers: int = 3,
        sql: SqlLimits = DEFAULT_SQL,
        quiet_s: float = SNAPSHOT_QUIET_S,
        max_delay_s: float = SNAPSHOT_MAX_DELAY_S,
    ) -> None:
        self.store = store
        self.writer = HistoryWriter(snapshot_every)
        # A history snapshot that falls due waits for a lull in the log (``quiet_s`` with
        # no commit), or ``max_delay_s`` at most: see ``_lull``.
        self.quiet_s = quiet_s
        self.max_delay_s = max_delay_s
        self.sql_limits = sql
        self.closing = asyncio.Event()
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="hakuriver-history")
        self._sql_pool = ThreadPoolExecutor(sql.slots, thread_name_prefix="hakuriver-sql")
        self._sql_slots = asyncio.Semaphore(sql.slots)
        # Free SQL cursors, each with the store generation (connection) it was made on.
        self._sql_free: queue.SimpleQueue[tuple[int, Cursor]] = queue.SimpleQueue()
        # Made by the reopen hook on the new connection, for the generation it starts.
        self._sql_renewed: tuple[int, list[Cursor]] = (store.generation, [])
        self._sql_cursors: list[Cursor] = []  # those the reopen hook made (closed at close)
        self._slots = sql.slots
        self._stopping_sql: set[asyncio.Task[None]] = set()
        self._snapshots = ThreadPoolExecutor(1, thread_name_prefix="hakuriver-history-snapshots")
        self._local = threading.local()
        self._cursors: list[Cursor] = []
        self._cursors_lock = threading.Lock()
        self._cursors_generation = store.generation
        self._stop = threading.Event()
        self._commit = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Harden the DuckDB instance, follow commits, start the snapshot writer."""
        loop = asyncio.get_running_loop()
        # The SQL slots' cursors first: their memory cap cannot be set once ``harden``
        # has locked the configuration.
        for _ in range(self.sql_limits.slots):
            cursor = await loop.run_in_executor(self._sql_pool, self._new_sql_cursor)
            self._sql_free.put((self.store.generation, cursor))
        # Instance settings, not a read: outside the READ ONLY transaction of ``run``.
        await loop.run_in_executor(self._readers, lambda: harden(self._cursor()))
        # A store that opens its file again (after a failed write) gets a new instance:
        # the SQL slots' cursors are made on it before ``harden`` locks it again.
        self.store.on_reopen(self._renew_sql)
        self.store.on_reopen(harden)
        self.store.add_listener(self._on_commit)
        self._task = asyncio.create_task(self._snapshot_loop(), name="hakuriver-history-snapshots")

    async def close(self) -> None:
        """End streams and the writer, stop what the readers run, close the cursors.

        Running statements are interrupted (user SQL, a long fold's query) and the reader
        threads get ``CLOSE_WAIT_S`` to end: a stop never waits on a user's query.
        """
        self.closing.set()
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with self._cursors_lock:
            for cursor in [*self._cursors, *self._sql_cursors]:
                with contextlib.suppress(duckdb.Error):
                    cursor.interrupt()
        loop = asyncio.get_running_loop()
        pools = (self._snapshots, self._readers, self._sql_pool)
        shutdowns = [loop.run_in_executor(None, pool.shutdown) for pool in pools]
        _, late = await asyncio.wait(shutdowns, timeout=CLOSE_WAIT_S)
        if late:
            log.warning("history readers still busy after %.0fs; not waiting", CLOSE_WAIT_S)
            return  # their cursors stay open: closing one under a running thread is unsafe
        with self._cursors_lock:
            for cursor in [*self._cursors, *self._sql_cursors]:
                with contextlib.suppress(duckdb.Error):
                    cursor.close()
            self._cursors.clear()
            self._sql_cursors.clear()

    # -- reading -----------------------------------------------------------------------------

    async def run(self, work: Callable[[Cursor], T]) -> T:
        """Run ``work(cursor)`` on a reader thread, read-only (``HistoryClosed`` once closing)."""
        if self.closing.is_set():
            # Set before the reader threads are shut down, on this same loop: no work is
            # handed to a pool that refuses it.
            raise HistoryClosed
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._call, work)

    def _call(self, work: Callable[[Cursor], T]) -> T:
        with read_only(self._cursor()) as cursor:
            return work(cursor)

    def _cursor(self) -> Cursor:
        cursor: Cursor | None = getattr(self._local, "cursor", None)
        generation = self.store.generation
        if cursor is None or getattr(self._local, "generation", None) != generation:
            # The first on this thread, or the store opened its file again since: the
            # cursors of the old connection closed with it.
            cursor = self._new_cursor()
            self._local.cursor = cursor
            self._local.generation = generation
        return cursor

    @staticmethod
    def _with_views(cursor: Cursor) -> Cursor:
        ((catalog,),) = cursor.execute("SELECT current_database()").fetchall()
        # Fully qualified: the TEMP view ``events`` lives in temp.main and shadows the table.
        install_views(cursor, f'"{catalog}".main.events', temporary=True)
        return cursor

    def _new_cursor(self) -> Cursor:
        cursor = self._with_views(store_cursor(self.store))
        with self._cursors_lock:
            if self._cursors_generation != self.store.generation:
                self._cursors.clear()  # closed with the connection the store replaced
                self._cursors_generation = self.store.generation
            self._cursors.append(cursor)
        return cursor

    def log(self, cursor: Cursor) -> LogFile:
        """The log read through ``cursor`` (for the ``replay_tools`` functions)."""
        return LogFile.over(cursor, self.store.path)

    def history(self, cursor: Cursor) -> History:
        """The history questions, answered through ``cursor`` (it has the SQL views)."""
        return History(self.log(cursor), analytics=cursor)

    async def sql(self, query: SqlQuery, timeout_s: float | None = None) -> Json:
        """One read-only statement, on a SQL slot, never a reader; interrupted (and refused
        with ``HistoryError``) past ``timeout_s`` (default: the limits'); ``Unavailable``
        when no slot frees soon."""
        if self.closing.is_set():
            raise HistoryClosed
        limits = self.sql_limits
        if timeout_s is not None:
            limits = limits._replace(timeout_s=timeout_s)
        try:
            await asyncio.wait_for(self._sql_slots.acquire(), limits.wait_s)
        except TimeoutError:
            raise Unavailable(
                "sql",
                f"busy: {limits.slots} SQL statement(s) already running (the most this host"
                " runs at once, [database] sql_slots); try again shortly",
            ) from None
        made_on, cursor = self._sql_free.get_nowait()  # a slot held: a cursor is free

        def statement() -> Json:
            nonlocal made_on, cursor
            # A reopened store (after a failed write) closed the cursors of its old
            # connection: the slot then takes one of the new connection's.
            cursor = self._sql_cursor(made_on, cursor)
            made_on = self.store.generation
            return self.history(cursor).sql(query)

        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(self._sql_pool, statement)

        def release(_: object) -> None:
            # Only once the thread is done with the cursor may another statement have it.
            self._sql_free.put((made_on, cursor))
            self._sql_slots.release()

        running.add_done_callback(release)
        try:
            return await asyncio.wait_for(asyncio.shield(running), limits.timeout_s)
        except TimeoutError:
            self._interrupt(cursor, running)
            raise HistoryError(
                "sql",
                f"refused: the statement ran longer than {limits.timeout_s:g}s (the limit for"
                " SQL on this host, [database] sql_timeout) and was stopped; narrow it"
                " (a WHERE on seq or recorded_at, a LIMIT)",
            ) from None
        except asyncio.CancelledError:
            self._interrupt(cursor, running)  # the client left: stop the statement too
            raise

    def _interrupt(self, cursor: Cursor, running: asyncio.Future[Json]) -> None:
        """Interrupt the statement on ``cursor`` until its thread is done (in the background:
        an interrupt that comes before the statement started is lost, so it is repeated)."""

        async def stop() -> None:
            while not running.done():
                with contextlib.suppress(duckdb.Error):
                    cursor.interrupt()
                await asyncio.wait({running}, timeout=0.2)
            with contextlib.suppress(Exception):
                running.result()

        task = asyncio.get_running_loop().create_task(stop(), name="hakuriver-sql-interrupt")
        self._stopping_sql.add(task)
        task.add_done_callback(self._stopping_sql.discard)

    def _renew_sql(self, con: Cursor) -> None:
        """Reopen hook: the SQL slots' cursors for the connection that starts the next
        generation (the old ones closed with the old connection)."""
        fresh = [self._sql_cursor_on(self._with_views(con.cursor())) for _ in range(self._slots)]
        with self._cursors_lock:
            self._sql_renewed = (self.store.generation + 1, fresh)
            self._sql_cursors.extend(fresh)

    def _sql_cursor(self, generation: int, cursor: Cursor) -> Cursor:
        """``cursor``, or one of the current connection's when it was made on an older one."""
        if generation == self.store.generation:
            return cursor
        with self._cursors_lock:
            renewed_for, fresh = self._sql_renewed
            if renewed_for == self.store.generation and fresh:
                return fresh.pop()
        return self._new_sql_cursor()  # refused by a locked instance: the statement says so

    def _new_sql_cursor(self) -> Cursor:
        return self._sql_cursor_on(self._new_cursor())

    def _sql_cursor_on(self, cursor: Cursor) -> Cursor:
        # Per connection: what this statement's sorts and hash tables may hold (DuckDB
        # spills beyond it where it can, and fails the statement where it cannot).
        # The size is checked by the settings (a DuckDB size), so it can be quoted as is.
        cursor.execute(f"SET operator_memory_limit = '{self.sql_limits.memory}'")
        return cursor

    async def export(self, query: ExportQuery) -> AsyncIterator[bytes]:
        """One export as an Arrow IPC stream, in chunks, read batch by batch off the loop."""
        loop = asyncio.get_running_loop()
        cursor = await loop.run_in_executor(self._readers, self._new_cursor)
        try:
            # One READ ONLY transaction for the whole stream; closing the cursor ends it.
            reader = await loop.run_in_executor(
                self._readers, lambda: self.history(begin_read_only(cursor)).export(query)
            )
            sink = _Chunks()
            writer = pa.ipc.new_stream(sink, reader.schema)
            yield sink.take()
            while (batch := await loop.run_in_executor(self._readers, _next, reader)) is not None:
                writer.write_batch(batch)
                yield sink.take()
            writer.close()
            yield sink.take()
        finally:
            with self._cursors_lock:
                if cursor in self._cursors:
                    self._cursors.remove(cursor)
            cursor.close()

    # -- following the log --------------------------------------------------------------------

    def _on_commit(self, recorded: list[Recorded]) -> None:
        committed, self._commit = self._commit, asyncio.Event()
        committed.set()

    async def wait_beyond(self, seq: int, within_s: float) -> bool:
        """Wait until the log holds an event after ``seq``; False on timeout or closing."""
        if self.store.last_seq > seq:
            return True
        waits = {
            asyncio.ensure_future(self._commit.wait()),
            asyncio.ensure_future(self.closing.wait()),
        }
        try:
            await asyncio.wait(waits, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        return self.store.last_seq > seq

    # -- history snapshots -------------------------------------------------------------------

    async def _snapshot_loop(self) -> None:
        loop = asyncio.get_running_loop()
        first = True
        while not self.closing.is_set():
            if first or self.store.last_seq >= self.writer.next_mark:
                if not first:
                    await self._lull()
                    if self.closing.is_set():
                        return
                first = False
                try:
                    written = await loop.run_in_executor(self._snapshots, self._catch_up)
                    if written:
                        log.info("history snapshots written up to seq %d", written[-1])
                except Exception:
                    log.exception("writing history snapshots failed; retrying later")
                    await asyncio.sleep(30)  # backoff for a failing disk, not synchronisation
                continue
            await self.wait_beyond(self.store.last_seq, 60)

    async def _lull(self) -> None:
        """Wait for a lull in the log: ``quiet_s`` without a commit, or ``max_delay_s``
        since a snapshot fell due, whichever comes first (or the service closing).

        Catching up folds every event a second time (read back, decoded, applied): about
        a sixth of the host's Python time while an agent drains a backlog, taken from the log's
        own writer on a 2-core machine (the agent link: 68-71k events/s with it, 72-78k
        without). A burst is written first; its snapshots follow once it ends, or at
        least every ``max_delay_s`` under a load that never pauses. They are derived data
        (``state_at`` folds from an older one meanwhile, a little longer)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.max_delay_s
        while not self.closing.is_set():
            left = give_up - loop.time()
            if left <= 0:
                return
            if not await self.wait_beyond(self.store.last_seq, min(self.quiet_s, left)):
                return  # quiet (or closing)

    def _catch_up(self) -> list[int]:
        with read_only(self._cursor()) as cursor:
            return self.writer.catch_up(self.log(cursor), stop=self._stop)


def _next(reader: pa.RecordBatchReader) -> pa.RecordBatch | None:
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None


class _Chunks(io.RawIOBase):
    """A write-only file collecting what Arrow's IPC writer writes, taken chunk by chunk."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        """Everything written since the last take."""
        out = b"".join(self._parts)
        self._parts.clear()
        return out
