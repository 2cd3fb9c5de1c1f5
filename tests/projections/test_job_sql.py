"""Property test: the ``jobs`` and ``job_ranks`` SQL views equal the Python fold of jobs."""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.job_histories import JobSimulation
from support.thorough import examples

from events.envelope import Recorded
from events.log_reader import read_only
from events.store import EventStore
from projections.cluster import ClusterState
from projections.durations import job_durations
from projections.jobs import job_status, rank_states
from replay_tools.analytics import view_sql

JOB_FIELDS = (
    "owner",
    "num_nodes",
    "phase",
    "submitted_at_us",
    "placed_at_us",
    "run_at_us",
    "finished_at_us",
    "stop_requested_by",
    "final_state",
    "failed_rank",
    "message",
    "last_seq",
)


def python_jobs(state: ClusterState) -> dict[str, dict[str, Any]]:
    out = {}
    for job in state.jobs.values():
        spec = job.spec
        out[job.job_id] = {
            **{f: getattr(job, f) for f in JOB_FIELDS},
            "name": job.name,
            "status": job_status(job, state.tasks),
            "nodes": list(job.nodes),
            "cores": spec.cores,
            "memory_bytes": spec.memory_bytes,
            "gpu_count": spec.gpu_count,
            "gpu_model": spec.gpu_model,
            "container": spec.container,
            "image_id": spec.resources.image_id,
            **job_durations(job)._asdict(),
        }
    return out


def python_ranks(state: ClusterState) -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for job in state.jobs.values():
        states = rank_states(job, state.tasks)
        for rank, task_id in enumerate(job.rank_task_ids):
            task = state.tasks.get(task_id)
            out[(job.job_id, rank)] = {
                "task_id": task_id,
                "state": states[rank],
                "node": task.node if task else None,
                "address": job.addresses[rank] if job.addresses else None,
                "exit_code": task.exit_code if task else None,
                "setup_done": rank in job.setup_done,
                "last_seq": task.last_seq if task else None,  # its setup report counts
            }
    return out


async def sql_rows(store: EventStore, upto: int) -> tuple[dict[str, Any], dict[Any, Any]]:
    views = view_sql(f"(SELECT * FROM events WHERE seq <= {upto})")

    def rows(sql: str) -> list[dict[str, Any]]:
        cur = store.reader_cursor()
        try:
            with read_only(cur):
                result = cur.execute(sql)
                names = [d[0] for d in result.description]
                return [dict(zip(names, r, strict=True)) for r in result.fetchall()]
        finally:
            cur.close()

    jobs = {
        r["job_id"]: {f: r[f] for f in (*JOB_FIELDS, "name", "status", "nodes")}
        | {
            f: r[f]
            for f in (
                "cores",
                "memory_bytes",
                "gpu_count",
                "gpu_model",
                "container",
                "image_id",
                "queue_wait_s",
                "setup_time_s",
                "run_time_s",
            )
        }
        for r in rows(views["jobs"])
    }
    ranks = {
        (r["job_id"], r["rank"]): {
            "task_id": r["task_id"],
            "state": r["state"],
            "node": r["node"],
            "address": r["address"],
            "exit_code": r["exit_code"],
            "setup_done": r["setup_done_at_us"] is not None,
            "last_seq": r["last_seq"],
        }
        for r in rows(views["job_ranks"])
    }
    return jobs, ranks


async def record(path: Path, seed: int, jobs: int, nodes: int) -> tuple[EventStore, list[Recorded]]:
    sim = JobSimulation(random.Random(seed), nodes=nodes)
    store = await EventStore.open(path)
    for commit in sim.run(jobs):  # commit by commit, as the host appends them
        await store.append(commit)
    return store, await store.read()


@settings(
    max_examples=examples(10, 120), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    seed=st.integers(0, 2**32 - 1),
    jobs=st.integers(0, 10),
    nodes=st.integers(1, 4),
    cuts=st.lists(st.floats(0, 1), min_size=1, max_size=3),
)
def test_the_jobs_view_equals_the_python_fold(
    seed: int, jobs: int, nodes: int, cuts: list[float]
) -> None:
    async def check() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            store, records = await record(Path(tmp) / "log.duckdb", seed, jobs, nodes)
            try:
                # Mid-history (jobs queued, in setup, running, failing, being stopped) and at
                # the end (every job ended)
                for upto in sorted({int(len(records) * c) for c in cuts} | {len(records)}):
                    state = ClusterState()
                    state.apply_all(records[:upto])
                    assert not state.anomalies
                    got_jobs, got_ranks = await sql_rows(store, upto)
                    assert got_jobs == python_jobs(state), upto
                    assert got_ranks == python_ranks(state), upto
            finally:
                await store.close()

    asyncio.run(check())


def test_the_histories_hold_every_job_status() -> None:
    """The property's histories are worth checking: every status appears, at the end and
    on the way (a sanity check of the simulation, not of the views)."""
    ended: set[str] = set()
    live: set[str] = set()
    for seed in range(10):
        sim = JobSimulation(random.Random(seed), nodes=3)
        for _ in sim.run(8):
            live |= {job_status(sim.state.jobs[j], sim.state.tasks) for j in sim.state.active_jobs}
        ended |= {j.final_state or "" for j in sim.state.jobs.values()}
    assert ended == {"completed", "failed", "stopped"}
    assert live >= {"pending", "running", "failed", "stopped"}
