"""Reading the log inside the process that writes it: reader threads that cannot write.

DuckDB lets a process open a database file once: a second ``duckdb.connect(path,
read_only=True)`` beside the writer's connection is refused ("a different
configuration than existing connections"), ``ATTACH ... (READ_ONLY)`` of the same file
too ("already attached"), and ``access_mode`` cannot change on a running database. So
readers use cursors of the writer's connection, which could write. What they run is
made read-only instead: every unit of reader work runs inside ``read_only(cursor)``, a
``READ ONLY`` transaction in which DuckDB refuses any write to the database (temporary
views and tables, per cursor, stay allowed). Each unit gets its own transaction, so it
sees every commit made before it starts and one consistent log throughout.

When the store opens the file again (DuckDB invalidated it after a failed write), the
old connection's cursors are closed with it: each reader thread notices the new
``generation`` and takes a cursor of the new connection; while there is none, reads
fail with ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from events.chain import VerifyResult, verify_chain
from events.codec import Codec, gc_paused
from events.envelope import Recorded
from events.schema import SELECT_COLUMNS
from events.write_failures import StoreUnavailable, reason_of

T = TypeVar("T")
Cursor = duckdb.DuckDBPyConnection


def begin_read_only(cursor: Cursor) -> Cursor:
    """Start a ``READ ONLY`` transaction on ``cursor``; it ends with a ROLLBACK or the cursor."""
    cursor.execute("BEGIN TRANSACTION READ ONLY")
    return cursor


@contextlib.contextmanager
def read_only(cursor: Cursor) -> Iterator[Cursor]:
    """Run the block in a ``READ ONLY`` transaction on ``cursor``; DuckDB refuses writes in it."""
    begin_read_only(cursor)
    try:
        yield cursor
    finally:
        # Nothing to keep; a cursor the store's closing already killed has nothing to end.
        with contextlib.suppress(duckdb.Error):
            cursor.execute("ROLLBACK")


class LogReader:
    """Reader threads with a cursor each on the store's connection, every read read-only."""

    def __init__(self, codec: Codec, *, threads: int = 4) -> None:
        self.codec = codec
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="hakuriver-log-reader")
        self._local = threading.local()
        self._con: duckdb.DuckDBPyConnection | None = None
        self.generation = 0

    def attach(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read through cursors of ``con`` (the writer's connection, once open or reopened)."""
        self._con = con
        self.generation += 1

    def detach(self) -> None:
        """The connection is going away: reads fail until the next ``attach``."""
        self._con = None

    def cursor(self) -> Cursor:
        """A new cursor, for a reader with threads of its own; it reads inside ``read_only``.

        The caller closes it (closing the store closes it too).
        """
        con = self._con
        if con is None:
            raise StoreUnavailable("the event log is being opened again")
        return con.cursor()

    async def close(self) -> None:
        """Let reads in flight finish (their cursors die with the connection, closed after)."""
        await asyncio.to_thread(self._pool.shutdown, True)

    async def run(self, work: Callable[[Cursor], T]) -> T:
        """``work(cursor)`` on a reader thread, in a READ ONLY transaction."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, work)

    def _call(self, work: Callable[[Cursor], T]) -> T:
        cursor = self._thread_cursor()
        try:
            with read_only(cursor):
                return work(cursor)
        except duckdb.Error as exc:
            if getattr(self._local, "generation", None) != self.generation:
                # The store opened the file again while this read ran: read again.
                with read_only(cursor := self._thread_cursor()):
                    return work(cursor)
            if isinstance(exc, duckdb.FatalException | duckdb.ConnectionException):
                # Invalidated by a failed write, and not opened again yet.
                raise StoreUnavailable(reason_of(exc), str(exc)) from exc
            raise

    def _thread_cursor(self) -> Cursor:
        cursor: Cursor | None = getattr(self._local, "cursor", None)
        if cursor is None or getattr(self._local, "generation", None) != self.generation:
            # First read on this thread, or the file was opened again since.
            generation = self.generation
            cursor = self._local.cursor = self.cursor()
            self._local.generation = generation
        return cursor

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one SQL statement; a statement that writes is refused by DuckDB."""
        return await self.run(lambda cur: cur.execute(sql, list(params)).fetchall())

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

        def fetch(cursor: Cursor) -> list[Recorded]:
            table = cursor.sql(sql, params=params).to_arrow_table()
            with gc_paused():
                return decode_table(self.codec, table)

        return await self.run(fetch)

    async def verify(self, start: int = 1, end: int | None = None) -> VerifyResult:
        """Recompute the hash chain over [start, end]; name the first seq that does not match."""
        return await self.run(lambda cur: verify_chain(cur, start, end))


def decode_table(codec: Codec, table: pa.Table) -> list[Recorded]:
    """Rows of ``SELECT_COLUMNS`` as ``Recorded`` envelopes, skipping unknown kinds and
    (noted in ``codec.undecodable``) events that do not decode."""
    # Column-wise conversion is several times faster than row tuples for long reads.
    columns = [column.to_pylist() for column in table.columns]
    decode = codec.decode
    out: list[Recorded] = []
    append = out.append
    for seq, eid, kind, stream, source, occ, rec, version, payload, digest in zip(
        *columns, strict=True
    ):
        try:
            event = decode(kind, version, payload)
        except ValueError as exc:  # msgspec's errors, and a missing upcaster
            codec.note_undecodable(seq, kind, exc)
            continue
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
