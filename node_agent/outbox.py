"""The agent's durable outbox: events the control plane has not acknowledged yet.

A SQLite file in WAL mode with ``synchronous=FULL``: ``put`` returns only after its
transaction is on disk, so an event the agent has put survives an agent crash or a
power cut and is sent again after reconnecting. The control plane's store is
idempotent by event id, so sending twice is harmless; acknowledged events are deleted.

Two writes skip the fsync (``synchronous=NORMAL`` for their transaction: in WAL mode the
commit is in the file, so an agent crash keeps it, and only a crash of the machine can
undo it; the next fsync'ed commit makes it durable too): ``put(durable=False)``, which the
agent uses for events another record on disk makes again until the host acknowledges
them (a task's end: node_agent/agent.py), and every ``ack``, whose loss only sends
acknowledged events again, which the idempotent host ignores (docs/decisions.md, issue 19).

``Outbox`` is blocking. Asyncio code uses ``AsyncOutbox``, which runs every call on
one dedicated thread: the loop never blocks on SQLite, and calls take effect in the
order they were made (``to_thread`` on the shared pool could reorder two puts).

A full disk (the state directory's file system): ``AsyncOutbox.put`` does not give up on
an event, a task's final report above all. It tries again, pausing longer each time (up
to ``MAX_RETRY_S``), until SQLite can write it, and the outage is logged as it starts and
as it ends. A delete that fails (``ack``) is kept and done with the next one: until then
the events may be sent again, which the host's idempotent store ignores.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from msgspec import Struct

from events.codec import decode_new_event, encode_json
from events.envelope import NewEvent
from events.link import MAX_BATCH_BYTES

T = TypeVar("T")

log = logging.getLogger("hakuriver.agent.outbox")

# Pauses between attempts to write to a full disk: doubling from the first to the last.
FIRST_RETRY_S = 0.05
MAX_RETRY_S = 5.0
# What SQLite raises when its file system cannot take a write (full, read-only, failing).
STORAGE_ERRORS = (sqlite3.OperationalError, OSError)
# Of those, the faults that pass (space, a busy or read-only file system, I/O): retried.
# Anything else (a dropped table, a corrupt file) would never pass: raised, not retried.
_PASSING_SQLITE = {5, 6, 8, 10, 13, 14}  # BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN
_PASSING_ERRNO = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


def storage_fault(exc: BaseException) -> bool:
    """Whether a write failed for a reason that can pass (worth retrying)."""
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is None or code & 0xFF in _PASSING_SQLITE
    return isinstance(exc, OSError) and exc.errno in _PASSING_ERRNO


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    pos     INTEGER PRIMARY KEY AUTOINCREMENT,
    id      TEXT    NOT NULL UNIQUE,
    payload BLOB    NOT NULL
)
"""


class PendingBatch(Struct, frozen=True, kw_only=True):
    """Unacknowledged events ready for the wire: their ids and one JSON array of them."""

    ids: tuple[str, ...]
    body: bytes  # a JSON array of NewEvent, readable by events.codec.decode_new_events
    last_pos: int = 0  # the outbox position of the last event (0 when empty)


