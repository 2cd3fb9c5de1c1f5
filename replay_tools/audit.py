"""Audit of a log: the hash chain end to end, and the invariants of its history.

Checks, each reported at the seq where it first breaks:

* the hash chain (as ``events.store.verify_chain``): an edited, deleted or swapped row;
* seqs gap-free and unique, event ids unique;
* only legal task transitions (``projections.tasks.TRANSITIONS``), no task submitted
  twice, no event for a task never submitted;
* no node ever allocated more cores or memory than it registered, no GPU held twice;
* every stored schema version readable by this build (an upcaster from it), since a reader
  skips an event it cannot decode.

The invariants run as DuckDB SQL over the whole table rather than a Python fold, so
an audit of 1M events takes about a second, not the fold's ten. Tasks the SQL screen
flags are re-checked exactly with the state machine, which skips an illegal event the
way ``ClusterState`` does. The resource check assumes the flagged tasks' illegal events
changed nothing, like the fold.

The chain check (DuckDB builds each row's canonical bytes, Python's hashlib hashes
them) runs on a thread of its own beside the invariants. Every query reads the events
up to one seq fixed at the start, so on a live log, which only grows, all checks see
the same rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa

from events.chain import GENESIS_HASH
from events.codec import Codec
from events.log_reader import begin_read_only
from projections.sql import state_of_kind
from projections.tasks import FINAL_STATES, HOLDING_STATES, TRANSITIONS, next_state


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing wrong with the log, at the seq where it shows."""

    seq: int
    kind: str  # chain, seq, id, payload, transition, resources
    message: str


