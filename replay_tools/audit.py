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

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import msgspec
import pyarrow as pa

from events.chain import GENESIS_HASH
from events.codec import Codec
from events.log_reader import begin_read_only
from projections.sql import state_of_kind
from projections.tasks import FINAL_STATES, HOLDING_STATES, TRANSITIONS, next_state
from replay_tools import audit_watermark


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
    # With a watermark (``replay_tools.audit_watermark``): the events up to
    # ``verified_from`` passed an earlier audit and were not read again (0: none skipped);
    # ``rows_read``: the rows whose hashes this audit checked; ``watermark``: what it did.
    verified_from: int = 0
    rows_read: int = 0
    watermark: str = ""

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

# ``json_valid`` on the registrations only: written as a plain ``AND``, DuckDB validates the
# payload of every row it scans (about 0.1 CPU-s per 1M events) before the kind filter.
_REGISTERED_JSON = "CASE WHEN kind = 'node.registered' THEN json_valid(payload) ELSE false END"

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
    FROM {_AUDITED} WHERE kind = 'node.registered' AND {_REGISTERED_JSON}
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
# same first bad seq. ``concat`` with the separators written out rather than ``concat_ws``:
# the same bytes (every column is NOT NULL), about 15% less of DuckDB's work per row.
_BODY_SQL = """
SELECT seq, hash, concat(seq, chr(31), id, chr(31), kind, chr(31), stream, chr(31), source,
    chr(31), epoch_us(occurred_at), chr(31), epoch_us(recorded_at), chr(31), schema_version,
    chr(31), payload) AS body
FROM events WHERE seq > {first} AND seq <= {last}
"""

# The same check in SQL and in seq order: for a table whose rows are not stored in seq
# order (never the store's own: it appends in order), naming gaps and repeats.
_CHAIN_SQL = """
SELECT seq, prev_seq, bad_hash FROM (
    SELECT seq, prev_seq,
        sha256(prev_hash || encode(concat_ws(chr(31), seq, id, kind, stream, source,
            epoch_us(occurred_at), epoch_us(recorded_at), schema_version)
            || chr(31) || payload)) <> lower(hex(hash)) AS bad_hash
    FROM (
        SELECT *, lag(seq, 1, {first}) OVER w AS prev_seq,
            lag(hash, 1, from_hex('{previous}')) OVER w AS prev_hash
        FROM events WHERE seq > {first} AND seq <= {last} WINDOW w AS (ORDER BY seq)
    )
)
WHERE bad_hash OR seq <> prev_seq + 1
ORDER BY seq
LIMIT 1000
"""

# Small batches: a batch's bytes are still in the CPU's cache when the hash loop reads them
# (100k-row batches, 58 MB each, made the 1M audit ~10% slower). The hash loop reads them
# from DuckDB's stream itself: DuckDB's own threads fill the stream's buffer ahead of it
# (``streaming_buffer_size``), off the GIL. A Python thread reading ahead instead (as
# before) needed the GIL once per batch, which a busy hash loop hands over only every
# switch interval (5 ms): the reader fell behind the loop, and the thread and its queue
# cost about 0.25 CPU-s per 1M events.
_BATCH = 4096
_EDITED = "hash mismatch: the row was edited, or rows were reordered"


def audit(
    db: str | Path | duckdb.DuckDBPyConnection,
    *,
    upto: int | None = None,
    watermark: Path | None = None,
    full: bool = False,
) -> AuditReport:
    """Verify the chain and the invariants of a log (a file opened read-only, or a cursor).

    ``upto``: audit the events up to this seq (default: all there are when it starts).
    ``watermark``: a watermark file (``audit_watermark``): the rows a passing audit already
    verified are checked by their anchor and skipped, and a passing audit moves it on.
    ``full``: re-read every row even so (the anchor is still checked, the mark still moved).
    """
    if isinstance(db, duckdb.DuckDBPyConnection):
        return _audit(db, upto, watermark, full)
    path = Path(db)
    if not path.exists():
        raise FileNotFoundError(f"no event log at {path}")
    con = duckdb.connect(str(path), read_only=True)
    try:
        return _audit(con, upto, watermark, full)
    finally:
        con.close()


