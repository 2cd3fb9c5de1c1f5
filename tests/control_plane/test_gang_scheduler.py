"""Gang placement: a job's ranks go on distinct nodes all at once or not at all, GPUs by
count and model, backfill around a job that does not fit, nodes held for a job that
waited too long, and the scheduler's explanation of a waiting job.

Pure: a ClusterState folded from real events (``job.submitted`` and its ranks'
``task.submitted`` as the submission records them), the scheduler called directly, its
placements folded back, as the host does.
"""

from __future__ import annotations

import itertools
import random

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from support.decisions import context
from support.thorough import examples

from control_plane.commands import PlaceQueued, decide
from control_plane.rooms import gpu_model_matches
from control_plane.scheduler import Placement, Policy, Scheduler
from events import link
from events.envelope import Recorded, new_event
from events.ids import new_id, new_job_id
from events.jobs import rank_command
from events.types import (
    AnyEvent,
    GpuInfo,
    JobPhase,
    JobPlaced,
    JobSpec,
    JobSubmitted,
    NodeRegistered,
    TaskDispatched,
    TaskFinished,
    TaskPlaced,
    TaskSpec,
    TaskSubmitted,
)
from projections.cluster import ClusterState
from projections.jobs import JobView

_seq = itertools.count(1)
S = 1_000_000  # microseconds in a second
GIB = 1 << 30


def explain_jobs(
    state: ClusterState, jobs: list[JobView], *, now_us: int = 0, reserve_after_s: float = 0.0
) -> dict[str, str]:
    """What ``why`` says of each job, as a first-fit scheduler with this rule sees it."""
    return Scheduler("first-fit", reserve_after_s=reserve_after_s).explain(
        state, jobs, now_us=now_us
    )


def explain_job(
    state: ClusterState, job: JobView, *, now_us: int = 0, reserve_after_s: float = 0.0
) -> str:
    return explain_jobs(state, [job], now_us=now_us, reserve_after_s=reserve_after_s)[job.job_id]


def apply(state: ClusterState, *events: AnyEvent, at_us: int = 0) -> None:
    """Fold ``events`` as if the store recorded them at ``at_us``."""
    base = next(_seq) * 1000
    state.apply_all(
        [
            Recorded(
                seq=base + i,
                id=wrapped.id,
                kind=wrapped.kind,
                stream=wrapped.stream,
                source=wrapped.source,
                occurred_at_us=at_us,
                recorded_at_us=at_us,
                schema_version=wrapped.schema_version,
                hash=b"",
                event=wrapped.event,
            )
            for i, wrapped in enumerate(new_event(e, source="test") for e in events)
        ]
    )


def node(
    name: str, cores: int = 4, gpus: int = 0, model: str = "Tesla V100-SXM2-16GB", memory: int = 0
) -> NodeRegistered:
    return NodeRegistered(
        node=name,
        address=f"10.0.0.{name[-1]}",
        cores=cores,
        memory_bytes=memory or 16 * GIB,
        gpus=tuple(GpuInfo(id=g, name=model) for g in range(gpus)),
    )


def task(cores: int = 1, *, target: str | None = None, gpu_count: int = 0) -> TaskSubmitted:
    spec = TaskSpec(command="true", cores=cores, target=target, gpu_count=gpu_count, batch_id="b")
    return TaskSubmitted(task_id=new_id(), spec=spec)


def submit_job(
    state: ClusterState,
    num_nodes: int,
    *,
    cores: int = 1,
    gpus: int = 0,
    model: str | None = None,
    memory: int | None = None,
    at_us: int = 0,
    name: str = "train",
    container: str | None = None,
) -> str:
    """Fold a job and its ranks as ``decide_submit_job`` records them: one commit."""
    job_id = new_job_id()
    spec = JobSpec(
        name=name,
        num_nodes=num_nodes,
        run="echo hi",
        cores=cores,
        memory_bytes=memory,
        gpu_count=gpus,
        gpu_model=model,
    )
    command, args = rank_command(None, spec.run)
    ranks = [
        TaskSubmitted(
            task_id=new_id(),
            spec=TaskSpec(
                command=command,
                args=args,
                cores=cores,
                memory_bytes=memory,
                gpu_count=gpus,
                gpu_model=model,
                owner="alice",
                batch_id=job_id,
                name=f"{name}-{job_id}-node-{rank}",
                job_id=job_id,
                rank=rank,
                container=container,
            ),
        )
        for rank in range(num_nodes)
    ]
    submitted = JobSubmitted(
        job_id=job_id, spec=spec, owner="alice", rank_task_ids=tuple(r.task_id for r in ranks)
    )
    apply(state, submitted, *ranks, at_us=at_us)
    return job_id


