"""The task and node views as DuckDB SQL over the ``events`` table.

Any relation with the table's columns works too, such as the log up to some seq.

They serve analytics and cross-check the Python fold: on any valid history
(only legal transitions) ``TASKS_SQL`` and ``NODES_SQL`` give the same rows
as ``ClusterState``. They do not replicate the fold's handling of illegal
events; ``hakuriver audit`` reports those instead. Each statement is a plain
SELECT, so it can back a ``CREATE VIEW``.
"""

from __future__ import annotations

from projections.tasks import HOLDING_STATES


def state_of_kind(guard: bool = False) -> str:
    """SQL: the task state an event of column ``kind`` leads to (NULL: no change).

    ``task.finished`` and ``task.reconnected`` take it from the payload; ``guard`` wraps
    that read in ``try()`` for logs whose payloads may not be JSON (the audit's case).
    """
    from_payload = "try(payload->>'$.state')" if guard else "payload->>'$.state'"
    return f"""
    CASE kind
        WHEN 'task.submitted' THEN 'pending'
        WHEN 'task.placed' THEN 'assigning'
        WHEN 'task.started' THEN 'running'
        WHEN 'task.paused' THEN 'paused'
        WHEN 'task.resumed' THEN 'running'
        WHEN 'task.lost' THEN 'lost'
        WHEN 'task.unreachable' THEN 'unknown'
        WHEN 'task.reconnected' THEN {from_payload}
        WHEN 'task.finished' THEN {from_payload}
    END
"""


# Kinds that change a task's state, as an SQL list.
STATE_KINDS = ", ".join(
    f"'{k}'"
    for k in (
        "task.submitted",
        "task.placed",
        "task.started",
        "task.paused",
        "task.resumed",
        "task.lost",
        "task.unreachable",
        "task.reconnected",
        "task.finished",
    )
)
_STATE_OF_KIND = state_of_kind()
_HOLDING_SQL = ", ".join(f"'{s}'" for s in sorted(HOLDING_STATES))


def tasks_sql(source: str = "events") -> str:
    """The task view over ``source`` (the events table, or any relation with its columns)."""
    return _TASKS_TEMPLATE.replace("{source}", source)


def nodes_sql(source: str = "events") -> str:
    """The node view over ``source`` (the events table, or any relation with its columns)."""
    return (
        _NODES_TEMPLATE.replace("{source}", source)
        .replace("{tasks}", tasks_sql(source))
        .replace("{holding}", _HOLDING_SQL)
    )


# A task's number: the one its task.submitted carries, or for one recorded before
# numbers existed (0) its place among the submissions, as the fold numbers it. (The two
# agree because the host numbers each submission one past the highest so far.)
_NUMBER = """
    CASE WHEN kind = 'task.submitted' THEN coalesce(
        nullif((payload->>'$.number')::BIGINT, 0),
        row_number() OVER (PARTITION BY kind = 'task.submitted' ORDER BY seq))
    END
"""

_TASKS_TEMPLATE = f"""
WITH t AS (
    SELECT seq, kind, epoch_us(recorded_at) AS ts, payload, payload->>'$.task_id' AS task_id,
        {_NUMBER} AS number
    FROM {{source}}
    WHERE kind LIKE 'task.%'
)
SELECT
    task_id,
    any_value(number) FILTER (WHERE kind = 'task.submitted') AS number,
    arg_max({_STATE_OF_KIND}, seq) FILTER (WHERE kind IN ({STATE_KINDS})) AS state,
    arg_max_null(payload->>'$.node', seq) FILTER (WHERE kind = 'task.placed') AS node,
    coalesce(arg_max_null((payload->>'$.cores')::BIGINT, seq)
        FILTER (WHERE kind = 'task.placed'), 0) AS cores,
    arg_max_null((payload->>'$.memory_bytes')::BIGINT, seq)
        FILTER (WHERE kind = 'task.placed') AS memory_bytes,
    coalesce(arg_max_null((payload->'$.gpu_ids')::BIGINT[], seq)
        FILTER (WHERE kind = 'task.placed'), []::BIGINT[]) AS gpu_ids,
    arg_max_null((payload->>'$.numa_id')::BIGINT, seq)
        FILTER (WHERE kind = 'task.placed') AS numa_id,
    min(ts) FILTER (WHERE kind = 'task.submitted') AS submitted_at_us,
    max(ts) FILTER (WHERE kind = 'task.placed') AS placed_at_us,
    max(ts) FILTER (WHERE kind = 'task.started') AS started_at_us,
    arg_max(ts, seq) FILTER (WHERE kind IN ('task.finished', 'task.lost')) AS finished_at_us,
    arg_max_null((payload->>'$.exit_code')::BIGINT, seq)
        FILTER (WHERE kind = 'task.finished') AS exit_code,
    arg_max_null((payload->>'$.pid')::BIGINT, seq) FILTER (WHERE kind = 'task.started') AS pid,
    arg_max_null(payload->>'$.container_id', seq)
        FILTER (WHERE kind = 'task.started') AS container_id,
    arg_max_null(payload->>'$.requested_by', seq)
        FILTER (WHERE kind = 'task.kill_requested') AS kill_requested_by,
    max(seq) AS last_seq,
    any_value(payload->>'$.spec.command') FILTER (WHERE kind = 'task.submitted') AS command,
    coalesce(any_value((payload->'$.spec.args')::VARCHAR[])
        FILTER (WHERE kind = 'task.submitted'), []::VARCHAR[]) AS args,
    any_value(payload->>'$.spec.owner') FILTER (WHERE kind = 'task.submitted') AS owner,
    any_value(payload->>'$.actor.user') FILTER (WHERE kind = 'task.submitted') AS actor,
    any_value(payload->>'$.spec.batch_id') FILTER (WHERE kind = 'task.submitted') AS batch_id,
    any_value(payload->>'$.spec.container') FILTER (WHERE kind = 'task.submitted') AS container
FROM t
GROUP BY task_id
"""

