"""Placement: policies, queueing, exact accounting and no double allocation."""

from __future__ import annotations

import itertools
import random
from unittest import mock

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.factories import record_in_memory

from control_plane import scheduler as scheduler_module
from control_plane.scheduler import Scheduler
from events.envelope import NewEvent, new_event
from events.ids import new_id
from events.types import (
    AnyEvent,
    GpuInfo,
    Mount,
    NodeOffline,
    NodeRegistered,
    NumaNode,
    TaskFinished,
    TaskSpec,
    TaskSubmitted,
)
from projections.cluster import ClusterState

_seq = itertools.count(1)


def apply(state: ClusterState, *events: AnyEvent) -> None:
    wrapped: list[NewEvent] = [new_event(e, source="test") for e in events]
    state.apply_all(record_in_memory(wrapped, start_seq=next(_seq) * 1000))


def node(name: str, cores: int = 4, gpus: int = 0, memory: int = 8_000_000_000) -> NodeRegistered:
    half = cores // 2
    return NodeRegistered(
        node=name,
        address=name,
        cores=cores,
        memory_bytes=memory,
        numa=(
            NumaNode(id=0, cpus=tuple(range(half))),
            NumaNode(id=1, cpus=tuple(range(half, cores))),
        ),
        gpus=tuple(GpuInfo(id=g, name="G") for g in range(gpus)),
    )


def task(
    cores: int = 1,
    target: str | None = None,
    gpus: tuple[int, ...] = (),
    numa: int | None = None,
    memory: int | None = None,
) -> TaskSubmitted:
    spec = TaskSpec(
        command="true",
        cores=cores,
        target=target,
        gpu_ids=gpus,
        numa_id=numa,
        memory_bytes=memory,
        batch_id="b",
    )
    return TaskSubmitted(task_id=new_id(), spec=spec)


def place(state: ClusterState, scheduler: Scheduler) -> dict[str, str]:
    placed = scheduler.plan(state)
    apply(state, *placed)
    return {p.task_id: p.node for p in placed}


def test_tasks_that_do_not_fit_wait_and_start_when_room_frees() -> None:
    state, scheduler = ClusterState(), Scheduler()
    apply(state, node("n1", cores=4))
    first, second, third = task(cores=3), task(cores=2), task(cores=1)
    apply(state, first, second, third)
    # Backfill: the 1-core task passes the 2-core one that does not fit
    assert place(state, scheduler) == {first.task_id: "n1", third.task_id: "n1"}
    assert list(state.pending) == [second.task_id]
    assert place(state, scheduler) == {}  # still full
    apply(state, TaskFinished(task_id=first.task_id, state="completed", exit_code=0))
    assert place(state, scheduler) == {second.task_id: "n1"}


def test_placement_records_reason_and_rejected_nodes() -> None:
    state = ClusterState()
    apply(state, node("a", cores=1), node("b", cores=4))
    apply(state, task(cores=2))
    (placed,) = Scheduler("first-fit").plan(state)
    assert placed.node == "b" and placed.policy == "first-fit"
    assert [(r.node, r.reason) for r in placed.rejected] == [("a", "1 core free, needs 2")]


def test_targeted_tasks_go_only_to_their_node_and_gpus() -> None:
    state, scheduler = ClusterState(), Scheduler()
    apply(state, node("a", cores=8), node("g", cores=8, gpus=2))
    t1, t2, t3 = (
        task(target="g::0", gpus=(0,)),
        task(target="g::0", gpus=(0,)),
        task(target="g::1", gpus=(1,)),
    )
    apply(state, t1, t2, t3)
    assert place(state, scheduler) == {t1.task_id: "g", t3.task_id: "g"}
    assert sorted(state.nodes["g"].allocated_gpus) == [0, 1]
    assert list(state.pending) == [t2.task_id]


def test_numa_accounting() -> None:
    state, scheduler = ClusterState(), Scheduler()
    apply(state, node("n", cores=8))
    t1, t2, t3 = (
        task(cores=3, target="n:0", numa=0),
        task(cores=2, target="n:0", numa=0),
        task(cores=4, target="n:1", numa=1),
    )
    apply(state, t1, t2, t3)
    assert place(state, scheduler) == {t1.task_id: "n", t3.task_id: "n"}
    assert state.nodes["n"].allocated_cores_by_numa == {0: 3, 1: 4}


def test_offline_nodes_get_nothing_and_targeted_tasks_wait_for_them() -> None:
    state, scheduler = ClusterState(), Scheduler()
    apply(state, node("a"), node("b"))
    apply(state, NodeOffline(node="a"))
    free, pinned = task(), task(target="a")
    apply(state, free, pinned)
    assert place(state, scheduler) == {free.task_id: "b"}
    assert list(state.pending) == [pinned.task_id]


