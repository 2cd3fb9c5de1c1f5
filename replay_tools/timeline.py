"""Task and job timelines, and placement reasons.

A task's timeline is its own stream and its SSH sessions'; a job's rank's also has the
job's events that concern it (placed, phases, stop, end), so a rank's story reads whole.
A job's timeline is its own stream and its ranks' key events, each marked with its rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from events.envelope import Recorded
from events.ids import is_job_id
from events.types import JobSubmitted, Rejection, TaskPlaced, TaskSpec, TaskSubmitted
from projections.cluster import ClusterState
from projections.durations import TaskDurations, durations, job_durations
from projections.jobs import job_status
from projections.sql import task_numbers_sql
from replay_tools.logfile import LogFile, as_log
from replay_tools.points import iso
from replay_tools.replay import state_at
from replay_tools.summaries import placement_reason, summarize
from replay_tools.task_names import UnknownTask


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One event of a task's history, with the time since the previous one."""

    seq: int
    kind: str
    recorded_at_us: int
    source: str
    since_previous_s: float | None
    detail: str


# The job's events a rank's timeline shows among its own (its job.setup_done is its own).
RANK_SEES = ("job.placed", "job.phase", "job.stop_requested", "job.finished")
# The ranks' events a job's timeline shows among the job's own.
JOB_SEES = frozenset(
    {
        "task.placed",
        "task.started",
        "job.setup_done",
        "task.kill_requested",
        "task.finished",
        "task.lost",
        "task.unreachable",
        "task.reconnected",
    }
)


