"""Read-only SQL over the log: documented views, canned reports and Parquet export.

User SQL passes three guards:

1. DuckDB parses it: exactly one statement, of type SELECT (which covers WITH,
   FROM-first, VALUES, DESCRIBE, SUMMARIZE and SHOW), whose syntax tree calls only
   allowed table functions (``range``, ``unnest``, ``json_each``, the ``duckdb_*``
   catalog...) and no scalar function that reads files or runs SQL, and names no file
   or URL as a table;
2. it runs inside a ``READ ONLY`` transaction, which DuckDB refuses to let write;
3. the DuckDB instance has ``enable_external_access`` off, extension installing and
   loading off and its configuration locked (``harden``): offline the in-memory
   connection that attached the log read-only, live the control plane's own instance.

Exports (export.py) go through Arrow and pyarrow (Python writes the files), so no DuckDB
instance here ever needs file access beyond its own database.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

import duckdb
import pyarrow as pa

from projections.durations import DURATIONS_SQL
from projections.sql import nodes_sql, tasks_sql
from projections.tasks import ENDED_STATES

Columns = list[str]
Rows = list[tuple[Any, ...]]
REPORTS: tuple[str, ...] = ("queue-wait", "runtime", "failures", "utilization")
DEFAULT_MAX_ROWS = 10_000


MAX_RESULT_BYTES = 64 << 20  # what one SQL answer may carry (Arrow bytes, before JSON)


class SqlRefused(ValueError):
    """A statement the read-only SQL surface will not run; the message says what and why."""


_ENDED = ", ".join(f"'{s}'" for s in sorted(ENDED_STATES))


# shlex.join([command, *args]) in SQL: a word of only safe characters stays bare, the empty
# word is '', any other is single-quoted with each ' written '"'"' (shlex.quote's rules).
_COMMAND_LINE = """array_to_string(list_transform(list_prepend(command, args), lambda w:
    CASE WHEN w = '' THEN repeat(chr(39), 2)
        WHEN regexp_full_match(w, '[A-Za-z0-9_@%+=:,./-]+') THEN w
        ELSE chr(39) || replace(w, chr(39), chr(39) || '"' || chr(39) || '"' || chr(39)) || chr(39)
    END), ' ')"""


def view_sql(source: str) -> dict[str, str]:
    """The documented views (docs/history.md) over ``source``, the events table."""
    return {
        "events": f"SELECT * FROM {source}",
        "tasks": f"""
            SELECT *,
                {DURATIONS_SQL},
                CASE WHEN state IN ({_ENDED}) THEN state END AS final_state,
                {_COMMAND_LINE} AS command_line
            FROM ({tasks_sql(source)})
        """,
        "nodes": nodes_sql(source),
        "node_heartbeats": f"""
            SELECT seq, payload->>'$.node' AS node, recorded_at,
                epoch_us(recorded_at) AS recorded_at_us,
                (payload->>'$.cpu_percent')::DOUBLE AS cpu_percent,
                (payload->>'$.memory_percent')::DOUBLE AS memory_percent,
                (payload->>'$.memory_used_bytes')::BIGINT AS memory_used_bytes,
                (payload->>'$.memory_total_bytes')::BIGINT AS memory_total_bytes,
                coalesce(json_array_length(payload->'$.running_task_ids'), 0) AS running_tasks,
                coalesce(json_array_length(payload->'$.gpus'), 0) AS gpus
            FROM {source} WHERE kind = 'node.heartbeat'
        """,
        "placements": f"""
            SELECT seq, payload->>'$.task_id' AS task_id, payload->>'$.node' AS node,
                recorded_at, epoch_us(recorded_at) AS recorded_at_us,
                (payload->>'$.cores')::BIGINT AS cores,
                (payload->>'$.memory_bytes')::BIGINT AS memory_bytes,
                coalesce((payload->'$.gpu_ids')::BIGINT[], []::BIGINT[]) AS gpu_ids,
                (payload->>'$.numa_id')::BIGINT AS numa_id,
                payload->>'$.policy' AS policy, payload->>'$.reason' AS reason,
                coalesce(json_array_length(payload->'$.rejected'), 0) AS rejected_count,
                (payload->'$.rejected')::VARCHAR AS rejected
            FROM {source} WHERE kind = 'task.placed'
        """,
    }


# Table functions user SQL may call: generators and the catalog. Everything else
# (read_*, glob, query, parquet_*, checkpoint, arrow_scan, ...) may touch files, run
# SQL given as a string, change settings or reach into process memory.
_ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "generate_series",
        "unnest",
        "repeat",
        "repeat_row",
        "json_each",
        "json_tree",
        "summary",
        "histogram",
        "histogram_values",
        "pg_timezone_names",
        "icu_calendar_names",
        "pragma_table_info",
        "pragma_show",
        "pragma_version",
        "pragma_database_size",
        "pragma_storage_info",
    }
)
_ALLOWED_TABLE_PREFIXES = ("duckdb_",)
_DENIED_CATALOG = frozenset({"duckdb_secrets", "duckdb_logs", "duckdb_logs_parsed"})
# Scalar functions that read files or the environment, or run SQL given as a string.
_DENIED_FUNCTIONS = frozenset(
    {
        "glob",
        "sniff_csv",
        "query",
        "query_table",
        "getenv",
        "parquet_scan",
        "iceberg_scan",
        "json_execute_serialized_sql",
        "checkpoint",
        "force_checkpoint",
    }
)
_DENIED_PREFIXES = ("read_", "parquet_", "delta_", "iceberg_", "postgres_", "sqlite_", "mysql_")

# Instance-wide settings of a DuckDB that runs user SQL, set once, then locked.
HARDENING = (
    "SET TimeZone = 'UTC'",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET python_enable_replacements = false",
    "SET enable_external_access = false",
    "SET lock_configuration = true",
)


def harden(con: duckdb.DuckDBPyConnection) -> None:
    """Turn off file and network access and extension loading for the whole instance, locked.

    Instance-wide: on the control plane this covers the store's own connection too,
    which needs none of it (snapshots and exports are written by Python).
    """
    for statement in HARDENING:
        con.execute(statement)


def install_views(con: duckdb.DuckDBPyConnection, source: str, *, temporary: bool) -> None:
    """Create the documented views over ``source`` on ``con`` (TEMP: this cursor only)."""
    kind = "TEMP VIEW" if temporary else "VIEW"
    for name, sql in view_sql(source).items():
        if name == "events" and source.endswith(".events") and temporary:
            continue  # live, ``events`` is the store's table itself
        con.execute(f"CREATE OR REPLACE {kind} {name} AS {sql}")


def open_analytics(db: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with the log attached read-only, the views, and no file access."""
    con = _attach(db)
    harden(con)
    return con


