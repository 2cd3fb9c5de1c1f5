"""Time travel over the log: state at a seq or a time, diffs, task timelines and reasons.

Offline functions take a database path (or an open ``LogFile``) and are synchronous:
callers on an event loop run them in a thread. The ``*_live`` variants read through a
running ``EventStore``. Both restore the newest valid snapshot at or before the point
(the control plane's ``cluster`` snapshots or the ``history`` ones written by
``write_history_snapshots``) and fold only the tail, so no query scans the whole log.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa

from events.codec import Codec, gc_paused
from events.envelope import Recorded
from events.store import EventStore
from events.types import (
    Rejection,
    TaskDispatched,
    TaskFinished,
    TaskKillRequested,
    TaskLost,
    TaskPaused,
    TaskPauseRequested,
    TaskPlaced,
    TaskResumed,
    TaskResumeRequested,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
)
from projections.cluster import ClusterState

SNAPSHOT_NAMES = ("cluster", "history")
HISTORY_EVERY = 50_000

_COLUMNS = (
    "seq, id::VARCHAR, kind, stream, source, epoch_us(occurred_at), epoch_us(recorded_at),"
    " schema_version, payload, hash"
)


class UnknownTask(LookupError):
    """The log holds no event for the task id asked about."""


class LogFile:
    """A database file opened read-only, with the snapshots stored beside it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no event log at {self.path}")
        self.con = duckdb.connect(str(self.path), read_only=True)
        self.codec = Codec()
        self.snapshot_dir = self.path.with_name(self.path.name + ".snapshots")

    def close(self) -> None:
        """Close the database connection."""
        self.con.close()

    def __enter__(self) -> LogFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def last_seq(self) -> int:
        """The highest seq stored (0 for an empty log)."""
        return int(self.con.execute("SELECT coalesce(max(seq), 0) FROM events").fetchall()[0][0])

    def seq_at(self, at_us: int) -> int:
        """The last seq recorded at or before ``at_us`` (0 if none)."""
        rows = self.con.execute(
            "SELECT coalesce(max(seq), 0) FROM events WHERE recorded_at <= make_timestamptz(?)",
            [at_us],
        ).fetchall()
        return int(rows[0][0])

    def read(
        self, *, after: int = 0, until: int | None = None, streams: Sequence[str] | None = None
    ) -> list[Recorded]:
        """Decoded events after seq ``after`` up to ``until``, optionally of some streams only."""
        where, params = ["seq > ?"], [after]
        if until is not None:
            where.append("seq <= ?")
            params.append(until)
        if streams is not None:
            where.append("stream IN (SELECT unnest(?::VARCHAR[]))")
            params.append(list(streams))  # type: ignore[arg-type]
        sql = f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq"
        return decode_table(self.codec, self.con.sql(sql, params=params).to_arrow_table())

    def hash_at(self, seq: int) -> bytes | None:
        """The stored chain hash of ``seq``."""
        rows = self.con.execute("SELECT hash FROM events WHERE seq = ?", [seq]).fetchall()
        return bytes(rows[0][0]) if rows else None

    def latest_snapshot(self, at_or_before: int) -> tuple[int, bytes] | None:
        """The newest snapshot (any of ``SNAPSHOT_NAMES``) anchored to this log, as (seq, data)."""
        found: list[tuple[int, Path]] = []
        for name in SNAPSHOT_NAMES:
            for path in self.snapshot_dir.glob(f"{name}-*.snap"):
                try:
                    seq = int(path.stem.rsplit("-", 1)[1])
                except ValueError:
                    continue
                if seq <= at_or_before:
                    found.append((seq, path))
        for seq, path in sorted(found, reverse=True):
            blob = path.read_bytes()
            if self.hash_at(seq) == blob[:32]:
                return seq, blob[32:]
        return None


def decode_table(codec: Codec, table: pa.Table) -> list[Recorded]:
    """Turn rows of ``_COLUMNS`` into ``Recorded`` envelopes, skipping unknown kinds."""
    columns = [column.to_pylist() for column in table.columns]
    out: list[Recorded] = []
    with gc_paused():
        for seq, eid, kind, stream, source, occ, rec, version, payload, digest in zip(
            *columns, strict=True
        ):
            event = codec.decode(kind, version, payload)
            if event is not None:
                out.append(
                    Recorded(
                        seq=seq,
                        id=eid,
                        kind=kind,
                        stream=stream,
                        source=source,
                        occurred_at_us=occ,
                        recorded_at_us=rec,
                        schema_version=version,
                        hash=digest,
                        event=event,
                    )
                )
    return out