class UnknownJob(LookupError):
    """No job has that id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}")
        self.job_id = job_id


class PlacementExplanation(msgspec.Struct, frozen=True, kw_only=True):
    """Where a task was placed and why, or why it has not been."""

    task_id: str
    state: str
    placed: bool
    number: int = 0
    node: str | None = None
    policy: str = ""
    reason: str = ""
    cores: int = 0
    gpu_ids: tuple[int, ...] = ()
    numa_id: int | None = None
    rejected: tuple[Rejection, ...] = ()
    message: str = ""
    # A job's rank: its job and rank (placed with every other rank at once).
    job_id: str | None = None
    rank: int | None = None


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
                detail=summarize(r.event),
            )
        )
        previous = r.recorded_at_us
    return out


def task_history(source: str | Path | LogFile, task_id: str) -> dict[str, Any]:
    """A task's timeline as one JSON-ready document: its state now and every event
    (its SSH sessions' among them)."""
    records = _task_records(source, task_id)
    own = ClusterState()
    stream = f"task:{task_id}"
    own.apply_all([r for r in records if r.stream == stream])  # its own events decide its state
    task = own.tasks.get(task_id)
    first = records[0].recorded_at_us
    took = durations(task) if task is not None else TaskDurations(None, None, None)
    return {
        "task_id": task_id,
        "number": number_of(source, task_id, records),
        "state": task.state if task is not None else "unknown",
        "node": task.node if task is not None else None,
        **took._asdict(),
        "events": [
            {
                **msgspec.to_builtins(entry),
                "recorded_at": iso(entry.recorded_at_us),
                "since_first_s": (entry.recorded_at_us - first) / 1e6,
            }
            for entry in timeline_of(records)
        ],
    }


def task_timeline(source: str | Path | LogFile, task_id: str) -> list[TimelineEntry]:
    """Every event of a task and of its SSH sessions, oldest first, with durations between."""
    return timeline_of(_task_records(source, task_id))


def _task_records(source: str | Path | LogFile, task_id: str) -> list[Recorded]:
    """The task's own events and its SSH sessions' (recorded in their own streams,
    ``ssh:<session>``), and for a job's rank the job's events of ``RANK_SEES``, in seq
    order; ``UnknownTask`` when the task has no event of its own."""
    stream = f"task:{task_id}"
    log, owned = as_log(source)
    try:
        records = log.read(streams=[stream], sessions_of=task_id)
        job_id = next(
            (r.event.spec.job_id for r in records if isinstance(r.event, TaskSubmitted)), None
        )
        if job_id is not None:
            job = [r for r in log.read(streams=[f"job:{job_id}"]) if r.kind in RANK_SEES]
            records = sorted([*records, *job], key=lambda r: r.seq)
    finally:
        if owned:
            log.close()
    if not any(r.stream == stream for r in records):
        raise UnknownTask(task_id)
    return records


def is_job(source: str | Path | LogFile, ident: str) -> bool:
    """Whether ``ident`` is the id of a job in the log (job ids are exact, never prefixes)."""
    if not is_job_id(ident):
        return False
    log, owned = as_log(source)
    try:
        rows = log.con.execute(
            "SELECT 1 FROM events WHERE stream = ? AND kind = 'job.submitted' LIMIT 1",
            [f"job:{ident}"],
        ).fetchall()
    finally:
        if owned:
            log.close()
    return bool(rows)


def job_history(source: str | Path | LogFile, job_id: str) -> dict[str, Any]:
    """A job's timeline as one JSON-ready document, shaped as a task's (``task_history``):
    its status now, its ranks, and its own events with its ranks' key ones (``JOB_SEES``),
    each event naming its rank (null for the job's own)."""
    log, owned = as_log(source)
    try:
        own = log.read(streams=[f"job:{job_id}"])
        submitted = next((r.event for r in own if isinstance(r.event, JobSubmitted)), None)
        if submitted is None:
            raise UnknownJob(job_id)
        rank_of = {task_id: rank for rank, task_id in enumerate(submitted.rank_task_ids)}
        ranks = log.read(streams=[f"task:{t}" for t in rank_of])
    finally:
        if owned:
            log.close()
    records = sorted([*own, *ranks], key=lambda r: r.seq)
    state = ClusterState()
    state.apply_all(records)  # the job's and its ranks' own events decide their states
    job = state.jobs[job_id]
    shown = [r for r in records if r.stream == f"job:{job_id}" or r.kind in JOB_SEES]
    first = shown[0].recorded_at_us
    rank_docs = []
    for task_id, rank in rank_of.items():
        task = state.tasks.get(task_id)
        rank_docs.append(
            {
                "rank": rank,
                "task_id": task_id,
                "number": task.number if task is not None else 0,
                "node": task.node if task is not None else None,
                "state": task.state if task is not None else "pending",
            }
        )
    return {
        "job_id": job_id,
        "name": job.name,
        "owner": job.owner,
        "status": job_status(job, state.tasks),
        "phase": job.phase,
        "num_nodes": job.num_nodes,
        "nodes": list(job.nodes),
        "message": job.message,
        **job_durations(job)._asdict(),
        "ranks": rank_docs,
        "events": [
            {
                **msgspec.to_builtins(entry),
                "recorded_at": iso(entry.recorded_at_us),
                "since_first_s": (entry.recorded_at_us - first) / 1e6,
                "rank": rank_of.get(record.stream.removeprefix("task:")),
            }
            for entry, record in zip(timeline_of(shown), shown, strict=True)
        ],
    }


def explain_placement(
    records: Sequence[Recorded], state: ClusterState | None = None
) -> PlacementExplanation:
    """Why a task sits where it does, from its ``task.placed`` events (pure)."""
    if not records:
        raise ValueError("explain_placement needs the task's events")
    task_id = records[0].stream.removeprefix("task:")
    task_state = state.tasks[task_id].state if state and task_id in state.tasks else "unknown"
    number = state.tasks[task_id].number if state and task_id in state.tasks else 0
    placed = [r.event for r in records if isinstance(r.event, TaskPlaced)]
    spec = next((r.event.spec for r in records if isinstance(r.event, TaskSubmitted)), None)
    job_id, rank = (spec.job_id, spec.rank) if spec is not None else (None, None)
    gang = _gang(state, job_id, rank)
    if placed:
        e = placed[-1]
        where = f"placed on {e.node}"
        if gang:
            where += f" as {gang}"  # the placement's reason says it was a gang's
        return PlacementExplanation(
            task_id=task_id,
            number=number,
            state=task_state,
            placed=True,
            node=e.node,
            policy=e.policy,
            reason=e.reason,
            cores=e.cores,
            gpu_ids=e.gpu_ids,
            numa_id=e.numa_id,
            rejected=e.rejected,
            message=f"{where}: {placement_reason(e)}",
            job_id=job_id,
            rank=rank,
        )
    if task_state == "pending" and spec is not None:
        blockers = _blockers(state, spec) if state else ()
        message = "still pending: no node has had room for it yet"
        if gang:
            nodes = state.jobs[job_id].num_nodes if state and job_id in state.jobs else 0
            message = (
                f"still pending: {gang} waits until {nodes} nodes have room at the same time"
                " (gang placement: every rank at once, never some)"
            )
        return PlacementExplanation(
            task_id=task_id,
            number=number,
            state=task_state,
            placed=False,
            rejected=blockers,
            message=message,
            job_id=job_id,
            rank=rank,
        )
    return PlacementExplanation(
        task_id=task_id,
        number=number,
        state=task_state,
        placed=False,
        message=f"never placed; it ended as {task_state}",
        job_id=job_id,
        rank=rank,
    )


def _gang(state: ClusterState | None, job_id: str | None, rank: int | None) -> str:
    """``rank 1 of job train (abcd1234)`` for a job's rank; empty for another task."""
    if job_id is None:
        return ""
    job = state.jobs.get(job_id) if state is not None else None
    name = f"{job.name} ({job_id})" if job is not None else job_id
    return f"rank {rank} of job {name}"


def _blockers(state: ClusterState, spec: TaskSpec) -> tuple[Rejection, ...]:
    out = []
    for node in state.nodes.values():
        no_account = node.account_refusal(spec.owner)
        if not node.online:
            reason = "offline"
        elif no_account:
            reason = no_account
        elif node.free_cores < spec.cores:
            reason = f"{node.free_cores} free cores < {spec.cores}"
        elif spec.memory_bytes and node.free_memory_bytes < spec.memory_bytes:
            reason = f"{node.free_memory_bytes} free memory bytes < {spec.memory_bytes}"
        elif set(spec.gpu_ids) - set(node.free_gpus):
            reason = f"GPUs {sorted(set(spec.gpu_ids) - set(node.free_gpus))} busy or absent"
        elif spec.gpu_count and len(node.free_gpus) < spec.gpu_count:
            reason = f"{len(node.free_gpus)} free GPUs < {spec.gpu_count}"
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
            raise UnknownTask(task_id)
        # The task's own stream gives its state; the nodes (for what blocks a pending
        # task) come from the live part of the current state: no ended task is needed.
        own = ClusterState()
        own.apply_all(records)
        own.tasks[task_id].number = number_of(log, task_id, records)  # not the own fold's
        nodes = state_at(log, ended=False)
        nodes.tasks = own.tasks
        job_id = own.tasks[task_id].spec.job_id
        if job_id is not None and job_id not in nodes.jobs:  # ended: not in the live part
            job = ClusterState()
            job.apply_all(log.read(streams=[f"job:{job_id}"]))
            nodes.jobs.update(job.jobs)
        return explain_placement(records, nodes)
    finally:
        if owned:
            log.close()


def number_of(source: str | Path | LogFile, task_id: str, records: Sequence[Recorded]) -> int:
    """The task's number: its ``task.submitted`` carries it, or, recorded before numbers
    existed, its place among the submissions (0 when it was never submitted)."""
    for r in records:
        if isinstance(r.event, TaskSubmitted) and r.event.number:
            return r.event.number
    log, owned = as_log(source)
    try:
        rows = log.con.execute(  # read to its end: an open result blocks the next query
            f"SELECT number FROM ({task_numbers_sql()}) WHERE task_id = ? LIMIT 1", [task_id]
        ).fetchall()
    finally:
        if owned:
            log.close()
    return int(rows[0][0]) if rows else 0