def place(
    state: ClusterState, scheduler: Scheduler, *, now_us: int = 0, at_us: int | None = None
) -> list[Placement]:
    """One pass, folded back."""
    placed = scheduler.plan(state, now_us=now_us)
    apply(state, *placed, at_us=now_us if at_us is None else at_us)
    return placed


def job_ranks(state: ClusterState, job_id: str) -> tuple[str, ...]:
    return state.jobs[job_id].rank_task_ids


def test_a_4_rank_job_on_3_nodes_waits_whole_and_goes_when_a_4th_node_registers() -> None:
    # Given three nodes and a job of four ranks
    state, scheduler = ClusterState(), Scheduler()
    apply(state, node("n1"), node("n2"), node("n3"))
    job_id = submit_job(state, 4, cores=2)
    # When the scheduler passes: nothing of it is placed, every rank stays queued
    assert scheduler.plan(state) == []
    assert list(state.pending) == list(job_ranks(state, job_id))
    assert "3 nodes registered, the job needs 4" in explain_job(state, state.jobs[job_id])
    # When a fourth node registers
    apply(state, node("n4"))
    placed = place(state, scheduler)
    # Then all four ranks, in rank order, then the job's placement and its setup phase
    ranks = [p for p in placed if isinstance(p, TaskPlaced)]
    assert [p.task_id for p in ranks] == list(job_ranks(state, job_id))
    assert [p.node for p in ranks] == ["n1", "n2", "n3", "n4"]
    assert isinstance(placed[4], JobPlaced) and placed[4].nodes == ("n1", "n2", "n3", "n4")
    assert placed[4].addresses == ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
    assert placed[5] == JobPhase(job_id=job_id, phase="setup")
    assert len(placed) == 6
    # And the fold agrees: the job is in its setup phase, each node holds one rank
    job = state.jobs[job_id]
    assert job.phase == "setup" and job.nodes == ("n1", "n2", "n3", "n4")
    assert all(state.nodes[n].allocated_cores == 2 for n in job.nodes)
    assert not state.pending and state.anomalies == []


def test_each_rank_gets_its_rank_and_every_ranks_address() -> None:
    state = ClusterState()
    apply(state, node("n1"), node("n2"), node("n3"))
    job_id = submit_job(state, 3, gpus=0, name="ddp")
    placed = Scheduler().plan(state)
    ranks = [p for p in placed if isinstance(p, TaskPlaced)]
    ips = "10.0.0.1\n10.0.0.2\n10.0.0.3"
    for rank, p in enumerate(ranks):
        assert p.env["NODE_RANK"] == p.env["SKYPILOT_NODE_RANK"] == str(rank)
        assert p.env["NUM_NODES"] == "3" and p.env["SKYPILOT_NODE_IPS"] == ips
        assert p.env["HAKURIVER_JOB_ID"] == job_id and p.env["HAKURIVER_JOB_NAME"] == "ddp"
        assert p.reason.startswith(f"job {job_id}'s ")


def test_ranks_go_on_distinct_nodes_even_when_one_node_could_hold_them_all() -> None:
    # Given two large nodes and a 3-rank job of 1 core per rank
    state = ClusterState()
    apply(state, node("big1", cores=64), node("big2", cores=64))
    job_id = submit_job(state, 3)
    # Then it does not start: three ranks need three nodes
    assert Scheduler().plan(state) == []
    assert "2 nodes registered, the job needs 3" in explain_job(state, state.jobs[job_id])


