"""Read-only SQL over the log: documented views, canned reports and Parquet export.

User SQL is guarded twice. First DuckDB parses it: exactly one statement, of type
SELECT (which covers WITH, FROM-first, VALUES, DESCRIBE, SUMMARIZE and SHOW), whose
syntax tree names no file, network or query-running table function. Then it runs on
an in-memory connection that attached the log READ_ONLY and has since turned off
``enable_external_access`` and locked its configuration, so even a statement the
first guard missed can neither write the log nor reach a file or the network.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import duckdb

from projections.sql import nodes_sql, tasks_sql
from projections.tasks import ENDED_STATES

Columns = list[str]
Rows = list[tuple[Any, ...]]
ReportName = Literal["queue-wait", "runtime", "failures", "utilization"]
REPORTS: tuple[str, ...] = ("queue-wait", "runtime", "failures", "utilization")


class SqlRefused(ValueError):
    """A statement the read-only SQL surface will not run; the message says what and why."""


_ENDED = ", ".join(f"'{s}'" for s in sorted(ENDED_STATES))

VIEWS: dict[str, str] = {
    "events": "SELECT * FROM log.events",
    "tasks": f"""
        SELECT *,
            (placed_at_us - submitted_at_us) / 1e6 AS queue_wait_s,
            (finished_at_us - started_at_us) / 1e6 AS run_time_s,
            CASE WHEN state IN ({_ENDED}) THEN state END AS final_state
        FROM ({tasks_sql("log.events")})
    """,
    "nodes": nodes_sql("log.events"),
    "node_heartbeats": """
        SELECT seq, payload->>'$.node' AS node, recorded_at,
            epoch_us(recorded_at) AS recorded_at_us,
            (payload->>'$.cpu_percent')::DOUBLE AS cpu_percent,
            (payload->>'$.memory_percent')::DOUBLE AS memory_percent,
            (payload->>'$.memory_used_bytes')::BIGINT AS memory_used_bytes,
            (payload->>'$.memory_total_bytes')::BIGINT AS memory_total_bytes,
            coalesce(json_array_length(payload->'$.running_task_ids'), 0) AS running_tasks,
            coalesce(json_array_length(payload->'$.gpus'), 0) AS gpus
        FROM log.events WHERE kind = 'node.heartbeat'
    """,
    "placements": """
        SELECT seq, payload->>'$.task_id' AS task_id, payload->>'$.node' AS node, recorded_at,
            epoch_us(recorded_at) AS recorded_at_us,
            (payload->>'$.cores')::BIGINT AS cores,
            (payload->>'$.memory_bytes')::BIGINT AS memory_bytes,
            coalesce((payload->'$.gpu_ids')::BIGINT[], []::BIGINT[]) AS gpu_ids,
            (payload->>'$.numa_id')::BIGINT AS numa_id,
            payload->>'$.policy' AS policy, payload->>'$.reason' AS reason,
            coalesce(json_array_length(payload->'$.rejected'), 0) AS rejected_count,
            (payload->'$.rejected')::VARCHAR AS rejected
        FROM log.events WHERE kind = 'task.placed'
    """,
}

# Table functions that read files, reach the network or run SQL given as a string.
_DENIED_FUNCTIONS = frozenset(
    {"glob", "sniff_csv", "query", "query_table", "getenv", "parquet_scan", "iceberg_scan"}
)
_DENIED_PREFIXES = ("read_", "parquet_", "delta_", "iceberg_", "postgres_", "sqlite_", "mysql_")


def open_analytics(db: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with the log attached read-only, the views, and no file access."""
    path = Path(db)
    if not path.exists():
        raise FileNotFoundError(f"no event log at {path}")
    con = _attach(path)
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _attach(path: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("ATTACH ? AS log (READ_ONLY)", [str(path)])
    for name, sql in VIEWS.items():
        con.execute(f"CREATE VIEW {name} AS {sql}")
    return con


def check_readonly(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise ``SqlRefused`` unless ``sql`` is one SELECT touching no file or network."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlRefused(f"refused: the statement does not parse: {exc}") from exc
    if len(statements) != 1:
        raise SqlRefused(f"refused: give exactly one statement, not {len(statements)}")
    kind = statements[0].type.name
    if kind != "SELECT":
        raise SqlRefused(
            f"refused: {kind} statements are not allowed; only one read-only SELECT"
            " (or WITH, DESCRIBE, SUMMARIZE) over the log's views"
        )
    ((tree_json,),) = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()
    tree = json.loads(tree_json)
    if tree.get("error"):
        raise SqlRefused(
            f"refused: the statement could not be checked: {tree.get('error_message')}"
        )
    for node in _walk(tree):
        name = str(node.get("function_name", "")).lower()
        if name and (name in _DENIED_FUNCTIONS or name.startswith(_DENIED_PREFIXES)):
            raise SqlRefused(f"refused: {name}() reads files, the network or other SQL")
        if node.get("type") == "BASE_TABLE":
            table = str(node.get("table_name", ""))
            if any(c in table for c in "/\\:") or "." in table:
                raise SqlRefused(f"refused: {table!r} names a file or URL, not a view of the log")


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for child in value.values():
            yield from _walk(child)
    elif isinstance(value, list):
        for child in value:
            yield from _walk(child)


def run_readonly_sql(
    db: str | Path | duckdb.DuckDBPyConnection, sql: str, *, max_rows: int | None = None
) -> tuple[Columns, Rows]:
    """Run one read-only SELECT over the log's views; (column names, rows)."""
    con = db if isinstance(db, duckdb.DuckDBPyConnection) else open_analytics(db)
    try:
        check_readonly(con, sql)
        try:
            cursor = con.execute(sql)
        except duckdb.PermissionException as exc:
            raise SqlRefused(f"refused: {exc}") from exc
        columns = [d[0] for d in cursor.description or []]
        rows = cursor.fetchall() if max_rows is None else cursor.fetchmany(max_rows)
        return columns, rows
    finally:
        if con is not db:
            con.close()


# -- canned reports ----------------------------------------------------------------------------

_REPORT_SQL: dict[str, str] = {
    # Only submissions and placements: no need to build the whole task view.
    "queue-wait": """
        WITH s AS (
            SELECT payload->>'$.task_id' AS task_id, payload->>'$.spec.owner' AS owner,
                epoch_us(recorded_at) AS at
            FROM events WHERE kind = 'task.submitted' AND epoch_us(recorded_at) >= $since
        ),
        p AS (
            SELECT payload->>'$.task_id' AS task_id, payload->>'$.node' AS node,
                min(epoch_us(recorded_at)) AS at
            FROM events WHERE kind = 'task.placed' AND epoch_us(recorded_at) >= $since
            GROUP BY ALL
        )
        SELECT {by}, count(*) AS tasks,
            round(avg((p.at - s.at) / 1e6), 3) AS avg_wait_s,
            round(quantile_cont((p.at - s.at) / 1e6, 0.5), 3) AS p50_wait_s,
            round(quantile_cont((p.at - s.at) / 1e6, 0.95), 3) AS p95_wait_s,
            round(max((p.at - s.at) / 1e6), 3) AS max_wait_s
        FROM s JOIN p USING (task_id)
        GROUP BY ALL ORDER BY 1
    """,
    "runtime": """
        SELECT {by}, count(*) AS tasks,
            round(avg(run_time_s), 3) AS avg_run_s,
            round(quantile_cont(run_time_s, 0.5), 3) AS p50_run_s,
            round(quantile_cont(run_time_s, 0.95), 3) AS p95_run_s,
            round(max(run_time_s), 3) AS max_run_s,
            round(sum(run_time_s * cores) / 3600, 3) AS core_hours
        FROM tasks WHERE run_time_s IS NOT NULL AND submitted_at_us >= $since
        GROUP BY ALL ORDER BY 1
    """,
    "failures": """
        SELECT {by}, count(*) AS ended,
            count(*) FILTER (WHERE final_state = 'completed') AS completed,
            count(*) FILTER (WHERE final_state = 'failed') AS failed,
            count(*) FILTER (WHERE final_state = 'killed') AS killed,
            count(*) FILTER (WHERE final_state = 'killed_oom') AS killed_oom,
            count(*) FILTER (WHERE final_state = 'lost') AS lost,
            round(count(*) FILTER (WHERE final_state IN ('failed', 'killed_oom', 'lost'))
                / count(*), 4) AS failure_rate
        FROM tasks WHERE final_state IS NOT NULL AND submitted_at_us >= $since
        GROUP BY ALL ORDER BY 1
    """,
    # Core-hours held by tasks (placement to end, or to the log's last event if still held)
    # over the core-hours the nodes offered in the same window.
    "utilization": """
        WITH bounds AS (
            SELECT greatest($since, min(epoch_us(recorded_at))) AS lo,
                max(epoch_us(recorded_at)) AS hi FROM events
        ),
        held AS (
            SELECT t.node, t.owner, t.cores, cardinality(t.gpu_ids) AS gpus,
                (least(coalesce(t.finished_at_us, b.hi), b.hi)
                 - greatest(t.placed_at_us, b.lo)) / 3.6e9 AS hours
            FROM tasks t, bounds b
            WHERE t.placed_at_us IS NOT NULL AND coalesce(t.finished_at_us, b.hi) >= b.lo
        )
        SELECT {by}, count(*) AS tasks,
            round(sum(held.cores * held.hours), 3) AS core_hours,
            round(sum(held.gpus * held.hours), 3) AS gpu_hours,
            {share} AS core_share
        FROM held {join}
        GROUP BY ALL ORDER BY 1
    """,
}


def report_table(
    con: duckdb.DuckDBPyConnection,
    name: str,
    *,
    since_us: int | None = None,
    by: Literal["node", "owner"] = "node",
) -> tuple[Columns, Rows]:
    """One canned report (``REPORTS``) grouped by node or owner, from ``since_us`` on."""
    if name not in _REPORT_SQL:
        raise ValueError(f"unknown report {name!r}; choose one of {', '.join(REPORTS)}")
    if by not in ("node", "owner"):
        raise ValueError(f"by must be 'node' or 'owner', not {by!r}")
    group = {"queue-wait": "p.node" if by == "node" else "s.owner", "utilization": f"held.{by}"}
    group_by = group.get(name, by)
    share, join = "NULL", ""
    if name == "utilization" and by == "node":
        share = (
            "round(sum(held.cores * held.hours) / any_value(n.cores * (b.hi - b.lo) / 3.6e9), 4)"
        )
        join = "JOIN nodes n ON n.name = held.node, bounds b"
    sql = _REPORT_SQL[name].format(by=f"{group_by} AS {by}", share=share, join=join)
    cursor = con.execute(sql, {"since": int(since_us or 0)})
    columns = [d[0] for d in cursor.description or []]
    return columns, cursor.fetchall()


report = report_table


# -- Parquet export ----------------------------------------------------------------------------

_EXPORTS: dict[str, str] = {
    "events": "SELECT * REPLACE (id::VARCHAR AS id) FROM events"
    " WHERE epoch_us(recorded_at) >= $since ORDER BY seq",
    "tasks": "SELECT * FROM tasks WHERE submitted_at_us >= $since ORDER BY submitted_at_us",
    "nodes": "SELECT * FROM nodes ORDER BY name",
    "node_heartbeats": "SELECT * FROM node_heartbeats WHERE recorded_at_us >= $since ORDER BY seq",
    "placements": "SELECT * FROM placements WHERE recorded_at_us >= $since ORDER BY seq",
}


def export_parquet(
    db: str | Path, out_dir: str | Path, *, since_us: int | None = None
) -> dict[str, tuple[Path, int]]:
    """Write the events and each view as ``<name>.parquet``; {name: (path, rows)}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(db)
    if not path.exists():
        raise FileNotFoundError(f"no event log at {path}")
    con = _attach(path)  # no user SQL runs here; COPY needs file access
    written: dict[str, tuple[Path, int]] = {}
    try:
        for name, select in _EXPORTS.items():
            target = out / f"{name}.parquet"
            tmp = out / f".{name}.parquet.tmp"
            query = select.replace("$since", str(int(since_us or 0)))
            con.execute(f"COPY ({query}) TO '{_sql_str(tmp)}' (FORMAT parquet)")
            tmp.replace(target)
            ((rows,),) = con.execute(f"SELECT count(*) FROM ({query})").fetchall()
            written[name] = (target, int(rows))
    finally:
        con.close()
    return written


def _sql_str(path: Path) -> str:
    return str(path).replace("'", "''")
