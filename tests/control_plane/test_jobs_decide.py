"""The job decisions on a folded state: submit, the run phase, failure, stop, the end.

Placement is the scheduler's (test_gang_scheduler.py): here a job is placed by folding the
events a placement records, so each decision is seen on its own.
"""

from __future__ import annotations

import itertools

import pytest
from support.decisions import context, principal
from support.factories import record_in_memory

from control_plane.commands import (
    AdvanceJobs,
    Decision,
    NodeHello,
    ReportFacts,
    StopJobs,
    SubmitJob,
)
from control_plane.commands import decide as decide_any
from control_plane.commands.nodes import run_command
from control_plane.errors import Conflict, InvalidRequest, NotFound, Refused
from events import link
from events.envelope import new_event
from events.jobs import rank_env
from events.types import (
    AnyEvent,
    GpuInfo,
    JobFinished,
    JobPhase,
    JobPlaced,
    JobSetupDone,
    JobSpec,
    JobStopRequested,
    NodeRegistered,
    TaskFinished,
    TaskKillRequested,
    TaskLost,
    TaskPlaced,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
)
from projections.cluster import ClusterState
from projections.jobs import job_status

NODES = ("n1", "n2", "n3")
_ids = (f"t{i:04d}" for i in itertools.count())


class World:
    """A folded state and the seqs to record into it."""

    def __init__(self, nodes: tuple[str, ...] = NODES, gpus: int = 0) -> None:
        self.state = ClusterState()
        self.seq = 1
        self.record(
            *(
                NodeRegistered(
                    node=n,
                    address=f"10.0.0.{i + 1}",
                    cores=4,
                    memory_bytes=8 << 30,
                    gpus=tuple(GpuInfo(id=g, name="Tesla V100-SXM2-16GB") for g in range(gpus)),
                    process_mounts=True,  # root runners: a process rank's volumes bind
                )
                for i, n in enumerate(nodes)
            )
        )

    def record(self, *events: AnyEvent) -> None:
        news = [new_event(e, source=getattr(e, "node", None) or "host") for e in events]
        self.state.apply_all(record_in_memory(news, start_seq=self.seq))
        self.seq += len(news)

    def decide(self, command: object, *connected: str) -> Decision:
        decision = decide_any(
            self.state,
            command,  # type: ignore[arg-type]
            context(*(connected or NODES)),
        )
        self.record(*decision.events)
        return decision

    def submit(self, spec: JobSpec, job_id: str = "abcd1234", user: str = "alice") -> str:
        self.decide(SubmitJob(job_id=job_id, spec=spec, yaml="run: x", actor=principal(user)))
        return job_id

    def place(self, job_id: str) -> None:
        """Fold what the scheduler records when it places every rank at once."""
        job = self.state.jobs[job_id]
        nodes = NODES[: job.num_nodes]
        addresses = tuple(self.state.nodes[n].address for n in nodes)
        self.record(
            *(
                TaskPlaced(
                    task_id=t,
                    node=n,
                    cores=job.spec.cores,
                    env=rank_env(
                        job_id=job_id, rank=r, addresses=addresses, gpus_per_node=0, name="j"
                    ),
                )
                for r, (t, n) in enumerate(zip(job.rank_task_ids, nodes, strict=True))
            ),
            JobPlaced(job_id=job_id, nodes=nodes, addresses=addresses),
            JobPhase(job_id=job_id, phase="setup"),
        )

    def start_all(self, job_id: str) -> None:
        job = self.state.jobs[job_id]
        self.record(
            *(
                TaskStarted(task_id=t, node=n, pid=100 + r)
                for r, (t, n) in enumerate(zip(job.rank_task_ids, job.nodes, strict=True))
            )
        )

    def setup_done(self, job_id: str, *ranks: int) -> None:
        job = self.state.jobs[job_id]
        self.record(
            *(
                JobSetupDone(task_id=job.rank_task_ids[r], job_id=job_id, rank=r, node=job.nodes[r])
                for r in ranks
            )
        )

    def finish(self, job_id: str, rank: int, state: str = "completed", code: int = 0) -> None:
        job = self.state.jobs[job_id]
        self.record(
            TaskFinished(
                task_id=job.rank_task_ids[rank],
                state=state,  # type: ignore[arg-type]
                exit_code=code,
                node=job.nodes[rank] if job.nodes else None,
            )
        )

    def status(self, job_id: str) -> str:
        return job_status(self.state.jobs[job_id], self.state.tasks)


