"""Property tests: the Python fold equals the SQL projection, and snapshots are faithful."""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.factories import record_in_memory
from support.histories import ClusterSimulation
from support.thorough import examples

from events.log_reader import read_only
from events.store import EventStore
from projections.cluster import ClusterState
from projections.sql import nodes_sql, tasks_sql

histories = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "nodes": st.integers(1, 5),
        "tasks": st.integers(0, 60),
        "offline": st.sampled_from([0.0, 0.02, 0.1]),
        # Logs from before task numbers, numbered ones, and old ones continued by a new host
        "numbered_after": st.sampled_from([None, 0, 5]),
    }
)

TASK_FIELDS = (
    "number",
    "state",
    "node",
    "cores",
    "memory_bytes",
    "numa_id",
    "submitted_at_us",
    "placed_at_us",
    "started_at_us",
    "finished_at_us",
    "exit_code",
    "pid",
    "container_id",
    "kill_requested_by",
    "last_seq",
)
NODE_FIELDS = (
    "address",
    "online",
    "cores",
    "memory_bytes",
    "registered_at_us",
    "last_seen_us",
    "cpu_percent",
    "heartbeats",
    "allocated_cores",
    "allocated_memory_bytes",
)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def record_history(path: Path, params: dict[str, Any]) -> tuple[EventStore, list]:
    sim = ClusterSimulation(
        random.Random(params["seed"]),
        nodes=int(params["nodes"]),
        offline_chance=float(params["offline"]),
        numbered_after=params["numbered_after"],
    )
    events = list(sim.events(int(params["tasks"])))
    store = await EventStore.open(path)
    # Append in irregular batches, as the host would
    rng = random.Random(params["seed"])
    i = 0
    while i < len(events):
        n = rng.randint(1, 20)
        await store.append(events[i : i + n])
        i += n
    return store, await store.read()


def python_rows(state: ClusterState) -> tuple[dict, dict]:
    tasks = {
        t.task_id: {
            **{f: getattr(t, f) for f in TASK_FIELDS},
            "gpu_ids": sorted(t.gpu_ids),
            "command": t.spec.command,
            "args": list(t.spec.args),
            "owner": t.spec.owner,
            "batch_id": t.spec.batch_id,
        }
        for t in state.tasks.values()
    }
    nodes = {
        n.name: {
            **{f: getattr(n, f) for f in NODE_FIELDS},
            "allocated_gpus": sorted(n.allocated_gpus),
        }
        for n in state.nodes.values()
    }
    return tasks, nodes


async def sql_rows(store: EventStore, upto: int) -> tuple[dict, dict]:
    source = f"(SELECT * FROM events WHERE seq <= {upto})"

    async def rows(sql: str) -> list[dict[str, Any]]:
        cur = store.reader_cursor()
        try:
            with read_only(cur):
                result = cur.execute(sql)
                names = [d[0] for d in result.description]
                return [dict(zip(names, r, strict=True)) for r in result.fetchall()]
        finally:
            cur.close()

    tasks = {}
    for r in await rows(tasks_sql(source)):
        tasks[r["task_id"]] = {f: r[f] for f in TASK_FIELDS} | {
            "gpu_ids": sorted(r["gpu_ids"]),
            "command": r["command"],
            "args": r["args"],
            "owner": r["owner"],
            "batch_id": r["batch_id"],
        }
    nodes = {
        r["name"]: {f: r[f] for f in NODE_FIELDS} | {"allocated_gpus": sorted(r["allocated_gpus"])}
        for r in await rows(nodes_sql(source))
    }
    return tasks, nodes


@settings(
    max_examples=examples(12, 150), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(params=histories, cuts=st.lists(st.floats(0, 1), min_size=1, max_size=3))
def test_python_fold_equals_sql_projection(params: dict[str, Any], cuts: list[float]) -> None:
    async def check() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            store, records = await record_history(Path(tmp) / "log.duckdb", params)
            try:
                # Compare mid-history (tasks pending, paused, lost...) and at the end
                for upto in sorted({int(len(records) * c) for c in cuts} | {len(records)}):
                    state = ClusterState()
                    state.apply_all(records[:upto])
                    assert state.anomalies == []  # the simulation only makes legal histories
                    py_tasks, py_nodes = python_rows(state)
                    sql_tasks, sql_nodes = await sql_rows(store, upto)
                    assert py_tasks == sql_tasks
                    assert py_nodes == sql_nodes
            finally:
                await store.close()

    run(check())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=histories, cut=st.floats(0, 1), end=st.floats(0, 1))
def test_restore_snapshot_plus_tail_equals_full_fold(
    params: dict[str, Any], cut: float, end: float
) -> None:
    sim = ClusterSimulation(
        random.Random(params["seed"]),
        nodes=int(params["nodes"]),
        offline_chance=float(params["offline"]),
        numbered_after=params["numbered_after"],
    )
    records = record_in_memory(list(sim.events(int(params["tasks"]))))
    m = int(len(records) * end)
    k = int(m * cut)
    records = records[:m]
    full = ClusterState()
    full.apply_all(records)
    partial = ClusterState()
    partial.apply_all(records[:k])
    rebuilt = ClusterState.rebuild(partial.snapshot(), records[k:])
    assert rebuilt.snapshot() == full.snapshot()
    assert list(rebuilt.pending) == list(full.pending)
    assert rebuilt.last_seq == full.last_seq
    assert (rebuilt.numbers, rebuilt.last_number) == (full.numbers, full.last_number)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), tasks=st.integers(1, 40), cut=st.floats(0, 1))
def test_a_snapshot_from_before_task_numbers_restores_the_numbers_the_fold_gives(
    seed: int, tasks: int, cut: float
) -> None:
    # Given a log whose first part was written before numbers existed, snapshotted then
    sim = ClusterSimulation(random.Random(seed), nodes=2, numbered_after=None)
    records = record_in_memory(list(sim.events(tasks)))
    k = int(len(records) * cut)
    old = ClusterState()
    old.apply_all(records[:k])
    for task in old.tasks.values():
        task.number = 0  # what an old snapshot holds
    # When it is restored and the rest folded on top, the numbers are the full fold's
    rebuilt = ClusterState.rebuild(old.snapshot(), records[k:])
    full = ClusterState()
    full.apply_all(records)
    assert {t.task_id: t.number for t in rebuilt.tasks.values()} == {
        t.task_id: t.number for t in full.tasks.values()
    }
    assert sorted(rebuilt.numbers) == list(range(1, len(full.tasks) + 1))
