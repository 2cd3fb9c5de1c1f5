"""Pure placement: which pending tasks and jobs go where now, and why.

``plan`` walks the queue in submission order. A task that names its node
(``--target``) is considered there only; any other task goes to the node the
policy prefers among those with room. Accounting is exact: the node views
already count every task placed and not yet final (assigning, running,
paused), and ``plan`` takes what it places from each node's ``Room`` in the same
pass, so nothing is ever double-allocated. A task that does not fit now stays
pending; later tasks that do fit may go first (backfill), so one large task does
not stall the queue. Offline nodes get nothing, and neither does a node that runs
tasks as their owners (``[runner] run_tasks_as = "owner"``) and has no account of the
task's owner. A VPS task goes only to a node that can run one (``vps_refusal``): a
Docker executor, and tasks run as the runner's user (a VPS is a root container with
sshd). GPUs asked for by count (``gpu_count``, ``gpu_model``) are the lowest free ids
of that model (``rooms.gpu_model_matches``).

A job's ranks (``spec.job_id``; consecutive in the queue) are placed as a gang: at the
job's turn, every rank on a distinct online node with room for it, all in this pass, or
none. A job that has waited ``[jobs] reserve_after`` seconds gets a rank's share of N
nodes held for it: later work no longer takes that share, so a job that needs several
free nodes at once is not starved by a stream of small tasks (docs/decisions.md).

Every placement comes out as a ``task.placed`` event carrying the policy, the
reason and the nodes rejected with theirs; a job's also as ``job.placed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from control_plane.rooms import Room, cores_text, never_holds
from events.jobs import rank_env
from events.types import JobPhase, JobPlaced, Rejection, TaskPlaced, TaskSpec
from projections.cluster import ClusterState
from projections.jobs import JobView
from projections.nodes import NodeView
from projections.tasks import TaskView

Policy = Literal["first-fit", "least-loaded", "round-robin"]
POLICIES: tuple[Policy, ...] = ("first-fit", "least-loaded", "round-robin")
# What a pass places: a task, or a job (its ranks' task.placed, then these two).
Placement = TaskPlaced | JobPlaced | JobPhase


def vps_refusal(node: NodeView) -> str | None:
    """Why ``node`` can never run a VPS task; None if it can.

    A VPS is a container whose sshd runs as root: a node without the Docker executor
    has nowhere to run it, and a node that runs tasks as their owners
    (``run_tasks_as = "owner"``) keeps users from being root on it.
    """
    if node.run_tasks_as == "owner":
        return f"node {node.name} runs tasks as their owners (run_tasks_as = owner): no VPS there"
    if "docker" not in node.executors:
        return f"node {node.name} has no Docker executor: a VPS is a container"
    return None


class Scheduler:
    """Places pending tasks and jobs by a policy; keeps only the round-robin cursor
    between passes. ``reserve_after_s`` (``[jobs] reserve_after``; 0: never) is how long a
    job waits before nodes are held for it."""

    def __init__(self, policy: Policy = "first-fit", *, reserve_after_s: float = 0.0) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.policy: Policy = policy
        self.reserve_after_s = reserve_after_s
        self._cursor = 0

    def plan(
        self,
        state: ClusterState,
        incoming: Sequence[TaskView] = (),
        *,
        now_us: int = 0,
        freed: Sequence[TaskView] = (),
    ) -> list[Placement]:
        """Placements for the pending tasks and jobs that fit now, in queue order.

        ``incoming`` are tasks being submitted right now, not in the state yet: they
        queue after every pending task, so placing them in the same commit as their
        submission changes no order. ``freed`` are tasks whose end is recorded in the
        same commit as these placements, before them: what they hold counts as free
        (an agent's batch of ends and the placements it makes room for, one commit).
        ``now_us`` (the host's clock) tells how long each job has waited. A job comes
        out as a ``task.placed`` per rank, in rank order, then its ``job.placed`` and
        ``job.phase`` ``setup``.
        """
        planned = _Pass(self, state, incoming, now_us, freed=freed)
        planned.run()
        self._cursor = planned.cursor
        return planned.placements

    def would_place(self, state: ClusterState, *, now_us: int = 0) -> bool:
        """Whether a pass on ``state`` now would place anything: a dry pass that moves no
        cursor, so the caller can skip taking the exclusive gate when nothing fits."""
        if not state.pending:
            return False
        planned = _Pass(self, state, (), now_us, first_only=True)
        planned.run()
        return bool(planned.placements)

    def explain(
        self, state: ClusterState, jobs: Sequence[JobView], *, now_us: int
    ) -> dict[str, str]:
        """Why each job waits (a queued one: what this scheduler, with its policy, cursor
        and reservation rule, sees at its turn in the queue, one line per group of
        reasons), or how it was placed: one dry pass for all of them, recording nothing."""
        return _explain(self, state, jobs, now_us)


def _explain(
    scheduler: Scheduler, state: ClusterState, jobs: Sequence[JobView], now_us: int
) -> dict[str, str]:
    answers: dict[str, str] = {}
    queued: list[str] = []
    for job in jobs:
        if job.final_state is not None:
            message = f" ({job.message})" if job.message else ""
            answers[job.job_id] = f"ended: {job.final_state}{message}"
        elif job.phase != "queued":
            answers[job.job_id] = job.placement_reason or f"placed on {', '.join(job.nodes)}"
        elif job.stop_requested_by is not None:
            answers[job.job_id] = f"stopped by {job.stop_requested_by} before it was placed"
        else:
            queued.append(job.job_id)
    if not queued:
        return answers
    # What the scheduler would see at each job's turn: a pass that records nothing.
    dry = _Pass(scheduler, state, (), now_us, watch=frozenset(queued))
    dry.run()
    fits = {p.job_id for p in dry.placements if isinstance(p, JobPlaced)}
    for job_id in queued:
        if job_id in dry.explanations:
            answers[job_id] = dry.explanations[job_id]
        elif job_id in fits:
            answers[job_id] = "fits now: the scheduler's next pass places it"
        else:
            answers[job_id] = "not every rank is queued: the job cannot be placed"
    return answers


class _Pass:
    """One walk over the queue: what is free on each online node, what this pass placed,
    and which nodes it holds for jobs that waited too long."""

    def __init__(
        self,
        scheduler: Scheduler,
        state: ClusterState,
        incoming: Sequence[TaskView],
        now_us: int,
        *,
        watch: frozenset[str] = frozenset(),
        freed: Sequence[TaskView] = (),
        first_only: bool = False,
    ) -> None:
        self.policy = scheduler.policy
        self.cursor = scheduler._cursor
        self.reserve_after_us = scheduler.reserve_after_s * 1e6
        self.state = state
        self.incoming = incoming
        self.now_us = now_us
        self.names = sorted(name for name, node in state.nodes.items() if node.online)
        self.rooms = {name: Room.of(state.nodes[name]) for name in self.names}
        for task in freed:
            room = self.rooms.get(task.node or "")
            if room is not None and task.holds_resources:
                room.give_back(task.cores, task.memory_bytes, task.gpu_ids, task.numa_id)
        self.held: dict[str, str] = {}  # node -> the job holding a rank's share of it
        self.placements: list[Placement] = []
        self.watch = watch  # jobs to explain when they do not fit
        self.explanations: dict[str, str] = {}
        self.first_only = first_only  # stop at the first placement (``would_place``)
        # (node, needs) already refused in this pass. A pass only ever takes from a room
        # (and holds shares of it), never gives back, so a node that refused some needs
        # refuses them again for the rest of the pass: a long queue of tasks alike costs
        # one refusal per node, not one per task and node (a pass over 10k pending tasks
        # on 4 full nodes took 28 ms, on the event loop, twice per turnover).
        self.refused: set[tuple[str, _Needs]] = set()
        self.nowhere: set[_Needs] = set()  # needs every online node refused in this pass

    def run(self) -> None:
        state = self.state
        queued = {t.task_id: t for t in self.incoming}
        jobs_seen: set[str] = set()
        for task in [*(state.tasks[t] for t in state.pending), *self.incoming]:
            if self.first_only and self.placements:
                return
            job_id = task.spec.job_id
            if job_id is None:
                self._place_task(task)
            elif job_id not in jobs_seen:
                # A job's ranks are consecutive in the queue: the first stands for all.
                jobs_seen.add(job_id)
                job = state.jobs.get(job_id)
                if job is not None:
                    self._place_job(job, queued)

    # -- one task ----------------------------------------------------------------------------

    def _place_task(self, task: TaskView) -> None:
        spec = task.spec
        target = spec.target
        needs = _needs(spec)
        if target is not None:
            node_name = target.split(":", 1)[0]
            if node_name not in self.rooms:
                return  # offline (or gone): the task waits for its node
            candidates = [node_name]
        elif needs in self.nowhere:
            return
        else:
            candidates = self._order()
        refused = self.refused
        for at, name in enumerate(candidates):
            if (name, needs) in refused:
                continue
            if self._refusal(name, spec) is not None:
                refused.add((name, needs))
                continue
            # The nodes passed over, with their reasons as they stand now: the words a
            # refusal at the task's own turn has (a room only shrinks within a pass).
            rejected = [
                Rejection(node=other, reason=self._refusal(other, spec) or "")
                for other in candidates[:at]
            ]
            gpu_ids = self._take(name, spec)
            if self.policy == "round-robin" and target is None:
                self.cursor = self.names.index(name) + 1
            self.placements.append(self._placed(task, name, gpu_ids, target, rejected))
            return
        if target is None:  # every online node refused it, and will for the rest of the pass
            self.nowhere.add(needs)

    def _placed(
        self,
        task: TaskView,
        node: str,
        gpu_ids: tuple[int, ...],
        target: str | None,
        rejected: list[Rejection],
    ) -> TaskPlaced:
        spec = task.spec
        if target is not None:
            reason = f"targeted {target}"
        elif rejected:
            reason = f"{self.policy}: first node with room after {len(rejected)} without"
        else:
            reason = f"{self.policy}: preferred node had room"
        return TaskPlaced(
            task_id=task.task_id,
            node=node,
            cores=spec.cores,
            memory_bytes=spec.memory_bytes,
            gpu_ids=gpu_ids,
            numa_id=spec.numa_id,
            policy=self.policy,
            reason=reason,
            rejected=tuple(rejected),
        )

    # -- one job: every rank at once, or none ------------------------------------------------

    def _place_job(self, job: JobView, incoming: dict[str, TaskView]) -> None:
        if job.phase != "queued" or job.stop_requested_by is not None:
            return
        ranks: list[TaskView] = []
        for task_id in job.rank_task_ids:
            rank = incoming.get(task_id)
            if rank is None and task_id in self.state.pending:
                rank = self.state.tasks[task_id]
            if rank is None:
                return  # a rank no longer queued (killed by a stop): nothing to place
            ranks.append(rank)
        chosen, rejected = self._choose(ranks)
        if chosen is None:
            why = self._why(job, ranks) if job.job_id in self.watch else None
            held = self._reserve(job, ranks) if self._waited_long(job) else None
            if why is not None:
                self.explanations[job.job_id] = why + self._held_text(job, held)
            return
        addresses = tuple(self.state.nodes[name].address or name for name in chosen)
        count = len(ranks)
        for rank_no, (task, name) in enumerate(zip(ranks, chosen, strict=True)):
            gpu_ids = self._take(name, task.spec)
            env = rank_env(
                job_id=job.job_id,
                rank=rank_no,
                addresses=addresses,
                gpus_per_node=task.spec.gpu_count,
                name=job.name,
            )
            self.placements.append(
                TaskPlaced(
                    task_id=task.task_id,
                    node=name,
                    cores=task.spec.cores,
                    memory_bytes=task.spec.memory_bytes,
                    gpu_ids=gpu_ids,
                    numa_id=task.spec.numa_id,
                    policy=self.policy,
                    reason=f"job {job.job_id}'s {count} ranks placed at once on distinct"
                    " nodes (gang placement)",
                    rejected=rejected,
                    env=env,
                )
            )
        if self.policy == "round-robin":
            self.cursor = self.names.index(chosen[-1]) + 1
        after = f", after {len(rejected)} without" if rejected else ""
        self.placements.append(
            JobPlaced(
                job_id=job.job_id,
                nodes=tuple(chosen),
                addresses=addresses,
                policy=self.policy,
                reason=f"{self.policy}: {count} distinct nodes with room for a rank{after}",
                rejected=rejected,
            )
        )
        self.placements.append(JobPhase(job_id=job.job_id, phase="setup"))

    def _choose(self, ranks: list[TaskView]) -> tuple[list[str] | None, tuple[Rejection, ...]]:
        """A distinct node with room for each rank, by the policy (None: not all of them
        fit now), and the nodes without room, with their reasons."""
        order = self._order()
        chosen: list[str] = []
        taken: set[str] = set()
        refused: dict[tuple[str, _Needs], str] = {}
        rejected: dict[str, str] = {}
        for rank in ranks:
            spec = _needs(rank.spec)
            for name in order:
                if name in taken or (name, spec) in refused:
                    continue
                refusal = self._refusal(name, rank.spec)
                if refusal is None:
                    chosen.append(name)
                    taken.add(name)
                    break
                refused[name, spec] = refusal
                rejected.setdefault(name, refusal)
            else:
                return None, ()
        return chosen, tuple(Rejection(node=n, reason=r) for n, r in rejected.items())

    # -- reservations ------------------------------------------------------------------------

    def _waited_long(self, job: JobView) -> bool:
        return self.reserve_after_us > 0 and (
            self.now_us - job.submitted_at_us >= self.reserve_after_us
        )

    def _reserve(self, job: JobView, ranks: list[TaskView]) -> list[str]:
        """Hold a rank's share of N nodes for a job that waited too long (docs/decisions.md):
        among the online nodes no older job holds and that could hold a rank when idle,
        those with room now first, then the freest (GPUs of its model, cores, memory), then
        by name. Nothing is held when fewer than N such nodes exist: the job could not start
        on them anyway."""
        spec = ranks[0].spec  # the ranks of a job ask for the same resources
        nodes = self.state.nodes
        able = [
            name
            for name in self.names
            if name not in self.held
            and never_holds(nodes[name], spec) is None
            and nodes[name].cannot_run(spec) is None
        ]
        if len(able) < len(ranks):
            return []

        def freest(name: str) -> tuple[bool, int, int, int, str]:
            room = self.rooms[name]
            gpus = len(room.free_of_model(spec)) if spec.gpu_count else 0
            return (room.refusal(spec) is not None, -gpus, -room.cores, -(room.memory or 0), name)

        able.sort(key=freest)
        chosen = able[: len(ranks)]
        for name, rank in zip(chosen, ranks, strict=False):
            self.rooms[name].hold(rank.spec)
            self.held[name] = job.job_id
        return chosen

    # -- shared ------------------------------------------------------------------------------

    def _order(self) -> list[str]:
        names, rooms = self.names, self.rooms
        if self.policy == "least-loaded":
            return sorted(names, key=lambda n: (-rooms[n].cores, n))
        if self.policy == "round-robin" and names:
            start = self.cursor % len(names)
            return names[start:] + names[:start]
        return names

    def _refusal(self, name: str, spec: TaskSpec) -> str | None:
        """Why the task cannot go on node ``name`` now; None if it can."""
        node = self.state.nodes[name]
        # A VPS's own rule first: it says why a VPS (sshd as root, a container) never fits
        never = (vps_refusal(node) if spec.task_type == "vps" else None) or node.cannot_run(spec)
        if never:
            return never
        refusal = self.rooms[name].refusal(spec)
        if refusal is not None and name in self.held:
            return f"{refusal} (a share is held for job {self.held[name]}, waiting longer)"
        return refusal

    def _take(self, name: str, spec: TaskSpec) -> tuple[int, ...]:
        room = self.rooms[name]
        gpu_ids = room.pick_gpus(spec)
        room.take(spec, gpu_ids)
        return gpu_ids

    # -- explanations ------------------------------------------------------------------------

    def _why(self, job: JobView, ranks: list[TaskView]) -> str:
        """Why the job does not fit at its turn: one line per group of reasons."""
        spec = ranks[0].spec
        count = len(ranks)
        nodes = self.state.nodes
        have = [name for name in self.names if self._refusal(name, spec) is None]
        head = f"needs {count} nodes with {_needs_text(spec)} each; "
        if have:
            verb = "has" if len(have) == 1 else "have"
            lines = [head + f"{len(have)} {verb} room: {', '.join(have)}"]
        else:
            lines = [head + "none has room"]
        registered = sorted(nodes)
        offline = [n for n in registered if not nodes[n].online]
        small = [(n, r) for n in registered if (r := never_holds(nodes[n], spec))]
        no_account = [(n, r) for n in registered if (r := nodes[n].account_refusal(spec.owner))]
        # No engine for a container rank, no binds for a process rank's volumes: never here
        cannot = [
            (n, r)
            for n in registered
            if (r := nodes[n].container_refusal(spec) or nodes[n].mounts_refusal(spec))
        ]
        unable = {n for n, _ in small} | {n for n, _ in no_account} | {n for n, _ in cannot}
        held = [n for n in self.names if n not in have and n in self.held and n not in unable]
        busy = [
            (n, self.rooms[n].refusal(spec) or "")
            for n in self.names
            if n not in have and n not in held and n not in unable
        ]
        if len(registered) < count:
            lines.append(f"{len(registered)} nodes registered, the job needs {count}")
        elif len(registered) - len(unable) < count:
            lines.append(
                f"{len(registered) - len(unable)} of the {len(registered)} nodes registered"
                f" could ever hold a rank, the job needs {count}"
            )
        if busy:
            lines.append("no room now: " + "; ".join(f"{n}: {r}" for n, r in busy))
        if held:
            lines.append(
                "held for jobs waiting longer: "
                + ", ".join(f"{n} (job {self.held[n]})" for n in held)
            )
        if small:
            lines.append("too small: " + "; ".join(f"{n} {r}" for n, r in small))
        if no_account:
            lines.append("no account: " + "; ".join(r for _, r in no_account))
        if cannot:
            lines.append("cannot run it: " + "; ".join(r for _, r in cannot))
        if offline:
            lines.append("offline: " + ", ".join(offline))
        return "\n".join(lines)

    def _held_text(self, job: JobView, held: list[str] | None) -> str:
        if held is None:
            return ""
        waited = (self.now_us - job.submitted_at_us) / 1e6
        if not held:
            return (
                f"\nwaited {waited:.0f} s, past [jobs] reserve_after: too few nodes are left"
                " to hold for it (older jobs hold the others)"
            )
        return (
            f"\nwaited {waited:.0f} s, past [jobs] reserve_after: a rank's share of"
            f" {', '.join(held)} is held for it; later work goes elsewhere"
        )


# What decides where a task fits: tasks alike in it fit (or not) on the same nodes.
_Needs = tuple[int, int | None, tuple[int, ...], int | None, int, str | None, str, str, bool, bool]


def _needs(spec: TaskSpec) -> _Needs:
    """The part of a spec that decides where it fits: everything ``_Pass._refusal`` reads
    (the room's refusal, ``NodeView.cannot_run`` and ``vps_refusal``)."""
    return (
        spec.cores,
        spec.memory_bytes,
        spec.gpu_ids,
        spec.numa_id,
        spec.gpu_count,
        spec.gpu_model,
        spec.owner,
        spec.task_type,
        spec.container is None,
        bool(spec.mounts),
    )


def _needs_text(spec: TaskSpec) -> str:
    """``2 free GPUs (V100), 8 cores and 16 GiB of memory``."""
    parts = []
    if spec.gpu_count:
        gpus = "1 free GPU" if spec.gpu_count == 1 else f"{spec.gpu_count} free GPUs"
        parts.append(f"{gpus} ({spec.gpu_model})" if spec.gpu_model else gpus)
    parts.append(cores_text(spec.cores))
    if spec.memory_bytes:
        parts.append(f"{_size(spec.memory_bytes)} of memory")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} bytes"
