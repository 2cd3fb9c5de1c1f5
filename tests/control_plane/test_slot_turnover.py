"""A slot's turnover: an agent's batch of ends places the queue's next tasks in its own
commit, after the ends (issue 19; docs/decisions.md). Pure decisions on a folded state:
what the commit would hold, folded back, must never overcommit a node."""

from __future__ import annotations

import itertools
import random

from support.decisions import context
from support.factories import record_in_memory

from control_plane.commands import ReportFacts, decide
from events import link
from events.envelope import NewEvent, new_event
from events.ids import new_id
from events.types import (
    AnyEvent,
    GpuInfo,
    NodeRegistered,
    NumaNode,
    TaskDispatched,
    TaskFinished,
    TaskPlaced,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
)
from projections.cluster import ClusterState

_seq = itertools.count(1)


def apply(state: ClusterState, events: list[NewEvent]) -> None:
    state.apply_all(record_in_memory(events, start_seq=next(_seq) * 10_000))


def host(*events: AnyEvent) -> list[NewEvent]:
    return [new_event(e, source="host") for e in events]


def cluster(cores: int = 2, gpus: int = 0) -> ClusterState:
    state = ClusterState()
    registered = NodeRegistered(
        node="n1",
        address="n1",
        cores=cores,
        memory_bytes=8 << 30,
        numa=(NumaNode(id=0, cpus=tuple(range(cores))),),
        gpus=tuple(GpuInfo(id=g, name="G") for g in range(gpus)),
    )
    apply(state, host(registered))
    return state


def submit(state: ClusterState, count: int, **spec: object) -> list[str]:
    submitted = [
        TaskSubmitted(task_id=new_id(), spec=TaskSpec(command="true", batch_id="b", **spec))  # type: ignore[arg-type]
        for _ in range(count)
    ]
    apply(state, host(*submitted))
    return [s.task_id for s in submitted]


def run_placed(state: ClusterState) -> list[str]:
    """One scheduler pass, recorded, and every task it placed started on its node."""
    ctx = context("n1")
    placed = [p for p in ctx.scheduler.plan(state) if isinstance(p, TaskPlaced)]
    apply(state, host(*placed))
    started = [
        new_event(TaskStarted(task_id=p.task_id, node="n1", pid=1), source="n1") for p in placed
    ]
    apply(state, started)
    return [p.task_id for p in placed]


def end(task_id: str, state: str = "completed") -> NewEvent:
    return new_event(
        TaskFinished(task_id=task_id, state=state, exit_code=0, node="n1"),  # type: ignore[arg-type]
        source="n1",
    )


def commit(state: ClusterState, decision_facts: list[NewEvent], after: list[AnyEvent]) -> None:
    """Fold the commit as the hub records it: the facts, then the host's after them."""
    apply(state, [*decision_facts, *host(*after)])


def test_an_end_places_the_next_queued_task_in_its_own_commit() -> None:
    state = cluster(cores=2)
    queued = submit(state, 4, cores=1)
    first, second = run_placed(state)
    assert list(state.pending) == queued[2:]
    # When the agent reports one end, with work queued
    decision = decide(
        state, ReportFacts(node="n1", events=(end(first),), place=True), context("n1")
    )
    # Then the commit holds the end, then the next task's placement and dispatch, and
    # the run command goes out after it
    assert [f.event for f in decision.facts] == [end(first).event]
    placed = [e for e in decision.after_facts if isinstance(e, TaskPlaced)]
    assert [(p.task_id, p.node, p.cores) for p in placed] == [(queued[2], "n1", 1)]
    assert any(isinstance(e, TaskDispatched) for e in decision.after_facts)
    assert [(s.node, type(s.message)) for s in decision.sends] == [("n1", link.Run)]
    # And folded in that order, nothing is overcommitted
    commit(state, decision.facts, decision.after_facts)
    assert state.anomalies == []
    assert state.nodes["n1"].allocated_cores == 2
    assert list(state.pending) == [queued[3]]
    assert state.tasks[second].state == "running"


def test_without_the_exclusive_gate_a_report_places_nothing() -> None:
    state = cluster(cores=1)
    first, *_ = submit(state, 2, cores=1)
    run_placed(state)
    decision = decide(state, ReportFacts(node="n1", events=(end(first),)), context("n1"))
    assert decision.after_facts == [] and decision.sends == []


def test_an_end_reported_twice_frees_its_cores_once() -> None:
    state = cluster(cores=1)
    first, *rest = submit(state, 3, cores=1)
    run_placed(state)
    # The same task's end twice in one batch (an agent restarted between put and forget)
    batch = (end(first), end(first))
    decision = decide(state, ReportFacts(node="n1", events=batch, place=True), context("n1"))
    placed = [e for e in decision.after_facts if isinstance(e, TaskPlaced)]
    assert [p.task_id for p in placed] == [rest[0]]  # one core freed: one task placed
    commit(state, decision.facts, decision.after_facts)
    assert state.anomalies == [] and state.nodes["n1"].allocated_cores == 1
    # And an end of a task already ended frees nothing at all
    again = decide(state, ReportFacts(node="n1", events=(end(first),), place=True), context("n1"))
    assert again.facts == [] and again.after_facts == []


