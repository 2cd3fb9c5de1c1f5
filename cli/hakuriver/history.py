"""History commands: ``task history``, ``why``, ``state``, ``audit``, ``sql``, ``report``
and ``export``, and ``events`` (history_events.py) (docs/history.md).

Each asks the running control plane, or, with ``--db FILE``, reads a database file
directly (the control plane stopped, or a copy of its file): the same documents either
way (history_source.py), printed as rich tables or, with ``--json``, as the API's JSON.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Literal

from cyclopts import App, Parameter

from cli.hakuriver.history_events import events_app
from cli.hakuriver.history_render import (
    audit_view,
    diff_view,
    rows_table,
    state_view,
    timeline_table,
    why_panel,
)
from cli.hakuriver.history_source import Offline, PointText, Positive, reading
from cli.hakuriver.invocation import (
    EXIT_FAILED,
    Connection,
    JsonFlag,
    connection,
    fail,
    note,
    print_json,
    reported,
    say,
    show,
)
from control_plane.errors import InvalidRequest
from events.ids import is_job_id
from replay_tools.analytics import DEFAULT_MAX_ROWS
from replay_tools.export import export_queries, write_parquet

state_app = App(name="state", help="The cluster as it was at any point of its history.")
audit_app = App(name="audit", help="Check the log: hash chain and invariants.")


def install(app: App, task_app: App) -> None:
    """Add the history commands to ``app`` (and ``task history`` to ``task_app``)."""
    app.command(events_app)
    app.command(state_app)
    app.command(audit_app)
    app.command(why)
    app.command(sql)
    app.command(report)
    app.command(export)
    task_app.command(task_history, name="history")


# -- tasks --------------------------------------------------------------------------------


@reported
def task_history(
    task_id: str,
    /,
    *,
    as_json: JsonFlag = False,
    offline: Offline | None = None,
    conn: Connection | None = None,
) -> int:
    """Every event of a task, with times and the time between them.

    Parameters
    ----------
    task_id
        The task's number, its id, or a unique prefix of its id (8+ characters); or a
        job's id (8 characters): the job's events and its ranks' key ones.
    as_json
        Print the API's document ``{"task_id", "state", "node", "events": [...]}`` (for a
        job ``{"job_id", "status", "ranks", "events": [...]}``).
    """
    with reading(offline, conn) as history:
        document = history.task_history(task_id)
    if as_json:
        print_json(document)
    else:
        show(timeline_table(document))
    return 0


@reported
def why(
    task_id: str,
    /,
    *,
    as_json: JsonFlag = False,
    offline: Offline | None = None,
    conn: Connection | None = None,
) -> int:
    """Where a task was placed and why, and why the other nodes were not chosen.

    For a task still waiting, what keeps each node from taking it now.

    Parameters
    ----------
    task_id
        The task's number, its id, or a unique prefix of its id (8+ characters).
    as_json
        Print the API's document.
    """
    if offline is None and is_job_id(task_id) and _why_job(task_id, as_json, conn):
        return 0
    with reading(offline, conn) as history:
        document = history.why(task_id)
    if as_json:
        print_json(document)
    else:
        show(why_panel(document))
    return 0


def _why_job(job_id: str, as_json: bool, conn: Connection | None) -> bool:
    """``why JOB``: the job's explanation (queued: what it waits for), then each rank's
    placement; False when no job has that id (it may be a task id's prefix)."""
    from cli.hakuriver.client import ApiError

    with connection(conn).client() as client:
        try:
            job = client.job(job_id)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
    with reading(None, conn) as history:
        ranks = [history.why(rank["task_id"]) for rank in job["ranks"]]
    if as_json:
        print_json({"job_id": job_id, "status": job["status"], "why": job["why"], "ranks": ranks})
        return True
    say(f"job {job_id} ({job['status']}, {job['num_nodes']} node(s)): {job['why'] or '-'}")
    for document in ranks:
        show(why_panel(document))
    return True


# -- time travel --------------------------------------------------------------------------


@state_app.default
@reported
def state(
    *,
    at: PointText | None = None,
    all_tasks: Annotated[bool, Parameter(name="--all")] = False,
    as_json: JsonFlag = False,
    offline: Offline | None = None,
    conn: Connection | None = None,
) -> int:
    """The nodes (online, resources, allocations) and tasks (state, node) at a point.

    Parameters
    ----------
    at
        A seq (1200), a time (2026-11-21T10:00:00Z; without an offset it is UTC) or a
        relative time (-10m, -2h, -1d). Default: now.
    all_tasks
        Every task, also those that had completed, failed, been killed or been lost by then.
    as_json
        Print the API's document ``{"seq", "nodes": [...], "tasks": [...]}``.
    """
    with reading(offline, conn) as history:
        document = history.state(at, all_tasks=all_tasks)
    if as_json:
        print_json(document)
    else:
        show(state_view(document))
    return 0


@state_app.command
@reported
def diff(
    a: PointText,
    b: PointText,
    /,
    *,
    as_json: JsonFlag = False,
    offline: Offline | None = None,
    conn: Connection | None = None,
) -> int:
    """What changed from point A to point B (seqs or times): tasks and nodes.

    Parameters
    ----------
    a
        The first point: a seq, a time or a relative time.
    b
        The second point (it may be the earlier one: then the changes read backwards).
    as_json
        Print the API's document.
    """
    with reading(offline, conn) as history:
        document = history.diff(a, b)
    if as_json:
        print_json(document)
    else:
        show(diff_view(document))
    return 0


# -- audit --------------------------------------------------------------------------------


@audit_app.command
@reported
def verify(
    *,
    as_json: JsonFlag = False,
    full: bool = False,
    watermark: Path | None = None,
    offline: Offline | None = None,
    conn: Connection | None = None,
) -> int:
    """Verify the hash chain end to end and the invariants; exit 1 at the first problem.

    Invariants: only legal task transitions, no resource ever double-allocated, every
    event id stored once. Prints each problem with its seq.

    Parameters
    ----------
    as_json
        Print the report ``{"ok", "checked", "first_bad_seq", "problems": [...]}``.
    full
        With ``--db``: re-hash every row, not only those after the verified watermark
        (which is still checked, and moved on when the audit passes).
    watermark
        With ``--db``: keep the verified watermark in this file (default: beside the log,
        ``FILE.snapshots/audit-watermark.json``); somewhere the log's writer cannot write.
    """
    if watermark is not None and (offline is None or offline.db is None):
        raise InvalidRequest("watermark", "--watermark needs --db (a log file read here)")
    with reading(offline, conn) as history:
        report_doc = history.audit(full=full, watermark=watermark)
    if as_json:
        print_json(report_doc)
    else:
        show(audit_view(report_doc))
    if report_doc.get("ok"):
        return 0
    problems = report_doc.get("problems") or [{}]
    first = problems[0]
    return fail(
        f"audit failed at seq {report_doc.get('first_bad_seq')}:"
        f" {first.get('kind', '?')}: {first.get('message', '')}",
        EXIT_FAILED,
    )


# -- SQL, reports, export -----------------------------------------------------------------


@reported
def sql(
    statement: str,
    /,
    *,
    as_json: JsonFlag = False,
    as_csv: Annotated[bool, Parameter(name="--csv")] = False,
    max_rows: Positive = DEFAULT_MAX_ROWS,
    offline: Offline | None = None,
    conn: Connection | None = None,
) -> int:
    """Run one read-only SELECT over the log's views (events, tasks, nodes, ...).

    Statements that write, attach, install or load extensions, or touch files or the
    network are refused. The views are described in docs/history.md.

    Parameters
    ----------
    statement
        One SELECT (or WITH ..., FROM ..., DESCRIBE, SUMMARIZE).
    as_json
        Print ``{"columns", "rows", "row_count", "truncated"}``.
    as_csv
        Print CSV with a header row.
    max_rows
        At most this many rows.
    """
    if as_json and as_csv:
        raise InvalidRequest("csv", "give --json or --csv, not both")
    with reading(offline, conn) as history:
        result = history.sql(statement, max_rows)
    if as_json:
        print_json(result)
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result["columns"])
        for row in result["rows"]:
            writer.writerow(["" if v is None else _csv_cell(v) for v in row])
    else:
        show(rows_table(result["columns"], result["rows"]))
    if result.get("truncated"):
        note(f"only the first {max_rows} rows (raise --max-rows for more)")
    return 0


