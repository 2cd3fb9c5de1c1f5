"""Time travel over the log: state at a seq or a time, and diffs between two points.

Functions take a database path or a ``LogFile`` (offline, or ``LogFile.over`` a cursor
of a running store) and are synchronous: callers on an event loop run them in a thread.
They restore the nearest snapshot at or before the point (the control plane's
``cluster`` snapshots, or the ``history`` ones of ``replay_tools.snapshots``) and fold
only the events after it, so no query scans the whole log.

Two depths. ``state_at(..., ended=True)`` (the default) is the whole state, byte for
byte the fold of the log up to the point. ``ended=False`` leaves out the tasks that had
ended by then (``ENDED_STATES``: a final state, or lost), the jobs that had ended and
the anomalies: the live part of the cluster, which costs one small snapshot and at most
``HISTORY_EVERY`` events however long the history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from events.archive_files import ArchiveFiles, SegmentUnavailable
from events.envelope import Recorded
from events.types import JobSubmitted, TaskSubmitted
from projections.archive import ArchiveUnavailable, NumberTable, TaskTable
from projections.cluster import ClusterState, SnapshotFormatError
from projections.tasks import ENDED_STATES
from replay_tools.logfile import CLUSTER_SNAPSHOT, LogFile, as_log
from replay_tools.points import Point
from replay_tools.snapshots import (
    HISTORY_EVERY,
    latest_history,
    restore_full,
    restore_live_part,
    write_history_snapshots,
)

__all__ = [
    "HISTORY_EVERY",
    "LogFile",
    "StateDiff",
    "diff",
    "diff_between",
    "resolve_point",
    "state_at",
    "without_ended",
    "write_history_snapshots",
]

# Rough costs (2-core VM) to choose the cheaper place to start a restore from.
_FOLD_S_PER_EVENT = 4e-6
_DECODE_S_PER_BYTE = 5e-9
# Diffs over at most this many events fold forward from the earlier point.
DIFF_FOLD_LIMIT = 200_000


def state_at(
    source: str | Path | LogFile,
    *,
    seq: int | None = None,
    at_us: int | None = None,
    ended: bool = True,
) -> ClusterState:
    """The cluster exactly as it was after ``seq`` (or the last event at or before ``at_us``).

    With ``ended=False``, without the tasks that had ended by then (final, or lost).
    """
    log, owned = as_log(source)
    try:
        target = _target_seq(log.last_seq, seq, at_us, log.seq_at)
        if ended:
            return _full_state(log, target)
        return without_ended(_live_state(log, target)[0])
    finally:
        if owned:
            log.close()


def resolve_point(log: LogFile, point: Point) -> int:
    """The seq a point names: the seq itself (at most the last), or the last one by a time."""
    return _target_seq(log.last_seq, point.seq, point.at_us, log.seq_at)


def without_ended(state: ClusterState) -> ClusterState:
    """A view of ``state`` without the tasks that ended (final, or lost), the jobs that
    ended, nor anomalies. Archived tasks are all final: only the others are looked at."""
    out = ClusterState()
    out.last_seq = state.last_seq
    out.tasks = TaskTable(t for _, t in state.tasks.live() if t.state not in ENDED_STATES)
    out.nodes = state.nodes
    out.pending = dict(state.pending)
    out.last_number = state.last_number
    out.numbers = NumberTable(out.tasks)
    out.numbers.live = {
        n: task_id for n, task_id in state.numbers.live.items() if task_id in out.tasks
    }
    out.jobs = {j: state.jobs[j] for j in state.active_jobs}
    out.active_jobs = dict(state.active_jobs)
    out.volumes = dict(state.volumes)
    return out


def _restore_cluster(log: LogFile, data: bytes) -> ClusterState | None:
    """A ``cluster`` snapshot's state, its archive read from beside the log when needed;
    None when a segment it names is gone (the caller starts from further back)."""
    files = ArchiveFiles(log.snapshot_dir)
    try:
        state = ClusterState.restore(data, lambda ref: files.read(ref.seq, ref.token))
        files.check((r.seq, r.token) for r in state.tasks.refs())
    except (SnapshotFormatError, SegmentUnavailable, ArchiveUnavailable):
        return None
    return state


def _full_state(log: LogFile, target: int) -> ClusterState:
    start, state = 0, None
    history = latest_history(log, target)
    for seq, path in log.snapshot_files(CLUSTER_SNAPSHOT, target):
        if history is not None and seq <= history.last_seq:
            break
        data = log.anchored(seq, path)
        if data is not None:
            state = _restore_cluster(log, data)
            if state is not None:
                start = seq
                break
    if state is None and history is not None:
        state = restore_full(log, history)
        start = history.last_seq if state is not None else 0
    state = state if state is not None else ClusterState()
    state.apply_all(log.read(after=start, until=target))
    return state


def _live_state(log: LogFile, target: int) -> tuple[ClusterState, str]:
    """The state at ``target`` (ended tasks possibly missing) and the greatest task id then."""
    history = latest_history(log, target)
    start = history.last_seq if history is not None else 0
    from_history = (target - start) * _FOLD_S_PER_EVENT
    for seq, path in log.snapshot_files(CLUSTER_SNAPSHOT, target):
        if seq > start:
            from_cluster = path.stat().st_size * _DECODE_S_PER_BYTE
            from_cluster += (target - seq) * _FOLD_S_PER_EVENT
            if history is None or from_cluster < from_history:
                return _with_max_id(_full_state(log, target))
        break
    if history is None:
        return _with_max_id(_full_state(log, target))
    tail = log.read(after=start, until=target)
    max_id = history.max_task_id
    for r in tail:
        if isinstance(r.event, TaskSubmitted):
            if r.event.task_id <= max_id:
                # Not newer than every earlier id: maybe an ended task submitted again,
                # which only the whole state can tell apart.
                return _with_max_id(_full_state(log, target))
            max_id = r.event.task_id
    if _submits_an_earlier_job(log, start, tail):
        return _with_max_id(_full_state(log, target))
    state = restore_live_part(history)
    state.apply_all(tail)
    return state, max_id


def _submits_an_earlier_job(log: LogFile, start: int, tail: list[Recorded]) -> bool:
    """Whether the tail submits a job id already submitted at or before ``start``: the
    fold refuses it, which only the whole state (with the ended jobs) can tell. Job ids
    are random, not ordered like task ids, so the log is asked (rare: almost never)."""
    streams = [r.stream for r in tail if isinstance(r.event, JobSubmitted)]
    if not streams:
        return False
    rows = log.con.execute(
        "SELECT 1 FROM events WHERE seq <= ? AND kind = 'job.submitted'"
        " AND list_contains(?::VARCHAR[], stream) LIMIT 1",
        [start, streams],
    ).fetchall()
    return bool(rows)


def _with_max_id(state: ClusterState) -> tuple[ClusterState, str]:
    return state, state.tasks.max_id()


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


def _needs_ended_tasks(early: ClusterState, max_id: str, tail: list[Recorded]) -> bool:
    """Whether folding ``tail`` on the live part could differ from folding it on the whole.

    It could for an event of a task that had ended before (a lost task its node reports
    late), or a resubmission of an ended task's id: both rare, both then read in full.
    """
    known = set(early.tasks)
    for r in tail:
        if isinstance(r.event, TaskSubmitted):
            if r.event.task_id <= max_id:
                return True
            known.add(r.event.task_id)
        elif r.stream.startswith("task:") and r.stream[5:] not in known:
            return True
    return False


def diff_between(source: str | Path | LogFile, a: Point, b: Point) -> StateDiff:
    """What changed from point ``a`` to point ``b`` (``b`` may be the earlier one).

    Over a short stretch it folds forward from the earlier point's live part: tasks
    that had ended before it cannot change, so they cannot appear in the diff either.
    """
    log, owned = as_log(source)
    try:
        seq_a, seq_b = resolve_point(log, a), resolve_point(log, b)
        low, high = sorted((seq_a, seq_b))
        if high - low > DIFF_FOLD_LIMIT:
            early, late = _full_state(log, low), _full_state(log, high)
        else:
            early, max_id = _live_state(log, low)
            tail = log.read(after=low, until=high)
            if _needs_ended_tasks(early, max_id, tail):
                early = _full_state(log, low)
            late = ClusterState.restore(early.snapshot())
            late.apply_all(tail)
        return diff(early, late) if seq_a <= seq_b else diff(late, early)
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
        changes = (self.tasks_added, self.tasks_changed, self.tasks_removed)
        return not any(changes) and not (
            self.nodes_added or self.nodes_changed or self.nodes_removed
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