def spec(**fields: object) -> JobSpec:
    return JobSpec(**{"run": "echo hi", "num_nodes": 3, "cores": 2, **fields})  # type: ignore[arg-type]


def test_a_job_is_its_event_and_one_queued_task_per_rank_in_one_decision() -> None:
    world = World()
    world.decide(
        SubmitJob(
            job_id="abcd1234",
            spec=spec(
                name="train", setup="pip install x", envs={"A": "1"}, volumes={"/data": "d1"}
            ),
            yaml="name: train",
            actor=principal("alice"),
            workdir="/shared/jobs/abcd1234/workdir",
        )
    )
    job = world.state.jobs["abcd1234"]
    assert job.owner == "alice" and job.phase == "queued" and job.num_nodes == 3
    ranks = [world.state.tasks[t] for t in job.rank_task_ids]
    assert [r.spec.rank for r in ranks] == [0, 1, 2]
    assert [r.number for r in ranks] == [1, 2, 3]
    assert [r.spec.name for r in ranks] == [f"train-abcd1234-node-{i}" for i in range(3)]
    assert all(r.state == "pending" and r.spec.job_id == "abcd1234" for r in ranks)
    first = ranks[0].spec
    assert first.command == "/bin/sh" and first.args[-2:] == ("pip install x", "echo hi")
    assert first.env == {"A": "1"} and first.cores == 2 and first.batch_id == "abcd1234"
    assert first.workdir == "/shared/jobs/abcd1234/workdir"
    assert [m.container_path for m in first.mounts] == ["/data"]
    assert first.mounts[0].host_path.endswith("/volumes/d1")
    # A user's rank may only bind and start inside what the shared storage gives them.
    assert first.mount_roots is not None
    assert any(root.endswith("/jobs/abcd1234") for root in first.mount_roots)
    assert list(world.state.pending) == list(job.rank_task_ids)
    assert world.status("abcd1234") == "pending"


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"cores": 64}, "resources.cpus", "no registered node can hold one rank"),
        ({"memory_bytes": 64 << 30}, "resources.memory", "no registered node can hold one rank"),
        ({"gpu_count": 1}, "resources.accelerators", "n1: has 0 GPUs"),
        ({"volumes": {"/d": "../etc"}}, "volumes./d", "not a volume name"),
    ],
)
def test_a_job_no_node_could_ever_hold_is_refused_naming_the_field(
    fields: dict[str, object], field: str, words: str
) -> None:
    world = World()
    with pytest.raises(InvalidRequest) as caught:
        world.submit(spec(**fields))
    assert caught.value.field == field and words in caught.value.message
    assert world.state.jobs == {} and world.state.tasks == {}


def test_more_ranks_than_nodes_is_no_refusal_the_job_waits() -> None:
    world = World()
    world.submit(spec(num_nodes=4))
    assert world.status("abcd1234") == "pending"


def test_ids_taken_malformed_and_submitting_for_others() -> None:
    world = World()
    world.submit(spec())
    with pytest.raises(Conflict):
        world.submit(spec())
    with pytest.raises(InvalidRequest):
        world.submit(spec(), job_id="12345678")  # all digits: reads as a task number
    with pytest.raises(Refused):
        world.decide(
            SubmitJob(job_id="zzzz0000", spec=spec(), yaml="", actor=principal(), owner="bob")
        )
    world.decide(
        SubmitJob(
            job_id="zzzz0001", spec=spec(), yaml="", actor=principal("root", "admin"), owner="bob"
        )
    )
    assert world.state.jobs["zzzz0001"].owner == "bob"


def test_run_starts_only_once_every_rank_finished_its_setup() -> None:
    world = World()
    job_id = world.submit(spec(setup="make"))
    world.place(job_id)
    world.start_all(job_id)
    assert world.status(job_id) == "running" and world.state.jobs[job_id].phase == "setup"
    world.setup_done(job_id, 0, 2)
    assert world.decide(AdvanceJobs()).events == []
    world.setup_done(job_id, 1, 1)  # a repeated report counts once
    decision = world.decide(AdvanceJobs(), "n1", "n3")  # n2's agent is away for now
    assert decision.events == [JobPhase(job_id=job_id, phase="run")]
    ranks = world.state.jobs[job_id].rank_task_ids
    assert [(s.node, s.message) for s in decision.sends] == [
        ("n1", link.JobGo(task_id=ranks[0])),
        ("n3", link.JobGo(task_id=ranks[2])),
    ]
    assert world.state.jobs[job_id].phase == "run"
    assert world.decide(AdvanceJobs()).events == []  # said once
    # n2's agent comes back running its rank: it hears the go in the reconciliation.
    hello = link.Hello(
        node="n2",
        address="10.0.0.2",
        cores=4,
        memory_bytes=8 << 30,
        running=(link.AgentTask(task_id=ranks[1], pid=101),),
    )
    sends = world.decide(NodeHello(hello=hello)).sends
    assert link.JobGo(task_id=ranks[1]) in [s.message for s in sends]


