"""Benchmarks of jobs (job files, issue 16).

Prints one ``name value`` line per figure:

- ``gang_schedule_1000_jobs_s``: the pure scheduler time of one ``Scheduler.plan`` over
  1000 queued multi-node jobs (2 to 8 ranks each, 1 to 8 cores and 0 to 2 GPUs per rank,
  5000 ranks in all) on 20 nodes (16 or 32 cores, half with 4 or 8 GPUs of two models),
  median of repeated passes over the same state (``plan`` folds nothing, so each pass
  sees the same queue: the first jobs are placed, the rest do not fit). Goal: < 0.5 s;
- ``gang_schedule_1000_jobs_reserving_s``: the same when every job has waited past
  ``[jobs] reserve_after``, so each one that does not fit also picks the nodes held for
  it (the dearer path);
- ``schedule_plain_tasks_same_count_s``: the floor it is compared to: one pass over as
  many plain tasks as the jobs have ranks, asking for the same resources (placed one by
  one: no gang, no reservation).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from control_plane.scheduler import Scheduler
from events.envelope import Recorded, new_event
from events.ids import new_id, new_job_id
from events.jobs import rank_command
from events.types import (
    AnyEvent,
    GpuInfo,
    JobSpec,
    JobSubmitted,
    NodeRegistered,
    TaskSpec,
    TaskSubmitted,
)
from projections.cluster import ClusterState

JOBS = 1000
NODES = 20
GIB = 1 << 30


def report(name: str, value: float) -> None:
    """Print one figure."""
    print(f"{name} {value:.6g}", flush=True)


def _fold(state: ClusterState, events: list[AnyEvent]) -> None:
    records = []
    for i, event in enumerate(events, state.last_seq + 1):
        new = new_event(event, source="bench")
        records.append(
            Recorded(
                seq=i,
                id=new.id,
                kind=new.kind,
                stream=new.stream,
                source=new.source,
                occurred_at_us=0,
                recorded_at_us=0,
                schema_version=new.schema_version,
                hash=b"",
                event=new.event,
            )
        )
    state.apply_all(records)


def _cluster() -> ClusterState:
    state = ClusterState()
    models = ["Tesla V100-SXM2-16GB", "NVIDIA A100-SXM4-80GB"]
    _fold(
        state,
        [
            NodeRegistered(
                node=f"node{i:02d}",
                address=f"10.0.0.{i}",
                cores=16 if i % 2 else 32,
                memory_bytes=128 * GIB,
                gpus=tuple(
                    GpuInfo(id=g, name=models[i % 4 // 2]) for g in range((4, 8, 0, 0)[i % 4])
                ),
            )
            for i in range(NODES)
        ],
    )
    return state


def _workload(rng: random.Random) -> list[tuple[int, int, int, str | None]]:
    """(ranks, cores, GPUs, model) per job: 2 to 8 ranks, 5000 ranks in all."""
    sizes = [2, 3, 4, 5, 6, 7, 8]
    jobs = [rng.choice(sizes) for _ in range(JOBS)]
    # Even out to 5000 ranks so the floor below is comparable from run to run.
    while sum(jobs) != 5 * JOBS:
        i = rng.randrange(JOBS)
        step = 1 if sum(jobs) < 5 * JOBS else -1
        if 2 <= jobs[i] + step <= 8:
            jobs[i] += step
    out = []
    for ranks in jobs:
        gpus = rng.choice([0, 0, 1, 2])
        out.append((ranks, rng.randint(1, 8), gpus, rng.choice([None, "V100", "A100"])))
    return out


def _jobs_state(work: list[tuple[int, int, int, str | None]]) -> ClusterState:
    state = _cluster()
    command, args = rank_command(None, "true")
    events: list[AnyEvent] = []
    for ranks, cores, gpus, model in work:
        job_id = new_job_id()
        spec = JobSpec(num_nodes=ranks, run="true", cores=cores, gpu_count=gpus, gpu_model=model)
        rank_events = [
            TaskSubmitted(
                task_id=new_id(),
                spec=TaskSpec(
                    command=command,
                    args=args,
                    cores=cores,
                    gpu_count=gpus,
                    gpu_model=model,
                    batch_id=job_id,
                    job_id=job_id,
                    rank=rank,
                ),
            )
            for rank in range(ranks)
        ]
        events.append(
            JobSubmitted(
                job_id=job_id,
                spec=spec,
                owner="anonymous",
                rank_task_ids=tuple(e.task_id for e in rank_events),
            )
        )
        events += rank_events
    _fold(state, events)
    return state


def _tasks_state(work: list[tuple[int, int, int, str | None]]) -> ClusterState:
    state = _cluster()
    events: list[AnyEvent] = [
        TaskSubmitted(
            task_id=new_id(),
            spec=TaskSpec(
                command="true", cores=cores, gpu_count=gpus, gpu_model=model, batch_id="b"
            ),
        )
        for ranks, cores, gpus, model in work
        for _ in range(ranks)
    ]
    _fold(state, events)
    return state


def _median_pass(scheduler: Scheduler, state: ClusterState, now_us: int = 0) -> float:
    samples = []
    placed = []
    for _ in range(7):
        start = time.perf_counter()
        placed = scheduler.plan(state, now_us=now_us)
        samples.append(time.perf_counter() - start)
    assert placed, "the benchmark's cluster should take some of the queue"
    return statistics.median(samples)


def main() -> None:
    work = _workload(random.Random(16))
    jobs = _jobs_state(work)
    assert len(jobs.pending) == 5 * JOBS
    report("gang_schedule_1000_jobs_s", _median_pass(Scheduler(), jobs))
    report(
        "gang_schedule_1000_jobs_reserving_s",
        _median_pass(Scheduler(reserve_after_s=1), jobs, now_us=10_000_000),
    )
    report("schedule_plain_tasks_same_count_s", _median_pass(Scheduler(), _tasks_state(work)))


if __name__ == "__main__":
    main()