def test_a_job_that_does_not_fit_lets_later_tasks_pass_and_is_placed_whole_later() -> None:
    # Given two 4-core nodes, one half busy, and a job needing 4 cores on each of 2 nodes
    state, scheduler = ClusterState(), Scheduler()
    apply(state, node("n1"), node("n2"))
    busy = task(2, target="n1")
    apply(state, busy)
    place(state, scheduler)
    job_id = submit_job(state, 2, cores=4)
    small = task(1)
    apply(state, small)
    # When the scheduler passes: the later small task goes (backfill), the job waits whole
    placed = place(state, scheduler)
    assert [(p.task_id, p.node) for p in placed if isinstance(p, TaskPlaced)] == [
        (small.task_id, "n1")
    ]
    assert state.jobs[job_id].phase == "queued"
    # When both tasks end, the job is placed, one rank per node
    apply(state, TaskFinished(task_id=busy.task_id, state="completed", exit_code=0))
    apply(state, TaskFinished(task_id=small.task_id, state="completed", exit_code=0))
    placed = place(state, scheduler)
    assert {p.node for p in placed if isinstance(p, TaskPlaced)} == {"n1", "n2"}
    assert state.jobs[job_id].phase == "setup" and state.anomalies == []


def test_gpus_by_model_and_count_take_the_lowest_free_ids() -> None:
    # Given V100 nodes (GPU 0 of n1 taken by a targeted task), an A100 node
    state, scheduler = ClusterState(), Scheduler()
    apply(
        state,
        node("n1", cores=8, gpus=4),
        node("n2", cores=8, gpus=4, model="NVIDIA A100-SXM4-80GB"),
        node("n3", cores=8, gpus=2, model="tesla v100-pcie-32gb"),
    )
    pinned = TaskSubmitted(
        task_id=new_id(), spec=TaskSpec(command="true", target="n1::0", gpu_ids=(0,), batch_id="b")
    )
    apply(state, pinned)
    place(state, scheduler)
    job_id = submit_job(state, 2, cores=2, gpus=2, model="V100")
    placed = place(state, scheduler)
    ranks = [p for p in placed if isinstance(p, TaskPlaced)]
    # Then the ranks skip the A100 node and take the lowest free V100s
    assert [(p.node, p.gpu_ids) for p in ranks] == [("n1", (1, 2)), ("n3", (0, 1))]
    assert all(p.env["SKYPILOT_NUM_GPUS_PER_NODE"] == "2" for p in ranks)
    (job_placed,) = [p for p in placed if isinstance(p, JobPlaced)]
    assert [(r.node, r.reason) for r in job_placed.rejected] == [
        ("n2", "0 V100 GPUs free, needs 2")
    ]
    assert sorted(state.nodes["n1"].allocated_gpus) == [0, 1, 2]
    # And a plain task asking for any 3 GPUs gets the A100 node's lowest three
    any3 = task(1, gpu_count=3)
    apply(state, any3)
    (placed_any,) = place(state, scheduler)
    assert isinstance(placed_any, TaskPlaced)
    assert (placed_any.node, placed_any.gpu_ids) == ("n2", (0, 1, 2))
    assert state.jobs[job_id].phase == "setup" and state.anomalies == []


def test_gpu_model_rule() -> None:
    assert gpu_model_matches("V100", "Tesla V100-SXM2-16GB")
    assert gpu_model_matches("v100", "TESLA V100-SXM2-16GB")
    assert gpu_model_matches("A100-80GB", "NVIDIA A100-SXM4-80GB")
    assert gpu_model_matches("RTX4090", "NVIDIA GeForce RTX 4090")
    assert gpu_model_matches(None, "anything")
    assert not gpu_model_matches("A10", "NVIDIA A100-SXM4-40GB")
    assert not gpu_model_matches("V100", "Tesla V100S-PCIE-32GB")
    assert not gpu_model_matches("A100-80GB", "NVIDIA A100-SXM4-40GB")
    assert not gpu_model_matches("", "NVIDIA A100")


