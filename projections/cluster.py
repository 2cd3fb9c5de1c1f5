"""ClusterState: the fold of the whole log into node and task views.

``apply`` is pure bookkeeping over one recorded event: no I/O, no clock, no
randomness, so replaying the same log always gives the same state. Times in
views are the store's ``recorded_at`` clock, one clock for the whole cluster.
Events at or below ``last_seq`` are ignored, so applying a batch twice is safe.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
from msgspec import Struct

from events.codec import gc_paused
from events.envelope import Recorded
from events.types import (
    JobFinished,
    JobPhase,
    JobPlaced,
    JobSetupDone,
    JobStopRequested,
    JobSubmitted,
    NodeForgotten,
    NodeHeartbeat,
    NodeOffline,
    NodeOnline,
    NodeRegistered,
    SshSessionClosed,
    SshSessionOpened,
    TaskDispatched,
    TaskFinished,
    TaskKillRequested,
    TaskLost,
    TaskPaused,
    TaskPauseRequested,
    TaskPlaced,
    TaskReconnected,
    TaskResumed,
    TaskResumeRequested,
    TaskStarted,
    TaskSubmitted,
    TaskUnreachable,
    VolumeCreated,
    VpsReady,
)
from projections.archive import ArchiveRef, ArchiveUnavailable, Loader, NumberTable, TaskTable
from projections.identity import IDENTITY_KINDS, Identity
from projections.jobs import JobView, VolumeView
from projections.nodes import NodeView
from projections.sessions import SshSessionView
from projections.tasks import HOLDING_STATES, TaskView, next_state

# 2: open SSH sessions and the removed-keys record; 3: jobs and the placements' env (an
# older snapshot lacks them: the log is folded from its start instead); 4: final tasks in
# archive segments (projections/archive.py), the snapshot carrying the others. A format-3
# snapshot is still restored (every task in it).
SNAPSHOT_FORMAT = 4
READABLE_FORMATS = frozenset({3, 4})

# The event types ``ClusterState.apply`` folds (its ``match`` names exactly these; a test
# compares the two): any other kind changes no view, and one set lookup sends it past
# the thirty class patterns it would otherwise be tried against (about 3 us an event).
FOLDED_TYPES: frozenset[type] = frozenset(
    {
        JobFinished,
        JobPhase,
        JobPlaced,
        JobSetupDone,
        JobStopRequested,
        JobSubmitted,
        NodeForgotten,
        NodeHeartbeat,
        NodeOffline,
        NodeOnline,
        NodeRegistered,
        SshSessionClosed,
        SshSessionOpened,
        TaskDispatched,
        TaskFinished,
        TaskKillRequested,
        TaskLost,
        TaskPaused,
        TaskPauseRequested,
        TaskPlaced,
        TaskReconnected,
        TaskResumed,
        TaskResumeRequested,
        TaskStarted,
        TaskSubmitted,
        TaskUnreachable,
        VolumeCreated,
        VpsReady,
    }
)


class SnapshotFormatError(ValueError):
    """A snapshot written in another format: not used (the log is folded instead)."""


class Anomaly(Struct, frozen=True, kw_only=True):
    """Something in the log the fold had to refuse or flag (see projections.tasks)."""

    seq: int
    kind: str
    subject: str
    reason: str


class _Snapshot(Struct, kw_only=True):
    format: int
    last_seq: int
    tasks: list[TaskView]
    nodes: list[NodeView]
    anomalies: list[Anomaly]
    identity: Identity | None = None  # absent from snapshots written before identity
    ssh_sessions: list[SshSessionView] = []
    jobs: list[JobView] = []
    volumes: list[VolumeView] = []
    # Format 4: ``tasks`` are the live ones, in submission order, with their ordinals; the
    # final ones are in the segments ``archive`` names. ``numbers``: the live tasks' own.
    ordinals: list[int] = []
    next_ordinal: int = 0
    archive: list[ArchiveRef] = []
    last_number: int = 0
    numbers: list[tuple[int, str]] = []


_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(_Snapshot)


class ClusterState:
    """Every node and task, as folded from the log up to ``last_seq``."""

    def __init__(self) -> None:
        # Every task in submission order; the final ones archived (projections/archive.py).
        self.tasks: TaskTable = TaskTable()
        self.nodes: dict[str, NodeView] = {}
        # Tasks waiting for placement, in submission order (dict as an ordered set).
        self.pending: dict[str, None] = {}
        self.anomalies: list[Anomaly] = []
        self.last_seq = 0
        # Task numbers: the highest given so far, and which task each names.
        self.last_number = 0
        self.numbers: NumberTable = NumberTable(self.tasks)
        # Users, tokens, enrolled nodes, SSH keys.
        self.identity = Identity()
        # SSH sessions opened and not yet closed (projections/sessions.py).
        self.ssh_sessions: dict[str, SshSessionView] = {}
        # Owner -> the VPS tasks of theirs holding resources on a node (derived from the
        # nodes' task ids): the SSH gateway reads a user's own alone at each login.
        self.vps_holding: dict[str, dict[str, None]] = {}
        # Jobs (projections/jobs.py), in submission order; and those not yet ended.
        self.jobs: dict[str, JobView] = {}
        self.active_jobs: dict[str, None] = {}
        # Volumes recorded (``volume.created``), by name.
        self.volumes: dict[str, VolumeView] = {}

    # -- folding -----------------------------------------------------------------------------

    def apply(self, recorded: Recorded) -> None:
        """Fold one recorded event into the state."""
        if recorded.seq <= self.last_seq:
            return
        self.last_seq = recorded.seq
        at = recorded.recorded_at_us
        if recorded.kind in IDENTITY_KINDS:
            problem = self.identity.apply(recorded.event, at)
            if problem is not None:
                self._flag(recorded, recorded.stream, problem)
            return
        if type(recorded.event) not in FOLDED_TYPES:
            return
        match recorded.event:
            case NodeHeartbeat() as e:
                node = self._node(recorded, e.node)
                if node is not None:
                    node.cpu_percent = e.cpu_percent
                    node.memory_percent = e.memory_percent
                    node.memory_used_bytes = e.memory_used_bytes
                    node.gpu_usage = e.gpus
                    node.temperatures = e.temperatures
                    node.running_task_ids = e.running_task_ids
                    node.last_seen_us = at
                    node.heartbeats += 1
                    node.outbox_depth = e.outbox_depth
                    node.link_lag_us = at - recorded.occurred_at_us
            case TaskSubmitted() as e:
                if e.task_id in self.tasks:
                    self._flag(recorded, e.task_id, "task id submitted twice")
                    return
                number = e.number or self.last_number + 1  # 0: recorded before numbers
                if number in self.numbers:
                    self._flag(recorded, e.task_id, f"task number {number} given twice")
                else:
                    self.numbers[number] = e.task_id
                self.last_number = max(self.last_number, number)
                self.tasks[e.task_id] = TaskView(
                    task_id=e.task_id,
                    spec=e.spec,
                    number=number,
                    submitted_at_us=at,
                    last_seq=recorded.seq,
                )
                self.pending[e.task_id] = None
            case TaskPlaced() as e:
                task = self._transition(recorded, e.task_id)
                if task is not None:
                    self.pending.pop(task.task_id, None)
                    task.node = e.node
                    task.cores = e.cores
                    task.memory_bytes = e.memory_bytes
                    task.gpu_ids = e.gpu_ids
                    task.numa_id = e.numa_id
                    task.placed_env = e.env
                    task.placed_at_us = at
                    self._allocate(recorded, task)
            case TaskDispatched() as e:
                self._transition(recorded, e.task_id)
            case TaskStarted() as e:
                task = self._transition(recorded, e.task_id)
                if task is not None:
                    task.started_at_us = at
                    task.pid = e.pid
                    task.container_id = e.container_id
                    task.ssh_port = e.ssh_port
            case VpsReady() as e:
                task = self._transition(recorded, e.task_id)
                if task is not None:
                    task.ssh_port = e.ssh_port
                    task.ssh_address = e.address or None
                    task.sshd = e.sshd
                    task.vps_message = e.message
            case TaskPaused() as e:
                self._transition(recorded, e.task_id)
            case TaskResumed() as e:
                self._transition(recorded, e.task_id)
            case TaskKillRequested() as e:
                task = self._transition(recorded, e.task_id)
                if task is not None:
                    task.kill_requested_by = e.requested_by
            case TaskPauseRequested() | TaskResumeRequested() as e:
                self._transition(recorded, e.task_id)
            case TaskFinished() as e:
                task = self._transition(recorded, e.task_id, e.state)
                if task is not None:
                    task.finished_at_us = at
                    task.exit_code = e.exit_code
                    task.message = e.message
            case TaskLost() as e:
                task = self._transition(recorded, e.task_id)
                if task is not None:
                    task.finished_at_us = at
                    task.message = e.reason
            case TaskUnreachable() as e:
                was = self.tasks[e.task_id].state if e.task_id in self.tasks else None
                task = self._transition(recorded, e.task_id)
                if task is not None:
                    task.unknown_since_us = at
                    task.state_before_unknown = was
                    task.message = e.reason
            case TaskReconnected() as e:
                task = self._transition(recorded, e.task_id, e.state)
                if task is not None:
                    task.unknown_since_us = None
                    task.state_before_unknown = None
                    task.message = ""
            case NodeRegistered() as e:
                node = self.nodes.get(e.node)
                if node is None:
                    node = self.nodes[e.node] = NodeView(name=e.node)
                node.address = e.address
                node.cores = e.cores
                node.memory_bytes = e.memory_bytes
                node.numa = e.numa
                node.gpus = e.gpus
                node.agent_version = e.agent_version
                node.executors = e.executors
                node.run_tasks_as = e.run_tasks_as
                node.process_mounts = e.process_mounts
                node.accounts = None if e.accounts is None else frozenset(e.accounts)
                node.registered_at_us = at
                node.last_seen_us = at
                node.online = True
            case NodeOffline() as e:
                node = self._node(recorded, e.node)
                if node is not None:
                    node.online = False
            case NodeOnline() as e:
                node = self._node(recorded, e.node)
                if node is not None:
                    node.online = True
                    node.last_seen_us = at
            case NodeForgotten() as e:
                node = self._node(recorded, e.node)
                if node is not None:
                    for task_id in node.task_ids:
                        self._flag(recorded, task_id, f"node {e.node} forgotten under this task")
                        if task_id in self.tasks:
                            self._index_vps(self.tasks[task_id], held=False)
                    # Gone: a later hello from it registers a new node.
                    del self.nodes[e.node]
            case SshSessionOpened() as e:
                self.ssh_sessions[e.session_id] = SshSessionView(
                    session_id=e.session_id,
                    task_id=e.task_id,
                    user=e.user,
                    via=e.via,
                    opened_at_us=at,
                )
            case SshSessionClosed() as e:
                self.ssh_sessions.pop(e.session_id, None)
            case JobSubmitted() as e:
                if e.job_id in self.jobs:
                    self._flag(recorded, e.stream, "job id submitted twice")
                    return
                self.jobs[e.job_id] = JobView(
                    job_id=e.job_id,
                    spec=e.spec,
                    owner=e.owner,
                    rank_task_ids=e.rank_task_ids,
                    yaml=e.yaml,
                    workdir_bytes=e.workdir_bytes,
                    submitted_at_us=at,
                    last_seq=recorded.seq,
                )
                self.active_jobs[e.job_id] = None
            case JobPlaced() as e:
                job = self._job(recorded, e.job_id)
                if job is not None:
                    job.nodes = e.nodes
                    job.addresses = e.addresses
                    job.placed_at_us = at
                    job.placement_reason = e.reason
            case JobPhase() as e:
                job = self._job(recorded, e.job_id)
                if job is not None:
                    job.phase = e.phase
                    if e.phase == "run":
                        job.run_at_us = at
            case JobSetupDone() as e:
                self._transition(recorded, e.task_id)
                if e.job_id in self.jobs and self.jobs[e.job_id].final_state is not None:
                    return  # late (its node came back after the job ended): nothing to do
                job = self._job(recorded, e.job_id)
                if job is not None and e.rank not in job.setup_done:
                    task = self.tasks.get(e.task_id)
                    if task is None or task.spec.job_id != e.job_id or task.spec.rank != e.rank:
                        self._flag(recorded, e.task_id, f"not rank {e.rank} of job {e.job_id}")
                    else:
                        job.setup_done.append(e.rank)
            case JobStopRequested() as e:
                job = self._job(recorded, e.job_id)
                if job is not None and job.stop_requested_by is None:
                    job.stop_requested_by = e.requested_by
                    job.stop_reason = e.reason
            case JobFinished() as e:
                job = self._job(recorded, e.job_id)
                if job is not None:
                    job.phase = "ended"
                    job.final_state = e.state
                    job.failed_rank = e.failed_rank
                    job.message = e.message
                    job.finished_at_us = at
                    self.active_jobs.pop(e.job_id, None)
            case VolumeCreated() as e:
                if e.name in self.volumes:
                    self._flag(recorded, e.stream, "volume created twice")
                else:
                    self.volumes[e.name] = VolumeView(
                        name=e.name, created_by=e.created_by, created_at_us=at
                    )
            case _:
                # Environment events change no node or task view.
                pass

    def apply_all(self, records: Iterable[Recorded]) -> None:
        """Fold many recorded events, in order."""
        for recorded in records:
            self.apply(recorded)

    def _node(self, recorded: Recorded, name: str) -> NodeView | None:
        node = self.nodes.get(name)
        if node is None:
            self._flag(recorded, name, "event for a node that never registered")
        return node

    def _job(self, recorded: Recorded, job_id: str) -> JobView | None:
        job = self.jobs.get(job_id)
        if job is None:
            self._flag(recorded, f"job:{job_id}", "event for a job that was never submitted")
        elif job.final_state is not None:
            self._flag(recorded, f"job:{job_id}", f"event for a job already {job.final_state}")
            return None
        else:
            job.last_seq = recorded.seq
        return job

    def _transition(
        self, recorded: Recorded, task_id: str, reported: str | None = None
    ) -> TaskView | None:
        task = self.tasks.get(task_id)
        if task is None:
            self._flag(recorded, task_id, "event for a task that was never submitted")
            return None
        target = next_state(task.state, recorded.kind, reported)
        if target is None:
            self._flag(recorded, task_id, f"illegal transition from {task.state}")
            return None
        if task.state in HOLDING_STATES and target not in HOLDING_STATES:
            self._release(task)
        if target != "pending":
            self.pending.pop(task_id, None)
        task.state = target
        task.last_seq = recorded.seq
        return task

    def _allocate(self, recorded: Recorded, task: TaskView) -> None:
        node = self.nodes.get(task.node or "")
        if node is None:
            self._flag(recorded, task.task_id, f"placed on unknown node {task.node!r}")
            return
        node.allocated_cores += task.cores
        node.allocated_memory_bytes += task.memory_bytes or 0
        clash = set(task.gpu_ids) & set(node.allocated_gpus)
        if clash:
            self._flag(
                recorded, task.task_id, f"GPU {sorted(clash)} double-allocated on {node.name}"
            )
        node.allocated_gpus.extend(task.gpu_ids)
        if task.numa_id is not None:
            by_numa = node.allocated_cores_by_numa
            by_numa[task.numa_id] = by_numa.get(task.numa_id, 0) + task.cores
        node.task_ids.append(task.task_id)
        self._index_vps(task, held=True)
        if node.allocated_cores > node.cores:
            self._flag(recorded, task.task_id, f"cores overcommitted on {node.name}")
        if node.memory_bytes and node.allocated_memory_bytes > node.memory_bytes:
            self._flag(recorded, task.task_id, f"memory overcommitted on {node.name}")

    def _release(self, task: TaskView) -> None:
        node = self.nodes.get(task.node or "")
        if node is None:
            return
        node.allocated_cores -= task.cores
        node.allocated_memory_bytes -= task.memory_bytes or 0
        for gpu in task.gpu_ids:
            if gpu in node.allocated_gpus:
                node.allocated_gpus.remove(gpu)
        if task.numa_id is not None:
            left = node.allocated_cores_by_numa.get(task.numa_id, 0) - task.cores
            if left:
                node.allocated_cores_by_numa[task.numa_id] = left
            else:
                node.allocated_cores_by_numa.pop(task.numa_id, None)
        if task.task_id in node.task_ids:
            node.task_ids.remove(task.task_id)
        self._index_vps(task, held=False)

    def _index_vps(self, task: TaskView, *, held: bool) -> None:
        """Keep ``vps_holding`` in step with the nodes' task ids."""
        if task.spec.task_type != "vps":
            return
        owned = self.vps_holding.setdefault(task.spec.owner, {})
        if held:
            owned[task.task_id] = None
        else:
            owned.pop(task.task_id, None)
        if not owned:
            del self.vps_holding[task.spec.owner]

    def _flag(self, recorded: Recorded, subject: str, reason: str) -> None:
        self.anomalies.append(
            Anomaly(seq=recorded.seq, kind=recorded.kind, subject=subject, reason=reason)
        )

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as bytes (msgpack), to be restored with ``restore``: every task
        in it (archived ones decoded), so the bytes stand alone (a copy of the state)."""
        return _snapshot_encoder.encode(
            _Snapshot(
                format=3,
                last_seq=self.last_seq,
                tasks=list(self.tasks.values()),
                nodes=list(self.nodes.values()),
                anomalies=self.anomalies,
                identity=self.identity,
                ssh_sessions=list(self.ssh_sessions.values()),
                jobs=list(self.jobs.values()),
                volumes=list(self.volumes.values()),
            )
        )

    def seal(self, token: bytes) -> tuple[ArchiveRef, bytes] | None:
        """Archive the final tasks not yet archived: their segment's reference and bytes
        (to be written before any snapshot naming it), or None when there are none."""
        sealed = self.tasks.seal(self.last_seq, token, self.numbers)
        return None if sealed is None else (sealed[0].ref, sealed[1])

    def archived_snapshot(self) -> bytes:
        """The state as bytes without the archived tasks: a reference to each segment
        instead (``restore`` then needs a loader of their bytes). ``seal`` first."""
        live = self.tasks.live()
        return _snapshot_encoder.encode(
            _Snapshot(
                format=SNAPSHOT_FORMAT,
                last_seq=self.last_seq,
                tasks=[v for _, v in live],
                ordinals=[o for o, _ in live],
                next_ordinal=self.tasks.next_ordinal,
                archive=self.tasks.refs(),
                last_number=self.last_number,
                numbers=list(self.numbers.live.items()),
                nodes=list(self.nodes.values()),
                anomalies=self.anomalies,
                identity=self.identity,
                ssh_sessions=list(self.ssh_sessions.values()),
                jobs=list(self.jobs.values()),
                volumes=list(self.volumes.values()),
            )
        )

    @staticmethod
    def archive_refs(data: bytes) -> list[ArchiveRef]:
        """The archive segments a snapshot names (none for one that stands alone)."""
        with gc_paused():
            return _snapshot_decoder.decode(data).archive

    @classmethod
    def restore(cls, data: bytes, archive: Loader | None = None) -> ClusterState:
        """A state equal to the one that produced ``data`` with ``snapshot`` (or with
        ``archived_snapshot``: then ``archive`` gives the bytes of its segments)."""
        with gc_paused():
            snap = _snapshot_decoder.decode(data)
        if snap.format not in READABLE_FORMATS:
            known = " or ".join(map(str, sorted(READABLE_FORMATS)))
            raise SnapshotFormatError(f"snapshot format {snap.format} is not {known}")
        if snap.archive and archive is None:
            raise ArchiveUnavailable("the snapshot names archive segments and no loader")
        if snap.format == 3:
            state = cls.assemble(
                snap.last_seq, snap.tasks, snap.nodes, snap.anomalies, jobs=snap.jobs
            )
        else:
            state = cls()
            state.last_seq = snap.last_seq
            state.last_number = snap.last_number
            state.tasks.adopt(zip(snap.ordinals, snap.tasks, strict=True), snap.next_ordinal)
            if archive is not None:
                state.tasks.attach(snap.archive, archive)
            state.numbers.live = dict(snap.numbers)
            for task in snap.tasks:
                if task.state == "pending":
                    state.pending[task.task_id] = None
            state._add_parts(snap.nodes, snap.anomalies, snap.jobs)
        if snap.identity is not None:
            state.identity = snap.identity
        state.ssh_sessions = {s.session_id: s for s in snap.ssh_sessions}
        state.volumes = {v.name: v for v in snap.volumes}
        return state

    @classmethod
    def assemble(
        cls,
        last_seq: int,
        tasks: Iterable[TaskView],
        nodes: Iterable[NodeView],
        anomalies: list[Anomaly],
        last_number: int = 0,
        *,
        jobs: Iterable[JobView] = (),
    ) -> ClusterState:
        """A state from its parts (tasks and jobs in submission order), as a snapshot
        keeps them.

        Tasks without a number (a snapshot written before numbers existed) are numbered
        as the fold numbers them: on after the highest so far. ``last_number`` is the
        highest number given when ``tasks`` are not all of them (a history snapshot's
        live part). ``active_jobs`` is rebuilt from the jobs: those without a final state.
        """
        state = cls()
        state.last_seq = last_seq
        state.last_number = last_number
        numbers = state.numbers.live  # a new state: nothing archived, the plain dicts
        views: list[TaskView] = []
        for task in tasks:
            if not task.number:
                task.number = state.last_number + 1
            state.last_number = max(state.last_number, task.number)
            numbers.setdefault(task.number, task.task_id)
            views.append(task)
            if task.state == "pending":
                state.pending[task.task_id] = None
        state.tasks.adopt(enumerate(views), len(views))
        state._add_parts(nodes, anomalies, jobs)
        return state

    def _add_parts(
        self, nodes: Iterable[NodeView], anomalies: list[Anomaly], jobs: Iterable[JobView]
    ) -> None:
        self.nodes = {node.name: node for node in nodes}
        for node in self.nodes.values():
            for task_id in node.task_ids:
                # A node holds active tasks only: never an archived (final) one.
                task = self.tasks.get(task_id)
                if task is not None:
                    self._index_vps(task, held=True)
        self.anomalies = anomalies
        self.jobs = {job.job_id: job for job in jobs}
        self.active_jobs = {j: None for j, job in self.jobs.items() if job.final_state is None}

    @classmethod
    def rebuild(
        cls, snapshot: bytes | None, tail: Iterable[Recorded], archive: Loader | None = None
    ) -> ClusterState:
        """Restore from a snapshot (or start empty) and fold the events after it."""
        state = cls.restore(snapshot, archive) if snapshot is not None else cls()
        state.apply_all(tail)
        return state