def _as_log(source: str | Path | LogFile) -> tuple[LogFile, bool]:
    if isinstance(source, LogFile):
        return source, False
    return LogFile(source), True


def state_at(
    source: str | Path | LogFile, *, seq: int | None = None, at_us: int | None = None
) -> ClusterState:
    """The cluster exactly as it was after ``seq`` (or the last event at or before ``at_us``)."""
    log, owned = _as_log(source)
    try:
        target = _target_seq(log.last_seq, seq, at_us, log.seq_at)
        snap = log.latest_snapshot(target)
        tail = log.read(after=snap[0] if snap else 0, until=target)
        return ClusterState.rebuild(snap[1] if snap else None, tail)
    finally:
        if owned:
            log.close()


async def state_at_live(
    store: EventStore, *, seq: int | None = None, at_us: int | None = None
) -> ClusterState:
    """``state_at`` through a running store (for the control plane's routes)."""
    at_seq: int | None = None
    if seq is None and at_us is not None:
        rows = await store.query(
            "SELECT coalesce(max(seq), 0) FROM events WHERE recorded_at <= make_timestamptz(?)",
            [at_us],
        )
        at_seq = int(rows[0][0])
    target = _target_seq(store.last_seq, seq, None, lambda _: 0) if at_seq is None else at_seq
    best: tuple[int, bytes] | None = None
    for name in SNAPSHOT_NAMES:
        found = await store.latest_snapshot(name, at_or_before=target)
        if found is not None and (best is None or found[0] > best[0]):
            best = found
    tail = await store.read(after=best[0] if best else 0, until_seq=target)
    return ClusterState.rebuild(best[1] if best else None, tail)


def _target_seq(last: int, seq: int | None, at_us: int | None, seq_at: Any) -> int:
    if seq is not None and at_us is not None:
        raise ValueError("give a seq or a time (at_us), not both")
    if seq is not None:
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        return min(seq, last)
    if at_us is not None:
        return int(seq_at(at_us))
    return last


def write_history_snapshots(
    source: str | Path | LogFile, *, every: int = HISTORY_EVERY
) -> list[int]:
    """Fold the log once and keep a ``history`` snapshot every ``every`` seqs; return new seqs.

    The control plane keeps only its newest few ``cluster`` snapshots; these keep
    ``state_at`` fast at any point of a long history. Incremental: it starts at the
    newest history snapshot already there.
    """
    log, owned = _as_log(source)
    try:
        last = log.last_seq
        folder = log.snapshot_dir
        done = sorted(
            int(p.stem.removeprefix("history-"))
            for p in folder.glob("history-*.snap")
            if p.stem.removeprefix("history-").isdigit()
        )
        start = done[-1] if done and log.hash_at(done[-1]) else 0
        snap = log.latest_snapshot(start) if start else None
        state = ClusterState.rebuild(snap[1] if snap else None, ())
        written: list[int] = []
        for mark in range(start + every, last + 1, every):
            state.apply_all(log.read(after=state.last_seq, until=mark))
            anchor = log.hash_at(mark)
            assert anchor is not None
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"history-{mark:015d}.snap"
            tmp = final.with_suffix(".tmp")
            tmp.write_bytes(anchor + state.snapshot())
            os.replace(tmp, final)
            written.append(mark)
        return written
    finally:
        if owned:
            log.close()


# -- diff --------------------------------------------------------------------------------------


class TaskChange(msgspec.Struct, frozen=True, kw_only=True):
    """One task's state and node at the two points (None where it did not exist)."""

    task_id: str
    state_from: str | None
    state_to: str | None
    node_from: str | None
    node_to: str | None


class NodeChange(msgspec.Struct, frozen=True, kw_only=True):
    """One node's liveness and allocations at the two points."""

    node: str
    online_from: bool | None
    online_to: bool | None
    allocated_cores_from: int
    allocated_cores_to: int
    allocated_memory_bytes_from: int
    allocated_memory_bytes_to: int
    allocated_gpus_from: list[int]
    allocated_gpus_to: list[int]


