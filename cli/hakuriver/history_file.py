"""History read straight from an event log file (``--db``): the documents the API gives,
answered here by ``History`` over the file opened read-only. A module of its own so that
DuckDB and the replay tools load only for ``--db``, not for every command."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from cli.hakuriver.history_source import Json, plain
from control_plane.history import state_document
from replay_tools.audit_watermark import default_path
from replay_tools.history import History
from replay_tools.logfile import LogFile
from replay_tools.queries import (
    EventQuery,
    HistoryError,
    diff_points,
    event_filter,
    export_query,
    page_size,
    point_of,
    report_query,
    sql_query,
)

if TYPE_CHECKING:
    import pyarrow as pa


class FileSource:
    """The same documents, answered here by ``History`` over a file opened read-only."""

    def __init__(self, db: Path) -> None:
        self.db = db.expanduser()
        if not self.db.is_file():
            raise HistoryError("db", f"no event log at {self.db}")
        try:
            self.log = LogFile(self.db)
        except duckdb.IOException as exc:
            raise HistoryError(
                "db",
                f"cannot open {self.db}: {exc}. A running control plane holds its file:"
                " drop --db to ask it, or give a copy of the file",
            ) from None
        self.history = History(self.log)

    def close(self) -> None:
        """Close the file."""
        self.history.close()
        self.log.close()

    def events(self, query: EventQuery, *, after: int, limit: int, tail: bool) -> Json:
        """As ``GET /api/events``."""
        flt = event_filter(query, self.history)
        size = page_size(limit, tail=tail)
        return plain(self.history.events(flt, after=after, limit=size, tail=tail))

    def follow(self, query: EventQuery, *, after: int) -> Iterator[Json]:
        """Following needs a running control plane."""
        raise HistoryError("follow", "--follow needs the running control plane: drop --db")

    def event(self, seq: int) -> Json:
        """As ``GET /api/events/{seq}``."""
        return plain(self.history.event(seq))

    def task_history(self, ident: str) -> Json:
        """As ``GET /api/tasks/{id}/history`` (a job's id: the job's timeline)."""
        if self.history.is_job(ident):
            return plain(self.history.job_history(ident))
        return plain(self.history.task_history(self.history.task_id(ident)))

    def why(self, ident: str) -> Json:
        """As ``GET /api/tasks/{id}/why``."""
        return plain(self.history.why(self.history.task_id(ident)))

    def state(self, at: str | None, *, all_tasks: bool) -> Json:
        """As ``GET /api/state``."""
        state = self.history.state(point_of("at", at), ended=all_tasks)
        return plain(state_document(state, ended=all_tasks))

    def diff(self, a: str, b: str) -> Json:
        """As ``GET /api/state/diff``."""
        return plain(self.history.diff(*diff_points(a, b)))

    def audit(self, *, full: bool = False, watermark: Path | None = None) -> Json:
        """As ``GET /api/audit``, from the verified watermark (by default beside the log)."""
        mark = watermark.expanduser() if watermark is not None else default_path(self.db)
        return plain(self.history.audit(watermark=mark, full=full))

    def sql(self, sql: str, max_rows: int) -> Json:
        """As ``POST /api/sql``."""
        return plain(self.history.sql(sql_query(sql, max_rows)))

    def report(self, name: str, *, since: str | None, by: str) -> Json:
        """As ``GET /api/reports/{name}``."""
        return plain(self.history.report(report_query(name, by, since)))

    def export(self, name: str, since: str | None) -> pa.RecordBatchReader:
        """The export's batches, read from the file (open until the source is closed)."""
        return self.history.export(export_query(name, since))