class Outbox:
    """Durable FIFO of ``NewEvent``s awaiting the host's acknowledgement (blocking calls)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection, shared by whichever thread calls; the lock serialises them.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            (count,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        # How many events it holds, kept with each write: the heartbeat reports it (the
        # host's metrics) without a query, so a busy or failing disk never delays one.
        self.depth = int(count)

    def put(self, events: Sequence[NewEvent], *, durable: bool = True) -> None:
        """Store events, in order; an id already pending is left as it is. ``durable``:
        on disk when this returns (else: kept by an agent crash, not a machine's)."""
        if not events:
            return
        rows = [(event.id, encode_json(event)) for event in events]
        sql = "INSERT OR IGNORE INTO outbox (id, payload) VALUES (?, ?)"
        self._write(sql, rows, 1, durable=durable)

    def _write(
        self, sql: str, rows: Sequence[tuple[str | bytes, ...]], sign: int, *, durable: bool
    ) -> None:
        """One transaction of ``sql`` for each row: all of them, or (on any error) none;
        the rows it changed move ``depth`` by ``sign`` each; fsync'ed when ``durable``."""
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    changed = self._db.executemany(sql, rows).rowcount
                    self._db.execute("COMMIT")
                    self.depth += sign * changed
                except BaseException:
                    # A full disk can fail the COMMIT too; SQLite may have rolled back.
                    if self._db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._db.execute("ROLLBACK")
                    raise
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    def pending(self, limit: int = 1000) -> list[NewEvent]:
        """The oldest unacknowledged events, at most ``limit``, in the order they were put."""
        with self._lock:
            rows = self._db.execute(
                "SELECT payload FROM outbox ORDER BY pos LIMIT ?", (limit,)
            ).fetchall()
        return [decode_new_event(payload) for (payload,) in rows]

    def pending_batch(self, limit: int = 1000, after_pos: int = 0) -> PendingBatch:
        """Like ``pending``, but as wire-ready JSON; only events put after ``after_pos``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, payload, pos FROM outbox WHERE pos > ? ORDER BY pos LIMIT ?",
                (after_pos, limit),
            ).fetchall()
        # The host refuses a batch past MAX_BATCH_BYTES: stop before it (one event at least).
        size = 0
        for count, row in enumerate(rows):
            size += len(row[1]) + 1
            if count and size > MAX_BATCH_BYTES:
                rows = rows[:count]
                break
        return PendingBatch(
            ids=tuple(row[0] for row in rows),
            body=b"[" + b",".join(row[1] for row in rows) + b"]",
            last_pos=rows[-1][2] if rows else 0,
        )

    def ack(self, ids: Iterable[str]) -> None:
        """Delete acknowledged events; unknown ids are ignored. Not fsync'ed: a delete a
        machine's crash undoes only sends them again (the host ignores a known id)."""
        rows = [(event_id,) for event_id in ids]
        if rows:
            self._write("DELETE FROM outbox WHERE id = ?", rows, -1, durable=False)

    def count(self) -> int:
        """How many events are waiting for an acknowledgement."""
        with self._lock:
            (count,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        return int(count)

    def close(self) -> None:
        """Close the database file."""
        with self._lock:
            self._db.close()


class AsyncOutbox:
    """The outbox for asyncio code: each call runs on one dedicated thread, in call order."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        # Puts are written in the order they were asked for, retries included: a put that
        # waits out a full disk holds the later ones back (a task's end, put unfsynced,
        # overtook its start still retrying, and the host recorded the start after the end).
        self._put_order = asyncio.Lock()
        # The outage of the state directory's storage under way, if any (its reason).
        self.failing: str | None = None
        self.failed_writes = 0
        # Acknowledged ids whose delete failed: deleted with the next ack.
        self._to_delete: list[str] = []

    @classmethod
    async def open(cls, path: Path | str) -> AsyncOutbox:
        """Open (or create) the outbox file without blocking the loop."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        try:
            outbox = await asyncio.get_running_loop().run_in_executor(pool, Outbox, path)
        finally:
            pool.shutdown(wait=False)
        return cls(outbox)

    async def _call(self, function: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function)

    async def put(self, events: Sequence[NewEvent], *, durable: bool = True) -> None:
        """Store events (on disk with ``durable``); returns once they are written, however
        long that takes."""
        delay = FIRST_RETRY_S
        async with self._put_order:
            while True:
                try:
                    await self._call(lambda: self.outbox.put(events, durable=durable))
                except STORAGE_ERRORS as exc:
                    if not storage_fault(exc):
                        raise
                    self._failed(exc, f"{len(events)} event(s) wait to be written")
                    await asyncio.sleep(delay * (0.5 + random.random()))  # then again
                    delay = min(delay * 2, MAX_RETRY_S)
                    continue
                self._recovered()
                return

    def _failed(self, exc: BaseException, what: str) -> None:
        self.failed_writes += 1
        if self.failing is None:
            self.failing = str(exc)
            log.warning(
                "the outbox %s cannot be written (%s): %s; retrying until it can",
                self.outbox.path,
                exc,
                what,
            )

    def _recovered(self) -> None:
        if self.failing is not None:
            log.warning(
                "the outbox %s is written again (after %d failed writes)",
                self.outbox.path,
                self.failed_writes,
            )
            self.failing = None
            self.failed_writes = 0

    async def pending(self, limit: int = 1000) -> list[NewEvent]:
        """The oldest unacknowledged events, in the order they were put."""
        return await self._call(lambda: self.outbox.pending(limit))

    async def pending_batch(self, limit: int = 1000, after_pos: int = 0) -> PendingBatch:
        """The oldest unacknowledged events as one wire-ready JSON array."""
        return await self._call(lambda: self.outbox.pending_batch(limit, after_pos))

    async def ack(self, ids: Iterable[str]) -> None:
        """Delete acknowledged events (with those whose delete failed before)."""
        wanted = [*self._to_delete, *ids]
        try:
            await self._call(lambda: self.outbox.ack(wanted))
        except STORAGE_ERRORS as exc:
            if not storage_fault(exc):
                raise
            # They stay a while longer; a resend of them is harmless (idempotent host).
            self._to_delete = wanted
            self._failed(exc, f"{len(wanted)} acknowledged event(s) wait to be deleted")
            return
        self._to_delete = []
        self._recovered()

    async def count(self) -> int:
        """How many events are waiting for an acknowledgement."""
        return await self._call(self.outbox.count)

    async def close(self) -> None:
        """Close the file after every call already made has finished."""
        await self._call(self.outbox.close)
        self._thread.shutdown(wait=True)

    async def __aenter__(self) -> AsyncOutbox:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
