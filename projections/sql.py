"""The task, node and job views as DuckDB SQL over the ``events`` table.

Any relation with the table's columns works too, such as the log up to some seq.

They serve analytics and cross-check the Python fold: on any valid history
(only legal transitions) ``TASKS_SQL``, ``NODES_SQL`` and ``jobs_sql`` give the
same rows as ``ClusterState`` (and ``projections.jobs.job_status``). They do not
replicate the fold's handling of illegal events; ``hakuriver audit`` reports those
instead. Each statement is a plain
SELECT, so it can back a ``CREATE VIEW``.
"""

from __future__ import annotations

from projections.jobs import ACTIVE_RANK_STATES, FAILED_RANK_STATES
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
_FAILED_RANK_SQL = ", ".join(f"'{s}'" for s in sorted(FAILED_RANK_STATES))
_ACTIVE_RANK_SQL = ", ".join(f"'{s}'" for s in sorted(ACTIVE_RANK_STATES))


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
    -- vps.ready and job.setup_done are task events too (no state change; last_seq moves)
    WHERE kind LIKE 'task.%' OR kind IN ('vps.ready', 'job.setup_done')
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


def job_ranks_sql(source: str = "events") -> str:
    """One row per rank of every job: its task and how it fared (``source`` as above)."""
    return _JOB_RANKS_TEMPLATE.replace("{source}", source).replace("{tasks}", tasks_sql(source))


def jobs_sql(source: str = "events") -> str:
    """One row per job, with its aggregated ``status`` as ``job_status`` computes it."""
    return (
        _JOBS_TEMPLATE.replace("{ranks}", job_ranks_sql(source))
        .replace("{source}", source)
        .replace("{failed}", _FAILED_RANK_SQL)
        .replace("{active}", _ACTIVE_RANK_SQL)
    )


# A job's events, as the fold takes them: its first job.submitted (a second is refused),
# then its job.* events up to its job.finished (later ones are refused: it ended), and the
# setup reports of its ranks (job.setup_done, in the rank's task stream).
_JOB_EVENTS = """
    e AS (
        SELECT seq, kind, epoch_us(recorded_at) AS ts, payload,
            payload->>'$.job_id' AS job_id
        FROM {source}
        WHERE kind LIKE 'job.%'
    ),
    firsts AS (
        SELECT job_id,
            min(seq) FILTER (WHERE kind = 'job.submitted') AS submitted_seq,
            min(seq) FILTER (WHERE kind = 'job.finished') AS finished_seq
        FROM e GROUP BY job_id
    ),
    j AS (
        SELECT e.* FROM e JOIN firsts USING (job_id)
        WHERE firsts.submitted_seq IS NOT NULL
            AND e.seq >= firsts.submitted_seq
            AND e.seq <= coalesce(firsts.finished_seq, e.seq)
            AND (e.kind <> 'job.submitted' OR e.seq = firsts.submitted_seq)
    )
"""

_JOB_RANKS_TEMPLATE = f"""
WITH {_JOB_EVENTS},
submitted AS (
    SELECT job_id, seq,
        unnest((payload->'$.rank_task_ids')::VARCHAR[]) AS task_id,
        unnest(range(json_array_length(payload->'$.rank_task_ids')::BIGINT)) AS rank
    FROM j WHERE kind = 'job.submitted'
),
placed AS (
    SELECT job_id, (payload->'$.nodes')::VARCHAR[] AS nodes,
        (payload->'$.addresses')::VARCHAR[] AS addresses
    FROM j WHERE kind = 'job.placed'
    QUALIFY row_number() OVER (PARTITION BY job_id ORDER BY seq DESC) = 1
),
setup AS (
    SELECT job_id, (payload->>'$.rank')::BIGINT AS rank, min(ts) AS setup_done_at_us
    FROM j WHERE kind = 'job.setup_done'
    GROUP BY ALL
),
tasks AS ({{tasks}})
SELECT
    s.job_id, s.rank::BIGINT AS rank, s.task_id, t.number, t.node,
    placed.addresses[s.rank + 1] AS address,
    coalesce(t.state, 'pending') AS state, t.exit_code, t.started_at_us, t.finished_at_us,
    setup.setup_done_at_us, t.last_seq
FROM submitted s
LEFT JOIN tasks t ON t.task_id = s.task_id
LEFT JOIN placed ON placed.job_id = s.job_id
LEFT JOIN setup ON setup.job_id = s.job_id AND setup.rank = s.rank
"""