def test_a_job_waiting_past_reserve_after_holds_its_nodes_from_later_work() -> None:
    # Given two busy nodes and a job of two 4-core ranks, submitted at t = 1000 s
    state, scheduler = ClusterState(), Scheduler(reserve_after_s=300)
    t0 = 1000 * S
    apply(state, node("n1"), node("n2"), at_us=t0)
    busy = [task(3, target="n1"), task(3, target="n2")]
    apply(state, *busy, at_us=t0)
    place(state, scheduler, now_us=t0)
    job_id = submit_job(state, 2, cores=4, at_us=t0)
    # Before reserve_after, small work backfills around the waiting job
    early = task(1)
    apply(state, early, at_us=t0 + 100 * S)
    assert [p.task_id for p in place(state, scheduler, now_us=t0 + 100 * S)] == [early.task_id]
    apply(state, TaskFinished(task_id=early.task_id, state="completed", exit_code=0))
    # After it, the same small task waits: the nodes' shares are held for the job
    late = task(1)
    apply(state, late, at_us=t0 + 301 * S)
    assert scheduler.plan(state, now_us=t0 + 301 * S) == []
    why = explain_job(state, state.jobs[job_id], now_us=t0 + 301 * S, reserve_after_s=300)
    assert "held for it" in why and "n1, n2" in why
    # And a job's own wait does not count before now_us says so (0: never reserve)
    assert [p.task_id for p in Scheduler().plan(state, now_us=t0 + 301 * S)] == [late.task_id]
    # When the busy tasks end, the job goes first, then the small task where room is left
    for t in busy:
        apply(state, TaskFinished(task_id=t.task_id, state="completed", exit_code=0))
    placed = place(state, scheduler, now_us=t0 + 400 * S)
    assert [p.task_id for p in placed if isinstance(p, TaskPlaced)] == list(
        job_ranks(state, job_id)
    )
    assert late.task_id in state.pending and state.anomalies == []


def test_the_held_share_leaves_the_rest_of_a_large_node_to_later_work() -> None:
    # Given a 16-core node with room and a 4-core node full; a 2-rank job of 4 cores each
    state, scheduler = ClusterState(), Scheduler(reserve_after_s=60)
    apply(state, node("a1", cores=16), node("b2", cores=4))
    full = task(4, target="b2")
    apply(state, full)
    place(state, scheduler)
    job_id = submit_job(state, 2, cores=4)
    later = [task(8), task(8)]
    apply(state, *later)
    # When it waited past reserve_after: 4 cores of a1 and all of b2 are held for it
    placed = place(state, scheduler, now_us=61 * S)
    # Then one 8-core task still fits on a1 beside the held share; the second does not
    assert [(p.task_id, p.node) for p in placed] == [(later[0].task_id, "a1")]
    why = explain_job(state, state.jobs[job_id], now_us=61 * S, reserve_after_s=60)
    assert "a rank's share of a1, b2 is held for it" in why
    # When b2 frees, the job starts on a1 and b2 with the share kept for it
    apply(state, TaskFinished(task_id=full.task_id, state="completed", exit_code=0))
    placed = place(state, scheduler, now_us=62 * S)
    assert [p.node for p in placed if isinstance(p, TaskPlaced)] == ["a1", "b2"]
    assert state.jobs[job_id].phase == "setup" and state.anomalies == []