class AuditReport(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of ``audit``: ok only when no problem was found."""

    ok: bool
    checked: int
    first_bad_seq: int | None
    problems: list[Problem]

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-able builtins."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


_TASK_KINDS = sorted({kind for _, kind in TRANSITIONS} | {"task.submitted"})
_TARGET = state_of_kind(guard=True)


def _quoted(values: list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


# The audited rows: every query reads the log through this, up to one seq.
_AUDITED = "(SELECT * FROM events WHERE seq <= {last})"

# Each task event with the state it leaves (NULL: unchanged) and the state before it,
# assuming every earlier event of the task was legal. Built once per audit, as a TEMP
# table on the auditing connection.
_STEPS = f"""
SELECT seq, kind, task_id, target, payload,
    last_value(target IGNORE NULLS) OVER (
        PARTITION BY task_id ORDER BY seq
        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
FROM (
    SELECT seq, kind, substr(stream, 6) AS task_id, {_TARGET} AS target,
        CASE WHEN kind = 'task.placed' THEN payload END AS payload  -- the only ones read
    FROM {_AUDITED}
    WHERE kind IN ({_quoted(_TASK_KINDS)}) AND stream LIKE 'task:%'
)
"""
_STEPS_TABLE = "hakuriver_audit_steps"

_LEGAL = "(VALUES " + ", ".join(f"('{s}', '{k}')" for s, k in TRANSITIONS) + ") AS legal(s, k)"

_SUSPECT_TASKS_SQL = f"""
SELECT DISTINCT task_id FROM {_STEPS_TABLE} AS steps
WHERE (kind = 'task.submitted' AND before IS NOT NULL)
   OR (kind <> 'task.submitted' AND before IS NULL)
   OR (kind <> 'task.submitted' AND NOT EXISTS (
        SELECT 1 FROM {_LEGAL} WHERE legal.s = steps.before AND legal.k = steps.kind))
"""

_HOLDING = _quoted(sorted(HOLDING_STATES))

# Every allocation (+) and release (-) per node, in seq order, against the capacity the
# node last registered before the placement.
_RESOURCES_SQL = f"""
WITH placed AS (
    SELECT seq, task_id, f[1] AS node,
        try_cast(f[2] AS BIGINT) AS cores,
        coalesce(try_cast(f[3] AS BIGINT), 0) AS memory,
        coalesce(try_cast(f[4] AS BIGINT[]), []::BIGINT[]) AS gpus
    FROM (
        SELECT seq, task_id, json_extract_string(  -- one parse for the four fields
            payload, ['$.node', '$.cores', '$.memory_bytes', '$.gpu_ids']) AS f
        FROM {_STEPS_TABLE}
        WHERE kind = 'task.placed' AND before = 'pending' AND json_valid(payload)
    )
),
released AS (
    SELECT task_id, min(seq) AS seq FROM {_STEPS_TABLE}
    WHERE before IN ({_HOLDING}) AND target IS NOT NULL AND target NOT IN ({_HOLDING})
    GROUP BY task_id
),
deltas AS (
    SELECT p.node, p.seq, p.task_id, p.cores AS d_cores, p.memory AS d_memory, true AS is_alloc
    FROM placed p
    UNION ALL
    SELECT p.node, r.seq, p.task_id, -p.cores, -p.memory, false
    FROM placed p JOIN released r USING (task_id)
),
running AS (
    SELECT *,
        sum(d_cores) OVER w AS cores_used,
        sum(d_memory) OVER w AS memory_used
    FROM deltas
    WINDOW w AS (PARTITION BY node ORDER BY seq ROWS UNBOUNDED PRECEDING)
),
registered AS (
    SELECT seq, payload->>'$.node' AS node, (payload->>'$.cores')::BIGINT AS cores,
        (payload->>'$.memory_bytes')::BIGINT AS memory
    FROM {_AUDITED} WHERE kind = 'node.registered' AND json_valid(payload)
),
checked AS (
    SELECT running.*, registered.cores AS capacity, registered.memory AS memory_capacity
    FROM running ASOF LEFT JOIN registered
        ON running.node = registered.node AND running.seq >= registered.seq
    WHERE is_alloc
),
gpu_deltas AS (
    SELECT p.node, p.seq, p.task_id, unnest(p.gpus) AS gpu, 1 AS d, true AS is_alloc
    FROM placed p
    UNION ALL
    SELECT p.node, r.seq, p.task_id, unnest(p.gpus), -1, false
    FROM placed p JOIN released r USING (task_id)
),
gpu_running AS (
    SELECT *, sum(d) OVER (PARTITION BY node, gpu ORDER BY seq ROWS UNBOUNDED PRECEDING) AS held
    FROM gpu_deltas
)
SELECT seq, 'task ' || task_id || ' placed on unknown node ' || node FROM checked
    WHERE capacity IS NULL
UNION ALL
SELECT seq, 'cores overcommitted on ' || node || ': ' || cores_used || ' of ' || capacity
    || ' (task ' || task_id || ')' FROM checked WHERE cores_used > capacity
UNION ALL
SELECT seq, 'memory overcommitted on ' || node || ': ' || memory_used || ' of '
    || memory_capacity || ' bytes (task ' || task_id || ')'
    FROM checked WHERE memory_capacity > 0 AND memory_used > memory_capacity
UNION ALL
SELECT seq, 'GPU ' || gpu || ' double-allocated on ' || node || ' (task ' || task_id || ')'
    FROM gpu_running WHERE is_alloc AND held > 1
ORDER BY 1
"""


# Each row's hash must equal SHA-256(previous row's stored hash + its canonical bytes), the
# format of ``events.store.chain_hash`` (see docs/events.md). Checking every row against
# its stored predecessor is equivalent to recomputing the chain from genesis and names the
# same first bad seq.
_BODY_SQL = """
SELECT seq, hash, concat_ws(chr(31), seq, id, kind, stream, source,
    epoch_us(occurred_at), epoch_us(recorded_at), schema_version, payload) AS body
FROM events WHERE seq <= {last}
"""

# The same check in SQL and in seq order: for a table whose rows are not stored in seq
# order (never the store's own: it appends in order), naming gaps and repeats.
_CHAIN_SQL = f"""
SELECT seq, prev_seq, bad_hash FROM (
    SELECT seq, prev_seq,
        sha256(prev_hash || encode(concat_ws(chr(31), seq, id, kind, stream, source,
            epoch_us(occurred_at), epoch_us(recorded_at), schema_version)
            || chr(31) || payload)) <> lower(hex(hash)) AS bad_hash
    FROM (
        SELECT *, lag(seq, 1, 0) OVER w AS prev_seq,
            lag(hash, 1, from_hex(repeat('00', 32))) OVER w AS prev_hash
        FROM {_AUDITED} WINDOW w AS (ORDER BY seq)
    )
)
WHERE bad_hash OR seq <> prev_seq + 1
ORDER BY seq
LIMIT 1000
"""

_BATCH = 100_000
_EDITED = "hash mismatch: the row was edited, or rows were reordered"


def audit(db: str | Path | duckdb.DuckDBPyConnection, *, upto: int | None = None) -> AuditReport:
    """Verify the chain and the invariants of a log (a file opened read-only, or a cursor).

    ``upto``: audit the events up to this seq (default: all there are when it starts).
    """
    if isinstance(db, duckdb.DuckDBPyConnection):
        return _audit(db, upto)
    path = Path(db)
    if not path.exists():
        raise FileNotFoundError(f"no event log at {path}")
    con = duckdb.connect(str(path), read_only=True)
    try:
        return _audit(con, upto)
    finally:
        con.close()


def _audit(con: duckdb.DuckDBPyConnection, upto: int | None) -> AuditReport:
    if upto is None:
        ((upto,),) = con.execute("SELECT coalesce(max(seq), 0) FROM events").fetchall()
    last = int(upto or 0)
    # Its own cursor, for the chain check on its own thread; read-only like the rest.
    chain_con = begin_read_only(con.cursor())
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="hakuriver-audit-chain") as pool:
            chain = pool.submit(_chain_and_structure, chain_con, last)
            try:
                con.execute(
                    f"CREATE OR REPLACE TEMP TABLE {_STEPS_TABLE} AS " + _STEPS.format(last=last)
                )
                try:
                    problems = _transitions(con, last)
                    problems += [
                        Problem(seq=int(seq), kind="resources", message=str(message))
                        for seq, message in con.execute(_RESOURCES_SQL.format(last=last)).fetchall()
                    ]
                    problems += _unreadable_versions(con, last)
                finally:
                    con.execute(f"DROP TABLE IF EXISTS {_STEPS_TABLE}")
            finally:
                problems_chain = chain.result()
    finally:
        chain_con.close()
    problems = problems_chain + problems
    problems.sort(key=lambda p: (p.seq, p.kind))
    ((count,),) = con.execute("SELECT count(*) FROM events WHERE seq <= ?", [last]).fetchall()
    return AuditReport(
        ok=not problems,
        checked=int(count),
        first_bad_seq=problems[0].seq if problems else None,
        problems=problems,
    )


def _unreadable_versions(con: duckdb.DuckDBPyConnection, last: int) -> list[Problem]:
    """Events stored at a schema version no upcaster reads (readers skip them)."""
    codec = Codec()
    found = []
    for kind, version, first, count in con.execute(
        f"SELECT kind, schema_version, min(seq), count(*) FROM {_AUDITED.format(last=last)}"
        " GROUP BY kind, schema_version"
    ).fetchall():
        why = codec.unreadable_version(kind, int(version))
        if why is not None:
            found.append(
                Problem(
                    seq=int(first),
                    kind="payload",
                    message=f"{why}: {count} event(s), from seq {first}, are skipped by readers",
                )
            )
    return found


def _chain_and_structure(con: duckdb.DuckDBPyConnection, last: int) -> list[Problem]:
    in_order = _chain_in_storage_order(con, last)
    found = in_order if in_order is not None else _chain_in_seq_order(con, last)
    audited = _AUDITED.format(last=last)
    for event_id, seqs in con.execute(
        f"""
        SELECT id::VARCHAR, list(seq ORDER BY seq) FROM {audited}
        WHERE id IN (SELECT id FROM {audited} GROUP BY id HAVING count(*) > 1)
        GROUP BY id
        """
    ).fetchall():
        found.append(
            Problem(seq=seqs[1], kind="id", message=f"event id {event_id} stored at seqs {seqs}")
        )
    return found


def _chain_in_storage_order(con: duckdb.DuckDBPyConnection, last: int) -> list[Problem] | None:
    """The chain check over the rows as stored; None if they are not stored 1, 2, 3, ..."""
    found: list[Problem] = []
    sha256 = hashlib.sha256
    expected, previous = 1, GENESIS_HASH
    for batch in _prefetched(con.sql(_BODY_SQL.format(last=last)).to_arrow_reader(_BATCH)):
        seqs, digests = batch.column(0).to_pylist(), batch.column(1).to_pylist()
        bodies = _as_bytes(batch.column(2)).to_pylist()
        if seqs and (seqs[0] != expected or seqs[-1] != expected + len(seqs) - 1):
            return None
        for seq, digest, body in zip(seqs, digests, bodies, strict=True):
            if sha256(previous + body).digest() != digest:
                found.append(Problem(seq=seq, kind="chain", message=_EDITED))
                if len(found) >= 1000:
                    return found
            previous = digest
        expected += len(seqs)
    return found


def _as_bytes(strings: pa.Array) -> pa.Array:
    """UTF-8 strings as the same bytes, without a copy."""
    if pa.types.is_large_string(strings.type):
        return strings.view(pa.large_binary())
    if pa.types.is_string_view(strings.type):
        return strings.view(pa.binary_view())
    return strings.view(pa.binary())


def _prefetched(reader: Any) -> Iterator[Any]:
    """The reader's batches, the next one read (by DuckDB, off the GIL) while this one is used."""
    batches: queue.Queue[Any] = queue.Queue(maxsize=2)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in reader:
                if stop.is_set():
                    break
                batches.put(batch)
        finally:
            batches.put(done)

    producer = threading.Thread(target=produce, name="hakuriver-audit-read", daemon=True)
    producer.start()
    try:
        while (batch := batches.get()) is not done:
            yield batch
    finally:
        stop.set()
        while producer.is_alive():  # let it finish its put and see the stop
            with contextlib.suppress(queue.Empty):
                batches.get(timeout=0.1)
        reader.close()


def _chain_in_seq_order(con: duckdb.DuckDBPyConnection, last: int) -> list[Problem]:
    found: list[Problem] = []
    for seq, prev, bad_hash in con.execute(_CHAIN_SQL.format(last=last)).fetchall():
        if seq == prev:
            found.append(Problem(seq=seq, kind="seq", message=f"seq {seq} stored twice"))
        elif seq != prev + 1:
            missing = f"{prev + 1}" if seq == prev + 2 else f"{prev + 1}..{seq - 1}"
            found.append(Problem(seq=prev + 1, kind="seq", message=f"seq {missing} missing"))
        elif bad_hash:
            found.append(Problem(seq=seq, kind="chain", message=_EDITED))
    return found


def _transitions(con: duckdb.DuckDBPyConnection, last: int) -> list[Problem]:
    """Re-check the tasks the SQL screen flags, exactly as the fold would."""
    suspects = [row[0] for row in con.execute(_SUSPECT_TASKS_SQL).fetchall()]
    if not suspects:
        return []
    rows = con.execute(
        f"""
        SELECT seq, kind, substr(stream, 6), try(payload->>'$.state')
        FROM {_AUDITED.format(last=last)}
        WHERE kind IN ({_quoted(_TASK_KINDS)})
          AND stream IN (SELECT 'task:' || unnest(?::VARCHAR[]))
        ORDER BY seq
        """,
        [suspects],
    ).fetchall()
    state: dict[str, str] = {}
    found: list[Problem] = []
    for seq, kind, task_id, reported in rows:
        current = state.get(task_id)
        if kind == "task.submitted":
            if current is None:
                state[task_id] = "pending"
            else:
                found.append(
                    Problem(seq=seq, kind="transition", message=f"task {task_id} submitted twice")
                )
            continue
        if current is None:
            message = f"{kind} for task {task_id}, which was never submitted"
            found.append(Problem(seq=seq, kind="transition", message=message))
            continue
        target = next_state(current, kind, reported)
        if target is None:
            final = " (a final state)" if current in FINAL_STATES else ""
            message = f"illegal transition: {kind} for task {task_id} in state {current}{final}"
            found.append(Problem(seq=seq, kind="transition", message=message))
        else:
            state[task_id] = target
    return found