def test_a_failed_rank_fails_the_job_and_stops_the_others_once() -> None:
    world = World()
    job_id = world.submit(spec())
    world.place(job_id)
    world.start_all(job_id)
    world.setup_done(job_id, 0, 1, 2)
    world.decide(AdvanceJobs())
    world.finish(job_id, 1, "failed", 3)
    assert world.status(job_id) == "failed"
    decision = world.decide(AdvanceJobs())
    kills = [e for e in decision.events if isinstance(e, TaskKillRequested)]
    ranks = world.state.jobs[job_id].rank_task_ids
    assert [k.task_id for k in kills] == [ranks[0], ranks[2]]
    assert all("rank 1 failed (exit code 3)" in k.reason for k in kills)
    assert [s.node for s in decision.sends] == ["n1", "n3"]
    assert world.decide(AdvanceJobs()).events == []  # not asked twice
    world.finish(job_id, 0, "killed", 143)
    world.finish(job_id, 2, "killed", 143)
    (end,) = world.decide(AdvanceJobs()).events
    assert isinstance(end, JobFinished)
    assert end.state == "failed" and end.failed_rank == 1
    assert "rank 1 failed (exit code 3)" in end.message
    assert world.state.jobs[job_id].final_state == "failed"
    assert "abcd1234" not in world.state.active_jobs


def test_a_failed_setup_is_named_so() -> None:
    world = World()
    job_id = world.submit(spec(setup="false"))
    world.place(job_id)
    world.start_all(job_id)
    world.finish(job_id, 2, "failed", 1)
    world.decide(AdvanceJobs())
    world.finish(job_id, 0, "killed", 143)
    world.finish(job_id, 1, "killed", 143)
    (end,) = world.decide(AdvanceJobs()).events
    assert isinstance(end, JobFinished) and end.failed_rank == 2
    assert "during setup" in end.message


def test_completed_only_when_every_rank_completed() -> None:
    world = World()
    job_id = world.submit(spec())
    world.place(job_id)
    world.start_all(job_id)
    world.setup_done(job_id, 0, 1, 2)
    world.decide(AdvanceJobs())
    world.finish(job_id, 0)
    world.finish(job_id, 2)
    assert world.status(job_id) == "running"
    assert world.decide(AdvanceJobs()).events == []
    world.finish(job_id, 1)
    assert world.decide(AdvanceJobs()).events == [JobFinished(job_id=job_id, state="completed")]
    assert world.status(job_id) == "completed"


def test_stop_kills_queued_ranks_on_the_spot_and_placed_ones_through_their_nodes() -> None:
    world = World()
    queued = world.submit(spec(num_nodes=4), job_id="queued01")
    running = world.submit(spec(num_nodes=2), job_id="running1")
    world.place(running)
    world.start_all(running)
    decision = world.decide(StopJobs(actor=principal("alice"), job_ids=(queued, running)))
    stops = [e for e in decision.events if isinstance(e, JobStopRequested)]
    assert [s.job_id for s in stops] == [queued, running]
    finished = [e for e in decision.events if isinstance(e, TaskFinished)]
    assert len(finished) == 4 and all(f.state == "killed" for f in finished)
    assert [s.node for s in decision.sends] == ["n1", "n2"]
    assert world.status(queued) == "stopped" and world.status(running) == "stopped"
    (end,) = world.decide(AdvanceJobs()).events
    assert end == JobFinished(job_id=queued, state="stopped", message="stopped by alice")
    with pytest.raises(Conflict):
        world.decide(StopJobs(actor=principal("alice"), job_ids=(queued,)))


