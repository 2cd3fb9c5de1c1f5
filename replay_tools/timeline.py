"""Task timelines and placement reasons, read from a task's own stream."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec

from events.envelope import Recorded
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
from replay_tools.replay import LogFile, as_log, state_at


class UnknownTask(LookupError):
    """The log holds no event for the task id asked about."""


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
    log, owned = as_log(source)
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
    log, owned = as_log(source)
    try:
        records = log.read(streams=[f"task:{task_id}"])
        if not records:
            raise UnknownTask(f"no task {task_id!r} in the log")
        return explain_placement(records, state_at(log))
    finally:
        if owned:
            log.close()