def _attach(db: str | Path) -> duckdb.DuckDBPyConnection:
    path = Path(db)
    if not path.exists():
        raise FileNotFoundError(f"no event log at {path}")
    con = duckdb.connect(":memory:")
    con.execute("ATTACH ? AS log (READ_ONLY)", [str(path)])
    install_views(con, "log.events", temporary=False)
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
    ((tree_json,),) = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchall()
    tree = json.loads(tree_json)
    if tree.get("error"):
        raise SqlRefused(
            f"refused: the statement could not be checked: {tree.get('error_message')}"
        )
    for node in _walk(tree):
        if node.get("type") == "TABLE_FUNCTION":
            function = node.get("function") or {}
            name = str(function.get("function_name", "")).lower()
            if name in _DENIED_CATALOG or not (
                name in _ALLOWED_TABLE_FUNCTIONS or name.startswith(_ALLOWED_TABLE_PREFIXES)
            ):
                raise SqlRefused(
                    f"refused: {name}() is not allowed: table functions may read files, the"
                    " network or other SQL; query the views (events, tasks, nodes,"
                    " node_heartbeats, placements)"
                )
            continue
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


class SqlResult(NamedTuple):
    """The outcome of ``run_readonly_sql``: column names, rows, and whether rows were cut."""

    columns: Columns
    rows: Rows
    truncated: bool = False