def test_stop_all_is_the_callers_and_all_users_is_an_admins() -> None:
    world = World()
    mine = world.submit(spec(), job_id="mine0001", user="alice")
    theirs = world.submit(spec(), job_id="bobs0001", user="bob")
    with pytest.raises(Refused):
        world.decide(StopJobs(actor=principal("alice"), job_ids=(theirs,)))
    with pytest.raises(Refused):
        world.decide(StopJobs(actor=principal("alice"), all=True, all_users=True))
    with pytest.raises(InvalidRequest) as caught:
        world.decide(StopJobs(actor=principal("alice"), all_users=True))
    assert caught.value.field == "all_users"
    with pytest.raises(NotFound):
        world.decide(StopJobs(actor=principal("alice"), job_ids=("nope0000",)))
    decision = world.decide(StopJobs(actor=principal("alice"), all=True))
    assert [e.job_id for e in decision.events if isinstance(e, JobStopRequested)] == [mine]
    assert world.status(theirs) == "pending"
    decision = world.decide(StopJobs(actor=principal("root", "admin"), all=True, all_users=True))
    assert [e.job_id for e in decision.events if isinstance(e, JobStopRequested)] == [theirs]


def test_a_forged_setup_report_for_another_rank_refuses_the_batch() -> None:
    world = World()
    job_id = world.submit(spec())
    world.place(job_id)
    world.start_all(job_id)
    ranks = world.state.jobs[job_id].rank_task_ids
    forged = new_event(
        JobSetupDone(task_id=ranks[0], job_id=job_id, rank=2, node="n1"), source="n1"
    )
    with pytest.raises(Refused) as caught:
        decide_any(world.state, ReportFacts(node="n1", events=(forged,)), context(*NODES))
    assert caught.value.field == "events[0]" and "not rank 2" in caught.value.message


def test_rank_tasks_carry_what_the_placement_added_when_sent_again() -> None:
    world = World()
    job_id = world.submit(spec())
    world.place(job_id)
    task = world.state.tasks[world.state.jobs[job_id].rank_task_ids[1]]
    assert task.placed_env["NODE_RANK"] == "1"
    assert task.placed_env["SKYPILOT_NODE_IPS"] == "10.0.0.1\n10.0.0.2\n10.0.0.3"
    run = run_command(task)
    assert run.spec.env["NUM_NODES"] == "3" and run.spec.env["HAKURIVER_JOB_ID"] == job_id


def test_ranks_are_numbered_after_the_highest_task_number_so_far() -> None:
    world = World()
    world.record(TaskSubmitted(task_id="before", spec=TaskSpec(command="true", batch_id="b")))
    world.submit(spec(num_nodes=2))
    numbers = [world.state.tasks[t].number for t in world.state.jobs["abcd1234"].rank_task_ids]
    assert numbers == [2, 3]


def test_a_stop_that_comes_after_every_rank_completed_leaves_the_job_completed() -> None:
    world = World()
    job_id = world.submit(spec(num_nodes=2))
    world.place(job_id)
    world.start_all(job_id)
    world.setup_done(job_id, 0, 1)
    world.decide(AdvanceJobs())
    world.finish(job_id, 0)
    world.finish(job_id, 1)
    # The last rank finished; job.finished is not recorded yet when the stop comes.
    with pytest.raises(Conflict):
        world.decide(StopJobs(actor=principal("alice"), job_ids=(job_id,)))
    assert world.decide(StopJobs(actor=principal("alice"), all=True)).events == []
    assert world.decide(AdvanceJobs()).events == [JobFinished(job_id=job_id, state="completed")]


def test_a_setup_report_after_the_job_ended_is_no_anomaly() -> None:
    # A node cut off past lost_after during setup comes back; its outbox still holds the
    # rank's setup report.
    world = World()
    job_id = world.submit(spec(num_nodes=2))
    world.place(job_id)
    world.start_all(job_id)
    ranks = world.state.jobs[job_id].rank_task_ids
    world.record(TaskLost(task_id=ranks[0], node="n1", reason="unreachable too long"))
    world.decide(AdvanceJobs())
    world.finish(job_id, 1, "killed", 143)
    (end,) = world.decide(AdvanceJobs()).events
    assert isinstance(end, JobFinished) and end.state == "failed"
    world.setup_done(job_id, 0)
    assert world.state.anomalies == []


def test_volumes_are_folded_and_one_name_is_recorded_once() -> None:
    from control_plane.commands import CreateVolume

    world = World()
    world.decide(CreateVolume(name="data", actor=principal("alice")))
    assert world.state.volumes["data"].created_by == "alice"
    with pytest.raises(Conflict):
        world.decide(CreateVolume(name="data", actor=principal("bob")))
    # Kept by a snapshot, as the rest of the state.
    assert ClusterState.restore(world.state.snapshot()).volumes == world.state.volumes
