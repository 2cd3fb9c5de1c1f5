"""The log as history reads it: a DuckDB connection to the events table, and its snapshots.

Offline, ``LogFile(path)`` opens the file read-only (DuckDB lets one process hold a
file open for writing, so the host must be stopped, or the file a copy). On a running
control plane, ``LogFile.over(cursor, path)`` reads through a cursor of the store's own
connection (the only way in while the host holds the file).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import duckdb

from events.chain import hash_at, hashes_at
from events.codec import Codec, gc_paused
from events.envelope import Recorded
from events.snapshot_files import CLUSTER as CLUSTER_SNAPSHOT
from events.snapshot_files import SnapshotFiles
from events.store import SELECT_COLUMNS, EventStore, decode_table
from events.types import SshSessionClosed, SshSessionOpened

__all__ = ["CLUSTER_SNAPSHOT", "SESSION_KINDS", "LogFile", "as_log", "store_cursor"]

# The events of an SSH session (a gateway tunnel or a ``vps shell``) to a task.
SESSION_KINDS: tuple[str, ...] = tuple(
    str(kind.__struct_config__.tag) for kind in (SshSessionOpened, SshSessionClosed)
)


class LogFile:
    """A database file opened read-only (or a borrowed connection), with its snapshots."""

    def __init__(self, path: str | Path, con: duckdb.DuckDBPyConnection | None = None) -> None:
        self.path = Path(path)
        self._owned = con is None
        if con is None:
            if not self.path.exists():
                raise FileNotFoundError(f"no event log at {self.path}")
            con = duckdb.connect(str(self.path), read_only=True)
        self.con = con
        self.codec = Codec()
        self.snapshots = SnapshotFiles(self.path)
        self.snapshot_dir = self.snapshots.folder

    @classmethod
    def over(cls, con: duckdb.DuckDBPyConnection, path: str | Path) -> LogFile:
        """The log read through a connection someone else owns (and closes)."""
        return cls(path, con)

    def close(self) -> None:
        """Close the connection, if this object opened it."""
        if self._owned:
            self.con.close()

    def __enter__(self) -> LogFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def last_seq(self) -> int:
        """The highest seq stored (0 for an empty log)."""
        return int(self.con.execute("SELECT coalesce(max(seq), 0) FROM events").fetchall()[0][0])

    def seq_at(self, at_us: int) -> int:
        """The last seq recorded at or before ``at_us`` (0 if none)."""
        rows = self.con.execute(
            "SELECT coalesce(max(seq), 0) FROM events WHERE recorded_at <= make_timestamptz(?)",
            [at_us],
        ).fetchall()
        return int(rows[0][0])

    def read(
        self,
        *,
        after: int = 0,
        until: int | None = None,
        streams: Sequence[str] | None = None,
        sessions_of: str | None = None,
    ) -> list[Recorded]:
        """Decoded events after seq ``after`` up to ``until``, optionally of some streams only.

        ``sessions_of``: also (or, without ``streams``, only) the ``ssh.session_*`` events
        of that task, which live in their session's stream ``ssh:<session>``.
        """
        where: list[str] = ["seq > ?"]
        params: list[object] = [after]
        if until is not None:
            where.append("seq <= ?")
            params.append(until)
        if sessions_of is None:
            if streams is not None:
                where.append("stream IN (SELECT unnest(?::VARCHAR[]))")
                params.append(list(streams))
        else:
            # list_contains, not IN (SELECT unnest(...)): inside an OR, DuckDB turns that
            # subquery into a join over the whole table (15 times slower on 500k events).
            wanted: list[str] = []
            values: list[object] = []
            if streams is not None:
                wanted.append("list_contains(?::VARCHAR[], stream)")
                values.append(list(streams))
            wanted.append(
                "(starts_with(stream, 'ssh:') AND list_contains(?::VARCHAR[], kind)"
                " AND payload->>'$.task_id' = ?)"
            )
            values += [list(SESSION_KINDS), sessions_of]
            where.append("(" + " OR ".join(wanted) + ")")
            params += values
        sql = f"SELECT {SELECT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq"
        table = self.con.sql(sql, params=params).to_arrow_table()
        with gc_paused():
            return decode_table(self.codec, table)

    def hash_at(self, seq: int) -> bytes | None:
        """The stored chain hash of ``seq``."""
        return hash_at(self.con, seq)

    def hashes_at(self, seqs: Iterable[int]) -> dict[int, bytes]:
        """The stored chain hashes of several seqs at once (those that exist)."""
        return hashes_at(self.con, seqs)

    def snapshot_files(self, name: str, at_or_before: int | None = None) -> list[tuple[int, Path]]:
        """(seq, path) of the snapshot files called ``name``, newest first."""
        return self.snapshots.listing(name, at_or_before)

    def anchored(self, seq: int, path: Path) -> bytes | None:
        """The data of a snapshot file if it belongs to this log (its hash at ``seq``)."""
        return self.snapshots.anchored(seq, path, self.hash_at)

    def latest_snapshot(self, at_or_before: int) -> tuple[int, bytes] | None:
        """The control plane's newest ``cluster`` snapshot at or before a seq, as (seq, data)."""
        return self.snapshots.latest(CLUSTER_SNAPSHOT, at_or_before, self.hash_at)


def as_log(source: str | Path | LogFile) -> tuple[LogFile, bool]:
    """The log to read, and whether the caller opened it (and so must close it)."""
    if isinstance(source, LogFile):
        return source, False
    return LogFile(source), True


def store_cursor(store: EventStore) -> duckdb.DuckDBPyConnection:
    """A new cursor on a running store's connection (its only way in while the host runs).

    The caller reads through it inside ``events.log_reader.read_only`` (a READ ONLY
    transaction: DuckDB refuses writes) and closes it (closing the store closes it too).
    """
    return store.reader_cursor()
