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
from typing import Any, NamedTuple

import duckdb
import pyarrow as pa

from projections.durations import DURATIONS_SQL, JOB_DURATIONS_SQL
from projections.sql import job_ranks_sql, jobs_sql, nodes_sql, tasks_sql
from projections.tasks import ENDED_STATES

Columns = list[str]
Rows = list[tuple[Any, ...]]
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
        # Who made the request that caused each event (null: an agent's report, a loop's).
        "events": f"""
            SELECT *, payload->>'$.actor.user' AS actor, payload->>'$.actor.token' AS actor_token
            FROM {source}
        """,
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
                (payload->'$.rejected')::VARCHAR AS rejected,
                payload->>'$.actor.user' AS actor
            FROM {source} WHERE kind = 'task.placed'
        """,
        "ssh_sessions": _ssh_sessions_sql(source),
        "jobs": f"SELECT *, {JOB_DURATIONS_SQL} FROM ({jobs_sql(source)})",
        "job_ranks": job_ranks_sql(source),
    }


def _ssh_sessions_sql(source: str) -> str:
    """One row per SSH session (gateway tunnel or ``vps shell``): its opening joined to its
    end. A full join: an end whose opening is missing still shows (its own fields)."""
    return f"""
        WITH opened AS (
            SELECT payload->>'$.session_id' AS session_id, payload->>'$.task_id' AS task_id,
                payload->>'$.user' AS user, payload->>'$.via' AS via,
                payload->>'$.client_address' AS client_address, payload->>'$.node' AS node,
                payload->>'$.address' AS address, (payload->>'$.port')::BIGINT AS port,
                payload->>'$.key_fingerprint' AS key_fingerprint,
                recorded_at AS opened_at, epoch_us(recorded_at) AS opened_at_us
            FROM {source} WHERE kind = 'ssh.session_opened'
            QUALIFY row_number() OVER (PARTITION BY payload->>'$.session_id' ORDER BY seq) = 1
        ), closed AS (
            SELECT payload->>'$.session_id' AS session_id, payload->>'$.task_id' AS task_id,
                nullif(payload->>'$.user', '') AS user, payload->>'$.via' AS via,
                recorded_at AS closed_at, epoch_us(recorded_at) AS closed_at_us,
                (payload->>'$.duration_s')::DOUBLE AS duration_s,
                (payload->>'$.bytes_in')::BIGINT AS bytes_in,
                (payload->>'$.bytes_out')::BIGINT AS bytes_out,
                payload->>'$.reason' AS reason
            FROM {source} WHERE kind = 'ssh.session_closed'
            QUALIFY row_number() OVER (PARTITION BY payload->>'$.session_id' ORDER BY seq) = 1
        )
        SELECT coalesce(o.session_id, c.session_id) AS session_id,
            coalesce(o.task_id, c.task_id) AS task_id, coalesce(o.user, c.user) AS user,
            coalesce(o.via, c.via) AS via, o.client_address, o.node, o.address, o.port,
            o.key_fingerprint, o.opened_at, o.opened_at_us, c.closed_at, c.closed_at_us,
            c.duration_s, c.bytes_in, c.bytes_out, c.reason
        FROM opened o FULL JOIN closed c ON o.session_id = c.session_id
    """


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
        # Live, ``events`` shadows the store's table (qualified in ``source``) with the
        # view that adds the actor columns.
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
                    " node_heartbeats, placements, ssh_sessions, jobs, job_ranks)"
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