def test_two_waiting_jobs_hold_distinct_nodes_in_queue_order() -> None:
    # Given four full nodes and two 2-rank jobs that waited long
    state, scheduler = ClusterState(), Scheduler(reserve_after_s=10)
    apply(state, *(node(f"n{i}") for i in range(1, 5)))
    fillers = [task(4, target=f"n{i}") for i in range(1, 5)]
    apply(state, *fillers)
    place(state, scheduler)
    older = submit_job(state, 2, cores=4, at_us=0)
    younger = submit_job(state, 2, cores=4, at_us=1 * S)
    now = 100 * S
    assert scheduler.plan(state, now_us=now) == []
    why_older = explain_job(state, state.jobs[older], now_us=now, reserve_after_s=10)
    why_younger = explain_job(state, state.jobs[younger], now_us=now, reserve_after_s=10)
    assert "a rank's share of n1, n2 is held for it" in why_older
    assert "a rank's share of n3, n4 is held for it" in why_younger
    assert f"n1 (job {older})" in why_younger  # the younger sees what the older holds
    # A job list's explanations come from one pass, and say the same
    both = [state.jobs[older], state.jobs[younger]]
    assert explain_jobs(state, both, now_us=now, reserve_after_s=10) == {
        older: why_older,
        younger: why_younger,
    }
    # When n1 frees, no job fits yet, and the small task does not go there: n1 is held
    apply(state, TaskFinished(task_id=fillers[0].task_id, state="completed", exit_code=0))
    apply(state, task(1))
    assert scheduler.plan(state, now_us=now) == []
    # When n3 frees too, the older job starts on the two free nodes (what is held follows
    # the freest nodes), the younger one still waits
    apply(state, TaskFinished(task_id=fillers[2].task_id, state="completed", exit_code=0))
    placed = place(state, scheduler, now_us=now)
    assert [p.node for p in placed if isinstance(p, TaskPlaced)] == ["n1", "n3"]
    assert state.jobs[older].phase == "setup" and state.jobs[younger].phase == "queued"


def test_the_explanation_names_who_has_room_and_why_the_others_do_not() -> None:
    state, scheduler = ClusterState(), Scheduler()
    apply(
        state,
        node("n1", cores=16, gpus=2),
        node("n2", cores=16, gpus=2),
        node("n3", cores=16, gpus=2),
        node("n4", cores=16, gpus=2),
        node("n5", cores=16, gpus=2, model="NVIDIA A100-SXM4-80GB"),
    )
    hog = TaskSubmitted(
        task_id=new_id(), spec=TaskSpec(command="true", target="n4::1", gpu_ids=(1,), batch_id="b")
    )
    apply(state, hog)
    place(state, scheduler)
    job_id = submit_job(state, 4, cores=8, gpus=2, model="V100", memory=4 * GIB)
    assert scheduler.plan(state) == []
    why = explain_job(state, state.jobs[job_id])
    assert why.splitlines() == [
        "needs 4 nodes with 2 free GPUs (V100), 8 cores and 4 GiB of memory each;"
        " 3 have room: n1, n2, n3",
        "no room now: n4: 1 V100 GPU free, needs 2",
        "too small: n5 has 0 V100 GPUs",
    ]
    # Once placed, the explanation is the placement's reason
    apply(state, TaskFinished(task_id=hog.task_id, state="completed", exit_code=0))
    place(state, scheduler)
    assert explain_job(state, state.jobs[job_id]).startswith("first-fit: 4 distinct nodes")


def test_placement_decision_records_ranks_job_and_phase_then_dispatches_each_rank() -> None:
    # Given two connected nodes and a queued 2-rank job
    state = ClusterState()
    apply(state, node("n1"), node("n2"))
    job_id = submit_job(state, 2)
    # When the scheduler loop's pass runs
    decision = decide(state, PlaceQueued(), context("n1", "n2"))
    kinds = [type(e).__name__ for e in decision.events]
    # Then ranks, job, phase in one commit, then a dispatch and a run per rank
    assert kinds == [
        "TaskPlaced",
        "TaskPlaced",
        "JobPlaced",
        "JobPhase",
        "TaskDispatched",
        "TaskDispatched",
    ]
    runs = [s.message for s in decision.sends]
    assert all(isinstance(r, link.Run) for r in runs)
    envs = [r.spec.env for r in runs if isinstance(r, link.Run)]
    assert [e["NODE_RANK"] for e in envs] == ["0", "1"]
    assert [s.node for s in decision.sends] == ["n1", "n2"]
    assert all(isinstance(e, TaskDispatched) for e in decision.events[4:])
    assert state.jobs[job_id].phase == "queued"  # nothing is folded by a decision


# -- the property ------------------------------------------------------------------------