def _audit(
    con: duckdb.DuckDBPyConnection, upto: int | None, watermark: Path | None, full: bool
) -> AuditReport:
    ((stored,),) = con.execute("SELECT coalesce(max(seq), 0) FROM events").fetchall()
    last = int(stored or 0) if upto is None else min(int(upto), int(stored or 0))
    if watermark is None:
        problems, rows_read, _ = _full(con, last, checkpoint=False)
        return _report(con, last, problems, rows_read)
    mark, note = audit_watermark.read(watermark)
    anchor: list[Problem] = []
    keep = True  # whether a passing audit moves the watermark to ``last``
    if mark is not None and upto is not None and upto < mark.seq:
        note, keep = f"watermark at seq {mark.seq}, beyond --upto: not used", False
        mark = None
    elif mark is not None:
        broken = _anchor_broken(con, mark)
        if broken:
            anchor.append(Problem(seq=mark.seq, kind="watermark", message=broken))
            note, mark = "watermark broken: verified from the first event", None
        elif full:
            note, mark = f"watermark at seq {mark.seq} holds; --full: every row read", None
    if mark is not None:
        problems, rows_read, after = _tail(con, mark, last)
        verified_from = mark.seq
        note = f"rows up to seq {mark.seq} verified earlier (watermark holds)"
    else:
        problems, rows_read, after = _full(con, last, checkpoint=keep)
        verified_from = 0
    problems = anchor + problems
    if not problems and after is not None and last >= 1:
        note += "; " + audit_watermark.write(watermark, after)
    elif problems:
        note += "; watermark not moved (the audit failed)"
    return _report(con, last, problems, rows_read, verified_from, note)


def _report(
    con: duckdb.DuckDBPyConnection,
    last: int,
    problems: list[Problem],
    rows_read: int,
    verified_from: int = 0,
    note: str = "",
) -> AuditReport:
    problems.sort(key=lambda p: (p.seq, p.kind, p.message))
    # Every seq 1..last is present when the chain check found no gap, so the count is
    # ``last`` (without counting, which would read the whole seq column).
    if any(p.kind in ("seq", "watermark") for p in problems) or verified_from == 0:
        ((count,),) = con.execute("SELECT count(*) FROM events WHERE seq <= ?", [last]).fetchall()
    else:
        count = last
    return AuditReport(
        ok=not problems,
        checked=int(count),
        first_bad_seq=problems[0].seq if problems else None,
        problems=problems,
        verified_from=verified_from,
        rows_read=rows_read,
        watermark=note,
    )


def _anchor_broken(con: duckdb.DuckDBPyConnection, mark: audit_watermark.Watermark) -> str:
    """Why the log no longer matches the watermark ("" when it still does)."""
    ((count, top),) = con.execute(
        "SELECT count(*), max(seq) FROM events WHERE seq <= ?", [mark.seq]
    ).fetchall()
    ((stored,),) = con.execute("SELECT coalesce(max(seq), 0) FROM events").fetchall()
    if int(stored or 0) < mark.seq:
        return (
            f"the log ends at seq {stored}, but seq {mark.seq} was verified:"
            " rows were removed from its end"
        )
    if count != mark.seq or top != mark.seq:
        return (
            f"{count} rows up to seq {mark.seq}, which was verified with {mark.seq}:"
            " rows were removed or added below it"
        )
    rows = con.execute("SELECT hash FROM events WHERE seq = ?", [mark.seq]).fetchall()
    if not rows or bytes(rows[0][0]).hex() != mark.hash:
        return (
            f"the stored hash of seq {mark.seq} is not the one verified: rows at or below"
            " it were rewritten since"
        )
    return ""