def test_a_freed_gpu_goes_to_the_task_waiting_for_it() -> None:
    state = cluster(cores=4, gpus=1)
    holder, waiting = submit(state, 2, cores=1, gpu_ids=(0,))
    assert run_placed(state) == [holder]
    decision = decide(
        state, ReportFacts(node="n1", events=(end(holder),), place=True), context("n1")
    )
    placed = [e for e in decision.after_facts if isinstance(e, TaskPlaced)]
    assert [(p.task_id, p.gpu_ids) for p in placed] == [(waiting, (0,))]
    commit(state, decision.facts, decision.after_facts)
    assert state.anomalies == []


def test_a_started_report_frees_nothing() -> None:
    state = cluster(cores=1)
    first, _ = submit(state, 2, cores=1)
    ctx = context("n1")
    placed = [p for p in ctx.scheduler.plan(state) if isinstance(p, TaskPlaced)]
    apply(state, host(*placed))
    started = new_event(TaskStarted(task_id=first, node="n1", pid=1), source="n1")
    decision = decide(state, ReportFacts(node="n1", events=(started,), place=True), ctx)
    assert decision.after_facts == []


def test_random_batches_of_ends_never_overcommit() -> None:
    rng = random.Random(19)
    for _ in range(30):
        state = cluster(cores=rng.randint(1, 6), gpus=rng.randint(0, 2))
        gpus = len(state.nodes["n1"].gpus)
        for _ in range(rng.randint(5, 25)):
            gpu = (rng.randrange(gpus),) if gpus and rng.random() < 0.3 else ()
            submit(state, 1, cores=rng.randint(0, 2), gpu_ids=gpu)
        run_placed(state)
        while state.pending or state.nodes["n1"].task_ids:
            holding = list(state.nodes["n1"].task_ids)
            ended = rng.sample(holding, rng.randint(1, len(holding))) if holding else []
            # Some ends twice, in any order
            batch = [end(t, rng.choice(["completed", "failed"])) for t in ended]
            batch += [end(t) for t in ended if rng.random() < 0.2]
            rng.shuffle(batch)
            decision = decide(
                state, ReportFacts(node="n1", events=tuple(batch), place=True), context("n1")
            )
            commit(state, decision.facts, decision.after_facts)
            assert state.anomalies == []
            node = state.nodes["n1"]
            assert node.allocated_cores <= node.cores
            assert len(set(node.allocated_gpus)) == len(node.allocated_gpus)
            newly = [e.task_id for e in decision.after_facts if isinstance(e, TaskPlaced)]
            apply(
                state,
                [new_event(TaskStarted(task_id=t, node="n1", pid=1), source="n1") for t in newly],
            )
            if not holding and not newly:
                break  # what is left can never fit


def test_the_loops_dry_pass_says_what_a_pass_would_do_and_moves_no_cursor() -> None:
    from control_plane.scheduler import Scheduler

    state = cluster(cores=1)
    apply(
        state,
        host(
            NodeRegistered(
                node="n2",
                address="n2",
                cores=1,
                memory_bytes=8 << 30,
                numa=(NumaNode(id=0, cpus=(0,)),),
            )
        ),
    )
    scheduler = Scheduler("round-robin")
    assert not scheduler.would_place(state)  # nothing queued
    submit(state, 3, cores=1)
    # Nothing moves the cursor but a real pass: the dry one, asked twice, agrees with it
    assert scheduler.would_place(state) and scheduler.would_place(state)
    assert scheduler._cursor == 0
    placed = [p for p in scheduler.plan(state) if isinstance(p, TaskPlaced)]
    assert [p.node for p in placed] == ["n1", "n2"]
    apply(state, host(*placed))
    # Both nodes full: the third task waits, and the dry pass says so
    assert list(state.pending) and not scheduler.would_place(state)


def test_a_job_ranks_end_leaves_placement_to_the_scheduler_loop() -> None:
    state = cluster(cores=1)
    (rank,) = submit(state, 1, cores=1, job_id="abcd1234", rank=0)
    apply(state, host(TaskPlaced(task_id=rank, node="n1", cores=1)))
    apply(state, [new_event(TaskStarted(task_id=rank, node="n1", pid=1), source="n1")])
    submit(state, 1, cores=1)
    # A rank's end: the loop advances the job first (its siblings stopped), then places
    decision = decide(state, ReportFacts(node="n1", events=(end(rank),), place=True), context("n1"))
    assert [f.event for f in decision.facts] == [end(rank).event]
    assert decision.after_facts == [] and decision.sends == []
