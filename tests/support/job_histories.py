"""A simulated cluster running jobs, producing valid job histories for the history tests.

The job events come from the host's own decisions (``decide_submit_job``,
``decide_stop_jobs``, ``decide_advance_jobs``) on a state folded as the host folds it; the
rest is what the scheduler and the agents record: every rank of a job placed at once
(``task.placed`` each, ``job.placed``, ``job.phase setup`` in one commit), ranks started,
setups reported done (``job.setup_done``), ranks finishing, failing (in setup or in run),
killed after a kill request, or lost. So the histories hold every job status: completed,
failed (with the other ranks stopped), stopped, and jobs still queued or running at a cut.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator, Sequence

from control_plane.commands import AdvanceJobs, StopJobs, SubmitJob
from control_plane.commands import decide as decide_any
from events.envelope import NewEvent, new_event
from events.jobs import rank_env
from events.types import (
    AnyEvent,
    JobPhase,
    JobPlaced,
    JobResources,
    JobSetupDone,
    JobSpec,
    NodeRegistered,
    Rejection,
    TaskDispatched,
    TaskFinished,
    TaskLost,
    TaskPlaced,
    TaskStarted,
)
from projections.cluster import ClusterState
from projections.tasks import ENDED_STATES, TaskView
from support.decisions import context, principal
from support.factories import record_in_memory

GIB = 1 << 30
OWNERS = ("alice", "bob")


class JobSimulation:
    """Generates a valid history of jobs on ``nodes`` nodes from a seeded random source."""

    def __init__(self, rng: random.Random, *, nodes: int = 3, cores: int = 4) -> None:
        self.rng = rng
        self.state = ClusterState()
        self.seq = 1
        self.names = [f"node{i}" for i in range(nodes)]
        self.ctx = context(*self.names)
        self.commits: list[list[NewEvent]] = []
        self._record(
            [
                NodeRegistered(
                    node=name,
                    address=f"10.0.0.{i + 1}",
                    cores=cores,
                    memory_bytes=8 * GIB,
                    executors=("process", "docker"),  # ranks run in containers
                )
                for i, name in enumerate(self.names)
            ]
        )

    def _record(self, events: Sequence[AnyEvent], source: str = "host") -> None:
        if not events:
            return
        news = [new_event(e, source=source) for e in events]
        self.state.apply_all(record_in_memory(news, start_seq=self.seq))
        self.seq += len(news)
        self.commits.append(news)

    def _decide(self, command: object) -> None:
        decision = decide_any(self.state, command, self.ctx)  # type: ignore[arg-type]
        self._record(decision.events)

    def _job_id(self) -> str:
        alphabet = string.ascii_lowercase + string.digits
        while True:
            ident = "".join(self.rng.choice(alphabet) for _ in range(7))
            ident = self.rng.choice(string.ascii_lowercase) + ident
            if ident not in self.state.jobs:
                return ident

    def submit(self, num_nodes: int | None = None) -> str:
        """Submit a job (of ``num_nodes`` ranks, else a random count that fits)."""
        rng = self.rng
        num_nodes = num_nodes or rng.randint(1, len(self.names))
        spec = JobSpec(
            name=rng.choice([None, "train", "eval"]),
            num_nodes=num_nodes,
            resources=JobResources(cpus=str(num_nodes), image_id=rng.choice([None, "torch"])),
            envs={"LR": "0.1"},
            setup=rng.choice([None, "pip install -r requirements.txt"]),
            run="python train.py",
            cores=rng.choice([1, 2]),
            memory_bytes=rng.choice([None, GIB]),
            container=rng.choice([None, "torch"]),
        )
        job_id = self._job_id()
        owner = rng.choice(OWNERS)
        self._decide(SubmitJob(job_id=job_id, spec=spec, yaml="run: x", actor=principal(owner)))
        return job_id

    def place(self, job_id: str) -> bool:
        """Every rank at once on distinct nodes with room (as the gang scheduler does)."""
        job = self.state.jobs[job_id]
        spec = job.spec
        fits, rejected = [], []
        for name in self.names:
            node = self.state.nodes[name]
            memory = spec.memory_bytes or 0
            if node.free_cores >= spec.cores and node.free_memory_bytes >= memory:
                fits.append(name)
            else:
                rejected.append(Rejection(node=name, reason=f"{node.free_cores} free cores"))
        if len(fits) < job.num_nodes:
            return False
        nodes = tuple(self.rng.sample(fits, job.num_nodes))
        addresses = tuple(self.state.nodes[n].address for n in nodes)
        reason = f"gang: {job.num_nodes} of {len(fits)} nodes with room"
        self._record(
            [
                *(
                    TaskPlaced(
                        task_id=task_id,
                        node=node,
                        cores=spec.cores,
                        memory_bytes=spec.memory_bytes,
                        policy="gang",
                        reason=reason,
                        rejected=tuple(rejected),
                        env=rank_env(
                            job_id=job_id,
                            rank=rank,
                            addresses=addresses,
                            gpus_per_node=0,
                            name=job.name,
                        ),
                    )
                    for rank, (task_id, node) in enumerate(
                        zip(job.rank_task_ids, nodes, strict=True)
                    )
                ),
                JobPlaced(
                    job_id=job_id,
                    nodes=nodes,
                    addresses=addresses,
                    policy="gang",
                    reason=reason,
                    rejected=tuple(rejected),
                ),
                JobPhase(job_id=job_id, phase="setup"),
            ]
        )
        return True

    def step_rank(self, task: TaskView) -> None:
        """What the rank's node reports next."""
        rng = self.rng
        node = task.node or "host"
        job = self.state.jobs[task.spec.job_id or ""]
        if task.kill_requested_by is not None and task.state != "pending":
            self._record([TaskFinished(task_id=task.task_id, state="killed", exit_code=-15)], node)
        elif rng.random() < 0.03:
            self._record([TaskLost(task_id=task.task_id, node=node, reason="node went away")])
        elif task.state == "assigning":
            if rng.random() < 0.5:
                self._record([TaskDispatched(task_id=task.task_id, node=node)])
            self._record([TaskStarted(task_id=task.task_id, node=node, pid=100)], node)
        elif task.state == "running" and job.phase == "setup":
            if task.spec.rank in job.setup_done:
                return  # waiting for the run phase
            if rng.random() < 0.1:
                failed = TaskFinished(task_id=task.task_id, state="failed", exit_code=1)
                self._record([failed], node)
            else:
                rank = task.spec.rank or 0
                done = JobSetupDone(task_id=task.task_id, job_id=job.job_id, rank=rank, node=node)
                self._record([done], node)
        elif task.state == "running" and job.phase == "run":
            if rng.random() < 0.15:
                failed = TaskFinished(task_id=task.task_id, state="failed", exit_code=3)
                self._record([failed], node)
            else:
                done = TaskFinished(task_id=task.task_id, state="completed", exit_code=0)
                self._record([done], node)

    def events(self, jobs: int) -> Iterator[NewEvent]:
        """The history until ``jobs`` jobs were submitted and every one ended."""
        for commit in self.run(jobs):
            yield from commit

    def run(self, jobs: int) -> Iterator[list[NewEvent]]:
        """The same, commit by commit."""
        rng = self.rng
        submitted = 0
        yield from self.take()
        for _ in range(jobs * 200 + 1):
            if submitted >= jobs and not self.state.active_jobs:
                return
            roll = rng.random()
            active = [self.state.jobs[j] for j in self.state.active_jobs]
            if submitted < jobs and (not active or roll < 0.25):
                submitted += 1
                self.submit()
            elif 0.25 <= roll < 0.27 and active:
                job = rng.choice(active)
                if job.stop_requested_by is None:
                    self._decide(StopJobs(job_ids=(job.job_id,), actor=principal(job.owner)))
            else:
                queued = [j for j in active if j.phase == "queued"]
                for job in queued:
                    if self.place(job.job_id):
                        break
                ranks = [
                    self.state.tasks[t]
                    for job in active
                    for t in job.rank_task_ids
                    if self.state.tasks[t].state not in ENDED_STATES
                    and self.state.tasks[t].state != "pending"
                ]
                if ranks:
                    self.step_rank(rng.choice(ranks))
            self._decide(AdvanceJobs())
            yield from self.take()
        raise AssertionError("the simulation did not end")

    def take(self) -> Iterator[list[NewEvent]]:
        """The commits recorded since the last call."""
        commits, self.commits = self.commits, []
        yield from commits