def _full(
    con: duckdb.DuckDBPyConnection, last: int, *, checkpoint: bool
) -> tuple[list[Problem], int, audit_watermark.Watermark | None]:
    """The whole audit up to ``last``; with ``checkpoint``, its state there when it passes."""
    # Its own cursor, for the chain check on its own thread; read-only like the rest.
    chain_con = begin_read_only(con.cursor())
    after = None
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="hakuriver-audit-chain") as pool:
            chain = pool.submit(_chain_and_structure, chain_con, last)
            try:
                con.execute(
                    f"CREATE OR REPLACE TEMP TABLE {_STEPS_TABLE} AS " + _STEPS.format(last=last)
                )
                try:
                    # Here rather than on the chain's thread, after the hash loop: this way
                    # it overlaps the loop instead of adding to the audit's critical path.
                    problems = _all_duplicate_ids(con, last)
                    problems += _transitions(con, last)
                    problems += [
                        Problem(seq=int(seq), kind="resources", message=str(message))
                        for seq, message in con.execute(_RESOURCES_SQL.format(last=last)).fetchall()
                    ]
                    problems += _unreadable_versions(con, last)
                    if checkpoint and not problems and last >= 1:
                        after = _checkpoint(con, last)
                finally:
                    con.execute(f"DROP TABLE IF EXISTS {_STEPS_TABLE}")
            finally:
                problems_chain, rows_read = chain.result()
    finally:
        chain_con.close()
    return problems_chain + problems, rows_read, after


def _checkpoint(con: duckdb.DuckDBPyConnection, last: int) -> audit_watermark.Watermark:
    """The audit's state at ``last`` (the steps table present, the log verified up to it)."""
    tasks = {
        str(task_id): str(state)
        for task_id, state in con.execute(
            f"""
            SELECT task_id, arg_max(target, seq) AS state FROM {_STEPS_TABLE}
            WHERE target IS NOT NULL GROUP BY task_id
            HAVING arg_max(target, seq) NOT IN ({_quoted(sorted(FINAL_STATES))})
            """
        ).fetchall()
    }
    holding = [t for t, state in tasks.items() if state in HOLDING_STATES]
    held = {}
    if holding:
        for task_id, node, cores, memory, gpus in con.execute(
            f"""
            SELECT task_id, f[1], try_cast(f[2] AS BIGINT),
                coalesce(try_cast(f[3] AS BIGINT), 0),
                coalesce(try_cast(f[4] AS BIGINT[]), []::BIGINT[])
            FROM (
                SELECT task_id, seq, json_extract_string(
                    payload, ['$.node', '$.cores', '$.memory_bytes', '$.gpu_ids']) AS f
                FROM {_STEPS_TABLE}
                WHERE kind = 'task.placed' AND before = 'pending' AND json_valid(payload)
                    AND task_id IN (SELECT unnest(?::VARCHAR[]))
            )
            QUALIFY row_number() OVER (PARTITION BY task_id ORDER BY seq DESC) = 1
            """,
            [holding],
        ).fetchall():
            held[str(task_id)] = audit_watermark.Held(
                str(node), int(cores or 0), int(memory or 0), [int(g) for g in gpus]
            )
    nodes = {
        str(node): (None if cores is None else int(cores), None if memory is None else int(memory))
        for node, cores, memory in con.execute(
            f"""
            SELECT payload->>'$.node', try_cast(payload->>'$.cores' AS BIGINT),
                try_cast(payload->>'$.memory_bytes' AS BIGINT)
            FROM {_AUDITED.format(last=last)}
            WHERE kind = 'node.registered' AND {_REGISTERED_JSON}
            QUALIFY row_number() OVER (PARTITION BY payload->>'$.node' ORDER BY seq DESC) = 1
            """
        ).fetchall()
    }
    ((digest,),) = con.execute("SELECT hash FROM events WHERE seq = ?", [last]).fetchall()
    return audit_watermark.Watermark(
        seq=last, hash=bytes(digest).hex(), tasks=tasks, held=held, nodes=nodes
    )


def _tail(
    con: duckdb.DuckDBPyConnection, mark: audit_watermark.Watermark, last: int
) -> tuple[list[Problem], int, audit_watermark.Watermark | None]:
    """The audit of the rows after the watermark, from its recorded state."""
    previous = bytes.fromhex(mark.hash)
    in_order = _chain_in_storage_order(con, last, first=mark.seq, previous=previous)
    if in_order is None:
        problems = _chain_in_seq_order(con, last, first=mark.seq, previous=previous)
        ((rows_read,),) = con.execute(
            "SELECT count(*) FROM events WHERE seq > ? AND seq <= ?", [mark.seq, last]
        ).fetchall()
    else:
        problems, rows_read = in_order
    problems += _duplicate_ids(con, last, first=mark.seq)
    folded, after = _fold_tail(con, mark, last)
    problems += folded
    problems += _unreadable_versions(con, last, first=mark.seq)
    return problems, rows_read, after


