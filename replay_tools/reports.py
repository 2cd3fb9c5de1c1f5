"""Canned reports over the documented views: queue wait, run time, failures, utilisation.

``hakuriver report NAME [--since] [--by node|owner]`` and ``GET /api/reports/NAME``
(docs/history.md). Each is one SELECT over the ``tasks`` and ``nodes`` views
(analytics.py ``view_sql``), grouped by node or owner, from a time on.
"""

from __future__ import annotations

from typing import Literal

import duckdb

from replay_tools.analytics import Columns, Rows

REPORTS: tuple[str, ...] = ("queue-wait", "runtime", "failures", "utilization")

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
            WHERE $owner::VARCHAR IS NULL OR s.owner = $owner::VARCHAR
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
            AND ($owner::VARCHAR IS NULL OR owner = $owner::VARCHAR)
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
            AND ($owner::VARCHAR IS NULL OR owner = $owner::VARCHAR)
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
                AND ($owner::VARCHAR IS NULL OR t.owner = $owner::VARCHAR)
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
    owner: str | None = None,
) -> tuple[Columns, Rows]:
    """One canned report (``REPORTS``) grouped by node or owner, from ``since_us`` on
    (only ``owner``'s tasks when given: what a user who is not an admin sees)."""
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
    cursor = con.execute(sql, {"since": int(since_us or 0), "owner": owner})
    columns = [d[0] for d in cursor.description or []]
    return columns, cursor.fetchall()