def run_readonly_sql(
    db: str | Path | duckdb.DuckDBPyConnection, sql: str, *, max_rows: int | None = None
) -> SqlResult:
    """Run one read-only SELECT over the log's views, in a READ ONLY transaction."""
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError:
        raise SqlRefused("refused: the statement is not valid UTF-8 text") from None
    con = db if isinstance(db, duckdb.DuckDBPyConnection) else open_analytics(db)
    try:
        check_readonly(con, sql)
        con.execute("BEGIN TRANSACTION READ ONLY")
        try:
            # Through Arrow: it converts zoned times without pytz, and reads only what is kept.
            reader = con.sql(sql).to_arrow_reader(min(max_rows or 65_536, 65_536) + 1)
            columns = list(reader.schema.names)
            rows: Rows = []
            truncated = False
            size = 0
            try:
                for batch in reader:
                    size += batch.nbytes
                    if size > MAX_RESULT_BYTES:
                        raise SqlRefused(
                            f"refused: the result is larger than {MAX_RESULT_BYTES >> 20} MiB;"
                            " aggregate it, add a LIMIT, or use `hakuriver export --parquet`"
                        )
                    values = [column.to_pylist() for column in batch.columns]
                    rows.extend(zip(*values, strict=True))
                    if max_rows is not None and len(rows) > max_rows:
                        rows, truncated = rows[:max_rows], True
                        break
            finally:
                reader.close()  # the connection takes no statement while a result is open
        except (duckdb.PermissionException, duckdb.TransactionException) as exc:
            raise SqlRefused(f"refused: {exc}") from exc
        except (OverflowError, pa.ArrowException) as exc:
            # e.g. an infinite or year-10000 timestamp, or nesting Arrow cannot carry.
            raise SqlRefused(
                f"refused: the result holds a value that cannot be returned ({exc});"
                " cast it to VARCHAR in the query"
            ) from exc
        finally:
            con.execute("ROLLBACK")
        return SqlResult(columns, rows, truncated)
    finally:
        if con is not db:
            con.close()


def jsonable(value: Any) -> Any:
    """A DuckDB value as JSON: bytes as hex, times as ISO 8601, decimals as floats."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, datetime.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def table_document(columns: Columns, rows: Rows, **extra: Any) -> dict[str, Any]:
    """Column names and rows as one JSON-ready document (the API's answer to SQL and reports)."""
    return {**extra, "columns": columns, "rows": [[jsonable(v) for v in row] for row in rows]}


# -- canned reports ----------------------------------------------------------------------------

_REPORT_SQL: dict[str, str] = {
    # Only submissions and placements: no need to build the whole task view. One row per
    # task with the view's own columns and definition (projections/durations.py).
    "queue-wait": """
        WITH s AS (
            SELECT payload->>'$.task_id' AS task_id, payload->>'$.spec.owner' AS owner,
                epoch_us(recorded_at) AS submitted_at_us
            FROM events WHERE kind = 'task.submitted' AND epoch_us(recorded_at) >= $since
        ),
        p AS (
            SELECT payload->>'$.task_id' AS task_id, arg_max(payload->>'$.node', seq) AS node,
                max(epoch_us(recorded_at)) AS placed_at_us
            FROM events WHERE kind = 'task.placed' AND epoch_us(recorded_at) >= $since
            GROUP BY 1
        ),
        w AS (
            SELECT s.owner, p.node, (placed_at_us - submitted_at_us) / 1e6 AS queue_wait_s
            FROM s JOIN p USING (task_id)
        )
        SELECT {by}, count(*) AS tasks,
            round(avg(queue_wait_s), 3) AS avg_wait_s,
            round(quantile_cont(queue_wait_s, 0.5), 3) AS p50_wait_s,
            round(quantile_cont(queue_wait_s, 0.95), 3) AS p95_wait_s,
            round(max(queue_wait_s), 3) AS max_wait_s
        FROM w
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
    group = {"queue-wait": f"w.{by}", "utilization": f"held.{by}"}
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
