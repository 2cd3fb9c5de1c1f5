"""The history of a cluster as one object: every question the API and the CLI answer.

``History`` answers ``events``, ``task history``, ``why``, ``state --at``, ``diff``,
``audit``, ``sql``, ``report`` and ``export`` over one log, with the documents the
REST API sends (docs/history.md). The host makes one per reader thread over a cursor
of its own store (``control_plane.history``); the CLI's ``--db`` mode makes one over
the file. So both run the same code, and give the same answers and the same refusals
(``HistoryError``). The questions come checked (``replay_tools.queries``).

The host answers two things from memory instead, because it holds them folded and
consistent on its event loop: the state *now* and the nodes a waiting task is
compared with (``why``). The log gives the same, a little later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from events.envelope import Recorded
from projections.cluster import ClusterState
from replay_tools.analytics import SqlRefused, open_analytics, run_readonly_sql, table_document
from replay_tools.audit import AuditReport, audit
from replay_tools.export import export_reader
from replay_tools.feed import EventDoc, EventFilter, Page, event_at, events_page
from replay_tools.logfile import LogFile
from replay_tools.points import MAX_SEQ, Point, iso
from replay_tools.queries import ExportQuery, HistoryError, ReportQuery, SqlQuery
from replay_tools.replay import StateDiff, diff_between, state_at
from replay_tools.reports import report_table
from replay_tools.task_names import AmbiguousTask, LogTasks, UnknownTask, find_task
from replay_tools.timeline import (
    PlacementExplanation,
    UnknownJob,
    is_job,
    job_history,
    task_history,
    why,
)
from replay_tools.usage import Usage, usage_series

Json = dict[str, Any]


class FeedPage(Page, kw_only=True):
    """A page of the feed, and the last seq of the log when it was read."""

    last_seq: int


class History:
    """Every history question over one log, answered as the API answers it.

    ``analytics`` is a connection with the SQL views over the log and no file access
    (the host's cursors have them); without one, the first SQL question, report or
    export opens one on the log's file, closed with ``close``.
    """

    def __init__(self, log: LogFile, analytics: duckdb.DuckDBPyConnection | None = None) -> None:
        self.log = log
        self._analytics = analytics
        self._opened: list[duckdb.DuckDBPyConnection] = []

    def close(self) -> None:
        """Close what this object opened (not the log, nor a connection it was given)."""
        for con in self._opened:
            con.close()
        self._opened.clear()

    def analytics(self) -> duckdb.DuckDBPyConnection:
        """The connection SQL runs on: the views, and no file or network access."""
        if self._analytics is None:
            self._analytics = open_analytics(self.log.path)
            self._opened.append(self._analytics)
        return self._analytics

    # -- names (replay_tools.queries.Names, from the log) -----------------------------------

    def task_id(self, ident: str, field: str = "task_id") -> str:
        """The id of the task ``ident`` names (``replay_tools.task_names`` has the rule)."""
        try:
            return find_task(ident, LogTasks(self.log.con))
        except AmbiguousTask as exc:
            raise HistoryError(field, str(exc)) from None
        except UnknownTask as exc:
            raise HistoryError(field, str(exc), "not_found") from None

    def has_node(self, name: str) -> bool:
        """Whether a node of that name ever registered (its stream holds an event)."""
        rows = self.log.con.execute(
            "SELECT 1 FROM events WHERE stream = ? LIMIT 1", [f"node:{name}"]
        ).fetchall()
        return bool(rows)

    # -- the feed ------------------------------------------------------------------------

    def events(
        self,
        flt: EventFilter,
        *,
        after: int = 0,
        limit: int = 1000,
        tail: bool = False,
        upto: int | None = None,
    ) -> FeedPage:
        """``GET /api/events``: the events matching ``flt`` after ``after``, up to ``upto``
        (default: the end of the log), the first ``limit`` of them (or the last)."""
        last = self.log.last_seq if upto is None else upto
        page = events_page(self.log.con, flt, after=after, upto=last, limit=limit, tail=tail)
        return FeedPage(
            events=page.events, next_after=page.next_after, more=page.more, last_seq=last
        )

    def event(self, seq: int) -> EventDoc:
        """``GET /api/events/{seq}``."""
        found = event_at(self.log.con, seq) if 1 <= seq <= MAX_SEQ else None
        if found is None:
            raise HistoryError(
                "seq", f"no event at seq {seq} (the log ends at {self.log.last_seq})", "not_found"
            )
        return found

    # -- tasks ---------------------------------------------------------------------------

    def task_history(self, task_id: str) -> Json:
        """``GET /api/tasks/{id}/history``: every event of the task, timed."""
        return task_history(self.log, task_id)

    def is_job(self, ident: str) -> bool:
        """Whether ``ident`` is a job's id (``task history`` then shows the job's timeline)."""
        return is_job(self.log, ident)

    def job_history(self, job_id: str) -> Json:
        """``GET /api/tasks/{job id}/history``: the job's events and its ranks' key ones."""
        try:
            return job_history(self.log, job_id)
        except UnknownJob as exc:
            raise HistoryError("job_id", str(exc), "not_found") from None

    def task_events(self, task_id: str) -> list[Recorded]:
        """The task's own events (what ``why`` explains)."""
        return self.log.read(streams=[f"task:{task_id}"])

    def why(self, task_id: str) -> PlacementExplanation:
        """``GET /api/tasks/{id}/why``, against the nodes as the log leaves them."""
        return why(self.log, task_id)

    # -- time travel ---------------------------------------------------------------------

    def state(self, at: Point | None = None, *, ended: bool) -> ClusterState:
        """The cluster at ``at`` (default: the end of the log); ``ended``: with ended tasks."""
        point = at or Point()
        return state_at(self.log, seq=point.seq, at_us=point.at_us, ended=ended)

    def diff(self, a: Point, b: Point | None = None) -> StateDiff:
        """``GET /api/state/diff``: what changed from ``a`` to ``b`` (default: the end)."""
        return diff_between(self.log, a, b or Point(seq=self.log.last_seq))

    def usage(self, *, end_us: int, hours: float, points: int) -> Usage:
        """``GET /api/usage``: allocated and offered resources over the window, in buckets."""
        return usage_series(self.log.con, end_us=end_us, hours=hours, points=points)

    # -- audit, SQL, reports, exports ----------------------------------------------------

    def audit(
        self, upto: int | None = None, *, watermark: Path | None = None, full: bool = False
    ) -> AuditReport:
        """``GET /api/audit``: the hash chain and the invariants, up to ``upto``.

        ``watermark``/``full``: as ``replay_tools.audit.audit`` (``audit verify --db``).
        """
        return audit(self.log.con, upto=upto, watermark=watermark, full=full)

    def sql(self, query: SqlQuery) -> Json:
        """``POST /api/sql``: one read-only statement over the views."""
        try:
            result = run_readonly_sql(self.analytics(), query.text, max_rows=query.max_rows)
        except SqlRefused as exc:
            raise HistoryError("sql", str(exc)) from None
        except duckdb.Error as exc:
            raise HistoryError("sql", f"the statement failed: {exc}") from None
        return table_document(
            result.columns, result.rows, row_count=len(result.rows), truncated=result.truncated
        )

    def report(self, query: ReportQuery) -> Json:
        """``GET /api/reports/{name}``."""
        columns, rows = report_table(
            self.analytics(), query.name, since_us=query.since_us, by=query.by, owner=query.owner
        )
        return table_document(
            columns, rows, report=query.name, by=query.by, since=iso(query.since_us)
        )

    def export(self, query: ExportQuery) -> pa.RecordBatchReader:
        """``GET /api/export/{name}``: the rows as Arrow batches, read as they are taken."""
        return export_reader(self.analytics(), query.name, since_us=query.since_us)