class StateDiff(msgspec.Struct, frozen=True, kw_only=True):
    """What changed between two states (``from_seq`` -> ``to_seq``)."""

    from_seq: int
    to_seq: int
    tasks_added: list[TaskChange]
    tasks_changed: list[TaskChange]
    tasks_removed: list[TaskChange]
    nodes_added: list[NodeChange]
    nodes_changed: list[NodeChange]
    nodes_removed: list[NodeChange]

    @property
    def empty(self) -> bool:
        """True when nothing changed."""
        return not any(
            (self.tasks_added, self.tasks_changed, self.tasks_removed)
            + (self.nodes_added, self.nodes_changed, self.nodes_removed)
        )

    def to_dict(self) -> dict[str, Any]:
        """The diff as JSON-able builtins."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


def diff(a: ClusterState, b: ClusterState) -> StateDiff:
    """Tasks and nodes that appeared, disappeared or changed from ``a`` to ``b``."""
    t_added, t_changed, t_removed = [], [], []
    for task_id in a.tasks.keys() | b.tasks.keys():
        old, new = a.tasks.get(task_id), b.tasks.get(task_id)
        change = TaskChange(
            task_id=task_id,
            state_from=old.state if old else None,
            state_to=new.state if new else None,
            node_from=old.node if old else None,
            node_to=new.node if new else None,
        )
        if old is None:
            t_added.append(change)
        elif new is None:
            t_removed.append(change)
        elif (old.state, old.node) != (new.state, new.node):
            t_changed.append(change)
    n_added, n_changed, n_removed = [], [], []
    for name in sorted(a.nodes.keys() | b.nodes.keys()):
        was, now = a.nodes.get(name), b.nodes.get(name)
        nchange = NodeChange(
            node=name,
            online_from=was.online if was else None,
            online_to=now.online if now else None,
            allocated_cores_from=was.allocated_cores if was else 0,
            allocated_cores_to=now.allocated_cores if now else 0,
            allocated_memory_bytes_from=was.allocated_memory_bytes if was else 0,
            allocated_memory_bytes_to=now.allocated_memory_bytes if now else 0,
            allocated_gpus_from=sorted(was.allocated_gpus) if was else [],
            allocated_gpus_to=sorted(now.allocated_gpus) if now else [],
        )
        if was is None:
            n_added.append(nchange)
        elif now is None:
            n_removed.append(nchange)
        elif (
            nchange.online_from != nchange.online_to
            or nchange.allocated_cores_from != nchange.allocated_cores_to
            or nchange.allocated_memory_bytes_from != nchange.allocated_memory_bytes_to
            or nchange.allocated_gpus_from != nchange.allocated_gpus_to
        ):
            n_changed.append(nchange)
    order = {tid: i for i, tid in enumerate([*a.tasks, *b.tasks])}

    def by_submission(changes: list[TaskChange]) -> list[TaskChange]:
        return sorted(changes, key=lambda c: order[c.task_id])

    return StateDiff(
        from_seq=a.last_seq,
        to_seq=b.last_seq,
        tasks_added=by_submission(t_added),
        tasks_changed=by_submission(t_changed),
        tasks_removed=by_submission(t_removed),
        nodes_added=n_added,
        nodes_changed=n_changed,
        nodes_removed=n_removed,
    )


# -- timelines and reasons -------------------------------------------------------------------


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One event of a task's history, with the time since the previous one."""

    seq: int
    kind: str
    recorded_at_us: int
    source: str
    since_previous_s: float | None
    detail: str


class PlacementExplanation(msgspec.Struct, frozen=True, kw_only=True):
    """Where a task was placed and why, or why it has not been."""

    task_id: str
    state: str
    placed: bool
    node: str | None = None
    policy: str = ""
    reason: str = ""
    cores: int = 0
    gpu_ids: tuple[int, ...] = ()
    numa_id: int | None = None
    rejected: tuple[Rejection, ...] = ()
    message: str = ""


def _spec_summary(spec: TaskSpec) -> str:
    parts = [f"{spec.cores} cores"]
    if spec.memory_bytes:
        parts.append(f"{spec.memory_bytes / (1 << 30):.3g} GiB")
    if spec.gpu_ids:
        parts.append(f"GPUs {list(spec.gpu_ids)}")
    return ", ".join(parts)