def _unreadable_versions(
    con: duckdb.DuckDBPyConnection, last: int, *, first: int = 0
) -> list[Problem]:
    """Events stored at a schema version no upcaster reads (readers skip them)."""
    codec = Codec()
    found = []
    for kind, version, first_seq, count in con.execute(
        "SELECT kind, schema_version, min(seq), count(*) FROM events"
        " WHERE seq > ? AND seq <= ? GROUP BY kind, schema_version",
        [first, last],
    ).fetchall():
        why = codec.unreadable_version(kind, int(version))
        if why is not None:
            found.append(
                Problem(
                    seq=int(first_seq),
                    kind="payload",
                    message=(
                        f"{why}: {count} event(s), from seq {first_seq}, are skipped by readers"
                    ),
                )
            )
    return found


def _chain_and_structure(con: duckdb.DuckDBPyConnection, last: int) -> tuple[list[Problem], int]:
    in_order = _chain_in_storage_order(con, last)
    if in_order is not None:
        found, rows_read = in_order
    else:
        found = _chain_in_seq_order(con, last)
        ((rows_read,),) = con.execute(
            "SELECT count(*) FROM events WHERE seq <= ?", [last]
        ).fetchall()
    return found, int(rows_read)


def _all_duplicate_ids(con: duckdb.DuckDBPyConnection, last: int) -> list[Problem]:
    """Event ids stored more than once up to ``last``."""
    audited = _AUDITED.format(last=last)
    return [
        Problem(seq=seqs[1], kind="id", message=f"event id {event_id} stored at seqs {seqs}")
        for event_id, seqs in con.execute(
            f"""
            SELECT id::VARCHAR, list(seq ORDER BY seq) FROM {audited}
            WHERE id IN (SELECT id FROM {audited} GROUP BY id HAVING count(*) > 1)
            GROUP BY id
            """
        ).fetchall()
    ]


def _duplicate_ids(con: duckdb.DuckDBPyConnection, last: int, *, first: int) -> list[Problem]:
    """Event ids of the rows after ``first`` stored more than once (a semi-join probe)."""
    found = []
    for event_id, seqs in con.execute(
        """
        SELECT id::VARCHAR, list(seq ORDER BY seq) FROM events
        WHERE seq <= ? AND id IN (SELECT id FROM events WHERE seq > ? AND seq <= ?)
        GROUP BY id HAVING count(*) > 1
        """,
        [last, first, last],
    ).fetchall():
        found.append(
            Problem(seq=seqs[1], kind="id", message=f"event id {event_id} stored at seqs {seqs}")
        )
    return found


def _chain_in_storage_order(
    con: duckdb.DuckDBPyConnection, last: int, *, first: int = 0, previous: bytes = GENESIS_HASH
) -> tuple[list[Problem], int] | None:
    """The chain check over the rows after ``first`` as stored, and how many it read.

    None if they are not stored ``first + 1``, ``first + 2``, ...; ``previous``: the hash
    of row ``first``.
    """
    found: list[Problem] = []
    sha256 = hashlib.sha256
    expected = first + 1
    query = _BODY_SQL.format(first=first, last=last)
    with con.sql(query).to_arrow_reader(_BATCH) as reader:  # closed on an early return
        for batch in reader:
            # The seqs stay in Arrow (only the first and last are read; a bad row's is its
            # body's first field): a million Python ints would cost the hash loop's thread.
            seqs, size = batch.column(0), batch.num_rows
            if size == 0:
                continue
            if seqs[0].as_py() != expected or seqs[size - 1].as_py() != expected + size - 1:
                return None
            digests = batch.column(1).to_pylist()
            bodies = _as_bytes(batch.column(2)).to_pylist()
            for digest, body in zip(digests, bodies, strict=True):
                if sha256(previous + body).digest() != digest:
                    seq = int(body[: body.index(b"\x1f")])  # the body's first field
                    found.append(Problem(seq=seq, kind="chain", message=_EDITED))
                    if len(found) >= 1000:
                        return found, expected - first - 1 + size
                previous = digest
            expected += size
    return found, expected - first - 1