_JOBS_TEMPLATE = f"""
WITH {_JOB_EVENTS},
ranks AS ({{ranks}}),
agg AS (
    SELECT job_id,
        count(*) AS ranks,
        count(*) FILTER (WHERE state IN ({{failed}})) AS failed_ranks,
        count(*) FILTER (WHERE state IN ({{active}})) AS active_ranks,
        count(*) FILTER (WHERE state = 'completed') AS completed_ranks
    FROM ranks GROUP BY job_id
),
jobs AS (
    SELECT
        job_id,
        any_value(payload->>'$.spec.name') FILTER (WHERE kind = 'job.submitted') AS spec_name,
        any_value(payload->>'$.owner') FILTER (WHERE kind = 'job.submitted') AS owner,
        any_value(json_array_length(payload->'$.rank_task_ids')::BIGINT)
            FILTER (WHERE kind = 'job.submitted') AS num_nodes,
        arg_max(payload->>'$.phase', seq) FILTER (WHERE kind = 'job.phase') AS last_phase,
        arg_max(payload->>'$.state', seq) FILTER (WHERE kind = 'job.finished') AS final_state,
        min(ts) FILTER (WHERE kind = 'job.submitted') AS submitted_at_us,
        max(ts) FILTER (WHERE kind = 'job.placed') AS placed_at_us,
        max(ts) FILTER (WHERE kind = 'job.phase' AND payload->>'$.phase' = 'run') AS run_at_us,
        max(ts) FILTER (WHERE kind = 'job.finished') AS finished_at_us,
        arg_max((payload->'$.nodes')::VARCHAR[], seq) FILTER (WHERE kind = 'job.placed')
            AS nodes,
        arg_min(payload->>'$.requested_by', seq) FILTER (WHERE kind = 'job.stop_requested')
            AS stop_requested_by,
        arg_max_null((payload->>'$.failed_rank')::BIGINT, seq) FILTER (WHERE kind = 'job.finished')
            AS failed_rank,
        arg_max_null(payload->>'$.message', seq) FILTER (WHERE kind = 'job.finished') AS message,
        any_value((payload->>'$.spec.cores')::BIGINT) FILTER (WHERE kind = 'job.submitted')
            AS cores,
        any_value((payload->>'$.spec.memory_bytes')::BIGINT)
            FILTER (WHERE kind = 'job.submitted') AS memory_bytes,
        any_value((payload->>'$.spec.gpu_count')::BIGINT) FILTER (WHERE kind = 'job.submitted')
            AS gpu_count,
        any_value(payload->>'$.spec.gpu_model') FILTER (WHERE kind = 'job.submitted')
            AS gpu_model,
        any_value(payload->>'$.spec.container') FILTER (WHERE kind = 'job.submitted')
            AS container,
        any_value(payload->>'$.spec.resources.image_id') FILTER (WHERE kind = 'job.submitted')
            AS image_id,
        max(seq) AS last_seq
    FROM j
    GROUP BY job_id
    HAVING count(*) FILTER (WHERE kind = 'job.submitted') > 0
)
SELECT
    jobs.job_id,
    coalesce(jobs.spec_name, 'task-' || jobs.job_id) AS name,
    jobs.owner,
    jobs.num_nodes,
    CASE
        WHEN jobs.final_state IS NOT NULL THEN jobs.final_state
        WHEN jobs.stop_requested_by IS NOT NULL THEN 'stopped'
        WHEN coalesce(agg.failed_ranks, 0) > 0 THEN 'failed'
        WHEN coalesce(agg.active_ranks, 0) > 0 THEN 'running'
        WHEN agg.ranks > 0 AND agg.completed_ranks = agg.ranks THEN 'completed'
        ELSE 'pending'
    END AS status,
    CASE WHEN jobs.final_state IS NOT NULL THEN 'ended'
        ELSE coalesce(jobs.last_phase, 'queued') END AS phase,
    jobs.submitted_at_us, jobs.placed_at_us, jobs.run_at_us, jobs.finished_at_us,
    coalesce(jobs.nodes, []::VARCHAR[]) AS nodes,
    jobs.cores, jobs.memory_bytes, coalesce(jobs.gpu_count, 0) AS gpu_count, jobs.gpu_model,
    jobs.container, jobs.image_id,
    jobs.stop_requested_by, jobs.final_state, jobs.failed_rank,
    coalesce(jobs.message, '') AS message,
    jobs.last_seq
FROM jobs LEFT JOIN agg USING (job_id)
"""


def task_numbers_sql(source: str = "events") -> str:
    """``(task_id, number)`` of every submitted task, numbered as the fold numbers them."""
    return (
        f"SELECT payload->>'$.task_id' AS task_id, {_NUMBER} AS number"
        f" FROM {source} WHERE kind = 'task.submitted'"
    )