_NODES_TEMPLATE = """
WITH every AS (
    SELECT seq, kind, epoch_us(recorded_at) AS ts, payload, payload->>'$.node' AS node
    FROM {source}
    WHERE kind LIKE 'node.%'
),
forgotten AS (
    SELECT node, max(seq) AS seq FROM every WHERE kind = 'node.forgotten' GROUP BY node
),
n AS (  -- a node's events since it was last forgotten: it starts over from there
    SELECT every.* FROM every LEFT JOIN forgotten USING (node)
    WHERE every.seq > coalesce(forgotten.seq, 0)
),
tasks AS ({tasks}),
alloc AS (
    SELECT
        node,
        sum(cores)::BIGINT AS cores,  -- sum() of BIGINT is HUGEINT: a float in JSON
        sum(coalesce(memory_bytes, 0))::BIGINT AS memory_bytes,
        list_sort(flatten(list(gpu_ids))) AS gpus
    FROM tasks
    WHERE state IN ({holding})
    GROUP BY node
),
nodes AS (
    SELECT
        node AS name,
        arg_max(payload->>'$.address', seq) FILTER (WHERE kind = 'node.registered') AS address,
        arg_max(kind <> 'node.offline', seq)
            FILTER (WHERE kind IN ('node.registered', 'node.online', 'node.offline')) AS online,
        arg_max((payload->>'$.cores')::BIGINT, seq)
            FILTER (WHERE kind = 'node.registered') AS cores,
        arg_max((payload->>'$.memory_bytes')::BIGINT, seq)
            FILTER (WHERE kind = 'node.registered') AS memory_bytes,
        max(ts) FILTER (WHERE kind = 'node.registered') AS registered_at_us,
        max(ts) FILTER (WHERE kind IN ('node.registered', 'node.heartbeat', 'node.online'))
            AS last_seen_us,
        coalesce(arg_max((payload->>'$.cpu_percent')::DOUBLE, seq)
            FILTER (WHERE kind = 'node.heartbeat'), 0.0) AS cpu_percent,
        count(*) FILTER (WHERE kind = 'node.heartbeat') AS heartbeats
    FROM n
    GROUP BY node
    HAVING count(*) FILTER (WHERE kind = 'node.registered') > 0
)
SELECT
    nodes.*,
    coalesce(alloc.cores, 0) AS allocated_cores,
    coalesce(alloc.memory_bytes, 0) AS allocated_memory_bytes,
    coalesce(alloc.gpus, []::BIGINT[]) AS allocated_gpus
FROM nodes LEFT JOIN alloc ON alloc.node = nodes.name
"""

TASKS_SQL = tasks_sql()
NODES_SQL = nodes_sql()


def task_numbers_sql(source: str = "events") -> str:
    """``(task_id, number)`` of every submitted task, numbered as the fold numbers them."""
    return (
        f"SELECT payload->>'$.task_id' AS task_id, {_NUMBER} AS number"
        f" FROM {source} WHERE kind = 'task.submitted'"
    )