def _as_bytes(strings: pa.Array) -> pa.Array:
    """UTF-8 strings as the same bytes, without a copy."""
    if pa.types.is_large_string(strings.type):
        return strings.view(pa.large_binary())
    if pa.types.is_string_view(strings.type):
        return strings.view(pa.binary_view())
    return strings.view(pa.binary())


def _chain_in_seq_order(
    con: duckdb.DuckDBPyConnection, last: int, *, first: int = 0, previous: bytes = GENESIS_HASH
) -> list[Problem]:
    found: list[Problem] = []
    query = _CHAIN_SQL.format(first=int(first), last=int(last), previous=previous.hex())
    for seq, prev, bad_hash in con.execute(query).fetchall():
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
        _, target, problem = _step(state, seq, kind, task_id, reported)
        if problem is not None:
            found.append(problem)
        elif target is not None:
            state[task_id] = target
    return found


def _step(
    state: dict[str, str], seq: int, kind: str, task_id: str, reported: str | None
) -> tuple[str | None, str | None, Problem | None]:
    """One task event against the state machine: (its state before, after, what is wrong).

    A submission is applied here (nothing else to do for it: ``after`` is None); any other
    legal step is the caller's to apply, once it has looked at both states."""
    current = state.get(task_id)
    if kind == "task.submitted":
        if current is not None:
            message = f"task {task_id} submitted twice"
            return current, None, Problem(seq=seq, kind="transition", message=message)
        state[task_id] = "pending"
        return None, None, None
    if current is None:
        message = f"{kind} for task {task_id}, which was never submitted"
        return None, None, Problem(seq=seq, kind="transition", message=message)
    target = next_state(current, kind, reported)
    if target is None:
        final = " (a final state)" if current in FINAL_STATES else ""
        message = f"illegal transition: {kind} for task {task_id} in state {current}{final}"
        return current, None, Problem(seq=seq, kind="transition", message=message)
    return current, target, None