def test_policies_spread_differently() -> None:
    def run(policy: str) -> list[str]:
        state = ClusterState()
        apply(state, node("a", cores=8), node("b", cores=8), node("c", cores=8))
        tasks = [task() for _ in range(6)]
        apply(state, *tasks)
        placed = place(state, Scheduler(policy))  # type: ignore[arg-type]
        return [placed[t.task_id] for t in tasks]

    assert run("first-fit") == ["a"] * 6
    assert run("least-loaded") == ["a", "b", "c", "a", "b", "c"]
    assert run("round-robin") == ["a", "b", "c", "a", "b", "c"]


def test_unknown_policy_is_refused() -> None:
    try:
        Scheduler("fastest")  # type: ignore[arg-type]
    except ValueError as err:
        assert "first-fit" in str(err)
    else:
        raise AssertionError("expected ValueError")


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    policy=st.sampled_from(["first-fit", "least-loaded", "round-robin"]),
)
def test_no_sequence_of_submits_and_finishes_overcommits_anything(seed: int, policy: str) -> None:
    rng = random.Random(seed)
    state, scheduler = ClusterState(), Scheduler(policy)  # type: ignore[arg-type]
    apply(
        state,
        *(
            node(
                f"n{i}",
                cores=rng.choice([2, 4, 8]),
                gpus=rng.choice([0, 2, 4]),
                memory=rng.choice([2, 8]) * 1_000_000_000,
            )
            for i in range(3)
        ),
    )
    for _ in range(30):
        batch = []
        for _ in range(rng.randint(0, 4)):
            n = state.nodes[f"n{rng.randint(0, 2)}"]
            gpus = tuple(sorted(rng.sample(range(len(n.gpus)), rng.randint(0, len(n.gpus)))))
            numa = rng.choice([None, 0, 1])
            target = rng.choice([None, n.name]) if not gpus and numa is None else n.name
            text = (
                None
                if target is None
                else target
                + (f":{numa}" if numa is not None else "")
                + ("::" + ",".join(map(str, gpus)) if gpus else "")
            )
            batch.append(
                task(
                    cores=rng.randint(1, 2),
                    target=text,
                    gpus=gpus,
                    numa=numa if target else None,
                    memory=rng.choice([None, 500_000_000, 1_500_000_000]),
                )
            )
        apply(state, *batch)
        place(state, scheduler)
        holding = [t for t in state.tasks.values() if t.holds_resources]
        for t in rng.sample(holding, k=len(holding) // 2):
            apply(state, TaskFinished(task_id=t.task_id, state="completed", exit_code=0))
        for n in state.nodes.values():
            assert 0 <= n.allocated_cores <= n.cores
            assert n.allocated_memory_bytes <= n.memory_bytes
            assert len(n.allocated_gpus) == len(set(n.allocated_gpus))
            for numa in n.numa:
                assert n.allocated_cores_by_numa.get(numa.id, 0) <= len(numa.cpus)
    assert state.anomalies == []


def _placements(scheduler: Scheduler, state: ClusterState, *, memo: bool) -> list[object]:
    """One pass's placements as plain values; without ``memo`` every task's needs are
    unlike any other's, so no refusal is reused (the pass as it was before the memo)."""
    if memo:
        placed = scheduler.plan(state)
    else:
        with mock.patch.object(scheduler_module, "_needs", lambda spec: object()):
            placed = scheduler.plan(state)
    return [msgspec.to_builtins(p) for p in placed]


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    policy=st.sampled_from(["first-fit", "least-loaded", "round-robin"]),
)
def test_a_pass_that_reuses_refusals_places_exactly_as_one_that_asks_every_node(
    seed: int, policy: str
) -> None:
    """The pass remembers (node, needs) refused and needs no node takes: a queue of many
    tasks alike costs a refusal per node, not per task. The placements, their reasons,
    the nodes passed over with their words and the round-robin cursor are those of a pass
    that asks every node for every task, and ``would_place`` (which stops at the first
    placement) agrees. Every part of a spec a refusal reads varies: cores, memory, GPUs by
    id and by count and model, NUMA, owner (nodes running tasks as their owners), VPS,
    container and mounts."""
    rng = random.Random(seed)
    state = ClusterState()
    registered = []
    for i in range(rng.randint(1, 4)):
        n = node(f"n{i}", cores=rng.choice([1, 2, 4]), gpus=rng.choice([0, 2, 2]))
        registered.append(
            msgspec.structs.replace(
                n,
                executors=rng.choice([("process",), ("process", "docker")]),
                process_mounts=rng.random() < 0.5,
                run_tasks_as=rng.choice(["runner", "owner"]),
                accounts=rng.choice([None, ("alice",), ("alice", "bob")]),
            )
        )
    apply(state, *registered)
    # Mostly the usual value: tasks alike but for one or two parts are what the memo must
    # tell apart.
    weights = [7, 1, 1, 1]
    for _ in range(rng.randint(1, 60)):
        n = rng.choice(registered)
        gpus = tuple(rng.sample(range(len(n.gpus)), rng.randint(0, len(n.gpus))))
        targeted = rng.random() < 0.4
        submitted = task(
            cores=rng.choices([1, 0, 2, 3], weights)[0],
            target=n.node if targeted else None,
            gpus=gpus if targeted else (),
            numa=rng.choice([None, 0, 1]) if targeted else None,
            memory=rng.choice([None, None, 1_000_000_000, 6_000_000_000]),
        )
        counted = 0 if targeted and gpus else rng.choices([0, 1, 2], [8, 1, 1])[0]
        spec = msgspec.structs.replace(
            submitted.spec,
            container=rng.choices([None, "env"], [3, 1])[0],
            mounts=rng.choices(
                [(), (Mount(host_path="/srv/data", container_path="/data"),)], [3, 1]
            )[0],
            owner=rng.choice(["alice", "bob"]),
            task_type=rng.choices(["command", "vps"], [3, 1])[0],
            gpu_count=counted,
            gpu_model=rng.choice([None, "G", "X"]) if counted else None,
        )
        apply(state, msgspec.structs.replace(submitted, spec=spec))
    scheduler = Scheduler(policy)  # type: ignore[arg-type]  # one cursor across passes
    for _ in range(rng.randint(1, 4)):  # passes, some tasks ending between them
        reference = Scheduler(policy)  # type: ignore[arg-type]
        reference._cursor = scheduler._cursor
        expected = _placements(reference, state, memo=False)
        assert scheduler.would_place(state) == bool(expected)
        placed = scheduler.plan(state)
        assert [msgspec.to_builtins(p) for p in placed] == expected
        assert scheduler._cursor == reference._cursor
        apply(state, *placed)
        holding = [t for t in state.tasks.values() if t.holds_resources]
        for t in rng.sample(holding, k=len(holding) // 2):
            apply(state, TaskFinished(task_id=t.task_id, state="completed", exit_code=0))


def test_a_long_queue_of_tasks_alike_asks_each_full_node_once() -> None:
    """10,000 pending tasks that fit nowhere: the pass asks each node about them once."""
    state = ClusterState()
    apply(state, node("a", cores=1), node("b", cores=1))
    apply(state, *[task(cores=2) for _ in range(10_000)])
    with mock.patch.object(
        scheduler_module._Pass,
        "_refusal",
        autospec=True,
        side_effect=scheduler_module._Pass._refusal,
    ) as asked:
        assert Scheduler().plan(state) == []
    assert asked.call_count == 2


def _alike_but(part: str) -> tuple[ClusterState, TaskSubmitted, TaskSubmitted]:
    """A node, and two queued tasks alike but for ``part``: the first refused, the second
    with room (a node refusing the first must still be asked about the second)."""
    state = ClusterState()
    gpu_node = node("n", cores=4, gpus=2)
    if part == "owner":
        gpu_node = msgspec.structs.replace(gpu_node, run_tasks_as="owner", accounts=("alice",))
    apply(state, gpu_node)
    busy = {
        "gpu_ids": task(cores=1, target="n::0", gpus=(0,)),
        "numa_id": task(cores=2, target="n:0", numa=0),
    }.get(part)
    if busy is not None:
        apply(state, busy)
        apply(state, *Scheduler().plan(state))
    first, second = {
        "gpu_ids": (task(target="n::0", gpus=(0,)), task(target="n::1", gpus=(1,))),
        "numa_id": (task(target="n:0", numa=0), task(target="n:1", numa=1)),
        "gpu_model": (task(), task()),
        "owner": (task(), task()),
    }[part]
    if part == "gpu_model":
        first, second = (
            msgspec.structs.replace(
                t, spec=msgspec.structs.replace(t.spec, gpu_count=1, gpu_model=model)
            )
            for t, model in ((first, "X"), (second, "G"))
        )
    if part == "owner":
        first, second = (
            msgspec.structs.replace(t, spec=msgspec.structs.replace(t.spec, owner=owner))
            for t, owner in ((first, "bob"), (second, "alice"))
        )
    apply(state, first, second)
    return state, first, second


@pytest.mark.parametrize("part", ["gpu_ids", "numa_id", "gpu_model", "owner"])
def test_tasks_alike_but_for_one_part_are_told_apart(part: str) -> None:
    """The memo's key holds every part a refusal reads: the parts the random cases above
    rarely set apart (GPU ids, NUMA node, GPU model, owner) each decide a placement here."""
    state, first, second = _alike_but(part)
    assert {p.task_id: p.node for p in Scheduler().plan(state)} == {second.task_id: "n"}
    assert first.task_id in state.pending