@settings(max_examples=examples(40, 400), deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    policy=st.sampled_from(["first-fit", "least-loaded", "round-robin"]),
    reserve_after=st.sampled_from([0.0, 5.0]),
)
def test_jobs_are_never_partly_placed_and_nothing_is_overcommitted(
    seed: int, policy: Policy, reserve_after: float
) -> None:
    rng = random.Random(seed)
    state, scheduler = ClusterState(), Scheduler(policy, reserve_after_s=reserve_after)
    models = ["Tesla V100-SXM2-16GB", "NVIDIA A100-SXM4-80GB"]
    count = rng.randint(2, 6)
    apply(
        state,
        *(
            node(
                f"n{i}",
                cores=rng.choice([2, 4, 8]),
                gpus=rng.choice([0, 2, 4]),
                model=rng.choice(models),
                memory=rng.choice([4, 16]) * GIB,
            )
            for i in range(count)
        ),
    )
    jobs: list[str] = []
    for step in range(25):
        now = step * S
        for _ in range(rng.randint(0, 2)):
            jobs.append(
                submit_job(
                    state,
                    rng.randint(1, count + 1),
                    cores=rng.randint(1, 4),
                    gpus=rng.choice([0, 0, 1, 2]),
                    model=rng.choice([None, "V100", "A100"]),
                    memory=rng.choice([None, 2 * GIB, 8 * GIB]),
                    at_us=now,
                )
            )
        apply(
            state,
            *(task(rng.randint(1, 3), gpu_count=rng.choice([0, 0, 1])) for _ in range(3)),
            at_us=now,
        )
        placed = place(state, scheduler, now_us=now)
        # A job's placement is whole: every rank, on distinct nodes, with its job.placed
        placed_jobs = [p for p in placed if isinstance(p, JobPlaced)]
        rank_nodes = {p.task_id: p.node for p in placed if isinstance(p, TaskPlaced)}
        for jp in placed_jobs:
            ranks = state.jobs[jp.job_id].rank_task_ids
            assert [rank_nodes[t] for t in ranks] == list(jp.nodes)
            assert len(set(jp.nodes)) == len(jp.nodes)
        for job_id in jobs:
            job = state.jobs[job_id]
            states = {state.tasks[t].state for t in job.rank_task_ids}
            if job.phase == "queued":
                assert states == {"pending"}
            else:
                assert "pending" not in states
        # Nothing overcommitted, no GPU twice
        for n in state.nodes.values():
            assert 0 <= n.allocated_cores <= n.cores
            assert n.allocated_memory_bytes <= n.memory_bytes
            assert len(n.allocated_gpus) == len(set(n.allocated_gpus))
            assert set(n.allocated_gpus) <= {g.id for g in n.gpus}
        # Some work ends between passes
        holding = [t for t in state.tasks.values() if t.holds_resources]
        for t in rng.sample(holding, k=len(holding) // 2):
            apply(state, TaskFinished(task_id=t.task_id, state="completed", exit_code=0))
    assert state.anomalies == []


def test_a_long_waiting_container_job_holds_no_node_without_docker() -> None:
    """Holding shares of nodes a job can never run on (no engine for its container ranks)
    would starve the work that could use them and protect nothing: only nodes that could
    run a rank are held, and the explanation says why the others never will."""

    def with_executors(name: str, *executors: str) -> NodeRegistered:
        return msgspec.structs.replace(node(name), executors=executors)

    state, sched = ClusterState(), Scheduler(reserve_after_s=60)
    apply(
        state,
        with_executors("d1", "process", "docker"),
        with_executors("d2", "process", "docker"),
        with_executors("p1", "process"),
        with_executors("p2", "process"),
    )
    apply(state, task(4, target="d1"), task(4, target="d2"))
    place(state, sched)
    job_id = submit_job(state, 2, cores=4, container="hakuriver-base")
    process_task = task(2)
    apply(state, process_task, at_us=61 * S)
    placed = place(state, sched, now_us=61 * S)
    # The process task runs on a node without Docker: nothing holds it for the job
    assert [p.node for p in placed if getattr(p, "task_id", None) == process_task.task_id] == ["p1"]
    why = explain_job(state, state.jobs[job_id], now_us=61 * S, reserve_after_s=60)
    assert "cannot run it: node p1 has no Docker engine" in why, why
    assert "p1 (job" not in why and "p2 (job" not in why, why