def _fold_tail(
    con: duckdb.DuckDBPyConnection, mark: audit_watermark.Watermark, last: int
) -> tuple[list[Problem], audit_watermark.Watermark]:
    """Transitions and resources of the rows after the watermark, from its recorded state.

    The exact fold (``next_state``), as ``_transitions`` re-checks flagged tasks; the
    resource rules are those of ``_RESOURCES_SQL``, applied event by event.
    """
    rows = con.execute(
        f"""
        SELECT seq, kind, substr(stream, 6), payload FROM events
        WHERE seq > ? AND seq <= ?
          AND ((kind IN ({_quoted(_TASK_KINDS)}) AND stream LIKE 'task:%')
               OR kind = 'node.registered')
        ORDER BY seq
        """,
        [mark.seq, last],
    ).fetchall()
    state = dict(mark.tasks)
    held = dict(mark.held)
    nodes = dict(mark.nodes)
    # Tasks the new rows name that were not live at the watermark: new ones (their first
    # row a submission), or final ones. Their state then comes from their older rows: one
    # probe for submissions (a task submitted again), then the exact fold of those found
    # and of the others (never in a passing log: an event after a final state).
    first_kind: dict[str, str] = {}
    for _, kind, task_id, _ in rows:
        if kind != "node.registered" and task_id not in state:
            first_kind.setdefault(task_id, kind)
    submitted = [t for t, k in first_kind.items() if k == "task.submitted"]
    older = [t for t, k in first_kind.items() if k != "task.submitted"]
    if submitted:
        older += [
            str(row[0])
            for row in con.execute(
                """
                SELECT DISTINCT substr(stream, 6) FROM events
                WHERE seq <= ? AND kind = 'task.submitted'
                  AND stream IN (SELECT 'task:' || unnest(?::VARCHAR[]))
                """,
                [mark.seq, submitted],
            ).fetchall()
        ]
    if older:
        for _, kind, task_id, reported in con.execute(
            f"""
            SELECT seq, kind, substr(stream, 6), try(payload->>'$.state') FROM events
            WHERE seq <= ? AND kind IN ({_quoted(_TASK_KINDS)})
              AND stream IN (SELECT 'task:' || unnest(?::VARCHAR[]))
            ORDER BY seq
            """,
            [mark.seq, sorted(older)],
        ).fetchall():
            current = state.get(task_id)
            if kind == "task.submitted":
                state.setdefault(task_id, "pending")
            elif current is not None:
                state[task_id] = next_state(current, kind, reported) or current
    used: dict[str, list[int]] = {}  # node: [cores, memory]
    gpus: dict[tuple[str, int], int] = {}
    for h in held.values():
        totals = used.setdefault(h.node, [0, 0])
        totals[0] += h.cores
        totals[1] += h.memory
        for gpu in h.gpus:
            gpus[h.node, gpu] = gpus.get((h.node, gpu), 0) + 1
    found: list[Problem] = []
    decode = msgspec.json.decode
    for seq, kind, task_id, payload in rows:
        try:
            body = decode(payload)
        except msgspec.DecodeError:
            body = None
        if not isinstance(body, dict):
            body = None
        if kind == "node.registered":
            if body is not None:
                nodes[str(body.get("node"))] = (
                    _int(body.get("cores")),
                    _int(body.get("memory_bytes")),
                )
            continue
        reported = body.get("state") if body is not None else None
        current, target, problem = _step(
            state, seq, kind, task_id, reported if isinstance(reported, str) else None
        )
        if problem is not None:
            found.append(problem)
            continue
        if current is None or target is None:  # a submission, applied by _step
            continue
        if kind == "task.placed" and current == "pending" and body is not None:
            node = str(body.get("node"))
            placed = audit_watermark.Held(
                node,
                _int(body.get("cores")) or 0,
                _int(body.get("memory_bytes")) or 0,
                [g for g in body.get("gpu_ids") or [] if isinstance(g, int)],
            )
            held[task_id] = placed
            found += _allocate(seq, task_id, placed, nodes, used, gpus)
        if current in HOLDING_STATES and target not in HOLDING_STATES and task_id in held:
            gone = held.pop(task_id)
            used[gone.node][0] -= gone.cores
            used[gone.node][1] -= gone.memory
            for gpu in gone.gpus:
                gpus[gone.node, gpu] -= 1
        state[task_id] = target
    ((digest,),) = con.execute("SELECT hash FROM events WHERE seq = ?", [last]).fetchall()
    after = audit_watermark.Watermark(
        seq=last,
        hash=bytes(digest).hex(),
        tasks={t: s for t, s in state.items() if s not in FINAL_STATES},
        held=held,
        nodes=nodes,
    )
    return found, after


def _int(value: object) -> int | None:
    """A JSON number as the SQL's ``try_cast(... AS BIGINT)`` reads it."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _allocate(
    seq: int,
    task_id: str,
    placed: audit_watermark.Held,
    nodes: dict[str, tuple[int | None, int | None]],
    used: dict[str, list[int]],
    gpus: dict[tuple[str, int], int],
) -> list[Problem]:
    """The problems of one placement, as ``_RESOURCES_SQL`` words them."""
    node = placed.node
    totals = used.setdefault(node, [0, 0])
    totals[0] += placed.cores
    totals[1] += placed.memory
    found = []
    capacity, memory_capacity = nodes.get(node, (None, None))
    if capacity is None:
        message = f"task {task_id} placed on unknown node {node}"
        found.append(Problem(seq=seq, kind="resources", message=message))
    elif totals[0] > capacity:
        message = f"cores overcommitted on {node}: {totals[0]} of {capacity} (task {task_id})"
        found.append(Problem(seq=seq, kind="resources", message=message))
    if memory_capacity is not None and memory_capacity > 0 and totals[1] > memory_capacity:
        message = (
            f"memory overcommitted on {node}: {totals[1]} of {memory_capacity} bytes"
            f" (task {task_id})"
        )
        found.append(Problem(seq=seq, kind="resources", message=message))
    for gpu in placed.gpus:
        gpus[node, gpu] = gpus.get((node, gpu), 0) + 1
        if gpus[node, gpu] > 1:
            message = f"GPU {gpu} double-allocated on {node} (task {task_id})"
            found.append(Problem(seq=seq, kind="resources", message=message))
    return found