def describe(recorded: Recorded) -> str:
    """A short human sentence for one task event."""
    match recorded.event:
        case TaskSubmitted(spec=spec):
            command = " ".join([spec.command, *spec.args])
            return f"submitted by {spec.owner}: {command} ({_spec_summary(spec)})"
        case TaskPlaced() as e:
            gpus = f", GPUs {list(e.gpu_ids)}" if e.gpu_ids else ""
            return f"placed on {e.node} ({e.policy or 'manual'}: {e.reason}); {e.cores} cores{gpus}"
        case TaskDispatched(node=node):
            return f"run command sent to {node}"
        case TaskStarted() as e:
            what = f"container {e.container_id}" if e.container_id else f"pid {e.pid}"
            return f"started on {e.node} ({what})"
        case TaskPaused():
            return "paused"
        case TaskResumed():
            return "resumed"
        case TaskKillRequested(requested_by=who, reason=why):
            return f"kill requested by {who}" + (f": {why}" if why else "")
        case TaskPauseRequested(requested_by=who):
            return f"pause requested by {who}"
        case TaskResumeRequested(requested_by=who):
            return f"resume requested by {who}"
        case TaskFinished() as e:
            code = "" if e.exit_code is None else f" (exit code {e.exit_code})"
            return f"{e.state}{code}" + (f": {e.message}" if e.message else "")
        case TaskLost(node=node, reason=why):
            return f"lost on {node}: {why}"
        case _:
            return recorded.kind


def timeline_of(records: Sequence[Recorded]) -> list[TimelineEntry]:
    """The timeline of one task's events (pure: the caller reads the stream)."""
    out: list[TimelineEntry] = []
    previous: int | None = None
    for r in records:
        since = None if previous is None else (r.recorded_at_us - previous) / 1e6
        out.append(
            TimelineEntry(
                seq=r.seq,
                kind=r.kind,
                recorded_at_us=r.recorded_at_us,
                source=r.source,
                since_previous_s=since,
                detail=describe(r),
            )
        )
        previous = r.recorded_at_us
    return out


def task_timeline(source: str | Path | LogFile, task_id: str) -> list[TimelineEntry]:
    """Every event of a task, oldest first, with durations between them."""
    log, owned = _as_log(source)
    try:
        records = log.read(streams=[f"task:{task_id}"])
    finally:
        if owned:
            log.close()
    if not records:
        raise UnknownTask(f"no task {task_id!r} in the log")
    return timeline_of(records)


def explain_placement(
    records: Sequence[Recorded], state: ClusterState | None = None
) -> PlacementExplanation:
    """Why a task sits where it does, from its ``task.placed`` events (pure)."""
    if not records:
        raise UnknownTask("no events for that task")
    task_id = records[0].stream.removeprefix("task:")
    task_state = state.tasks[task_id].state if state and task_id in state.tasks else "unknown"
    placed = [r.event for r in records if isinstance(r.event, TaskPlaced)]
    if placed:
        e = placed[-1]
        return PlacementExplanation(
            task_id=task_id,
            state=task_state,
            placed=True,
            node=e.node,
            policy=e.policy,
            reason=e.reason,
            cores=e.cores,
            gpu_ids=e.gpu_ids,
            numa_id=e.numa_id,
            rejected=e.rejected,
            message=f"placed on {e.node} by {e.policy or 'a manual target'}: {e.reason}",
        )
    if task_state == "pending":
        spec = next(r.event.spec for r in records if isinstance(r.event, TaskSubmitted))
        blockers = _blockers(state, spec) if state else ()
        message = "still pending: no node has had room for it yet"
        return PlacementExplanation(
            task_id=task_id, state=task_state, placed=False, rejected=blockers, message=message
        )
    return PlacementExplanation(
        task_id=task_id,
        state=task_state,
        placed=False,
        message=f"never placed; it ended as {task_state}",
    )


def _blockers(state: ClusterState, spec: TaskSpec) -> tuple[Rejection, ...]:
    out = []
    for node in state.nodes.values():
        if not node.online:
            reason = "offline"
        elif node.free_cores < spec.cores:
            reason = f"{node.free_cores} free cores < {spec.cores}"
        elif spec.memory_bytes and node.free_memory_bytes < spec.memory_bytes:
            reason = f"{node.free_memory_bytes} free memory bytes < {spec.memory_bytes}"
        elif set(spec.gpu_ids) - set(node.free_gpus):
            reason = f"GPUs {sorted(set(spec.gpu_ids) - set(node.free_gpus))} busy or absent"
        else:
            reason = "has room now; the scheduler will place it on its next pass"
        out.append(Rejection(node=node.name, reason=reason))
    return tuple(out)


def why(source: str | Path | LogFile, task_id: str) -> PlacementExplanation:
    """Where the task was placed and why, and why the other nodes were rejected."""
    log, owned = _as_log(source)
    try:
        records = log.read(streams=[f"task:{task_id}"])
        if not records:
            raise UnknownTask(f"no task {task_id!r} in the log")
        return explain_placement(records, state_at(log))
    finally:
        if owned:
            log.close()