def _csv_cell(value: object) -> object:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, list | dict) else value


@reported
def report(
    name: Literal["queue-wait", "runtime", "failures", "utilization"],
    /,
    *,
    since: PointText | None = None,
    by: Literal["node", "owner"] = "node",
    as_json: JsonFlag = False,
    offline: Offline | None = None,
    conn: Connection | None = None,
) -> int:
    """A canned report by node or owner: queue wait, run time, failures or utilization.

    Parameters
    ----------
    name
        queue-wait (submission to placement), runtime (start to end), failures (how
        tasks ended), utilization (core- and GPU-hours held).
    since
        Only tasks from this time on (ISO 8601, or relative: -1d).
    by
        Group by node or by owner.
    as_json
        Print ``{"report", "by", "since", "columns", "rows"}``.
    """
    with reading(offline, conn) as history:
        document = history.report(name, since=since, by=by)
    if as_json:
        print_json(document)
    else:
        show(rows_table(document["columns"], document["rows"]))
    return 0


@reported
def export(
    *,
    parquet: Path,
    since: PointText | None = None,
    as_json: JsonFlag = False,
    offline: Offline | None = None,
    conn: Connection | None = None,
) -> int:
    """Write the events and the views as Parquet files (pandas, polars and DuckDB read them).

    Writes events, tasks, nodes, node_heartbeats, placements, ssh_sessions, jobs and
    job_ranks .parquet into DIR, each under a temporary name first.

    Parameters
    ----------
    parquet
        The directory to write into (created if missing).
    since
        Only events (and tasks submitted) from this time on (ISO 8601, or relative: -1d).
    as_json
        Print ``{name: {"path", "rows"}}``.
    """
    folder = parquet.expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, object]] = {}
    with reading(offline, conn) as history:
        for name in export_queries():
            target = folder / f"{name}.parquet"
            rows = write_parquet(history.export(name, since), target)
            written[name] = {"path": str(target), "rows": rows}
            if not as_json:
                say(f"wrote {target} ({rows} rows)")
    if as_json:
        print_json(written)
    return 0
