"""History snapshots: the state every N events, split so that old points stay cheap.

A full ``ClusterState`` grows with every task ever submitted, so a full copy every N
events would cost the log's size squared in disk, and restoring one at a late point
would decode every task in history. A task that has ended (``ENDED_STATES``: completed,
failed, killed, killed_oom, or lost) changes no more, but for a lost task that its
node reports late (lost -> a final state). So each ``history-<seq>.snap`` stores:

* the *live part* of the state at its seq: every node, and every task not ended (with
  its position among all tasks, to keep submission order);
* only the tasks that ended (or, lost, took their final state) since the previous
  history snapshot, and the anomalies flagged since then, left undecoded until a full
  restore needs them (a later copy of a task replaces an earlier one);
* the previous snapshot's seq, the number of tasks, the greatest task id so far, and the
  highest task number given (the live part alone cannot tell it);
* jobs the same way as tasks: the jobs not ended in the live part, and the jobs that
  ended (``job.finished``, after which the fold changes a job no more) since the
  previous snapshot once, left undecoded, with the number of jobs for their order.

So the files together hold each ended task about once (disk linear in the log), the
state *without ended tasks* at any point is one small file plus at most N events, and
the full state is the chain of files back to the first. The files follow the one
snapshot rule of ``events.snapshot_files`` (folder, name, atomic fsync'd write): each
starts with the log's hash at its seq and is used only while that still matches. They
are never pruned, and are derived data: delete them all at any time (not some: a full
restore needs the whole chain, and falls back to the control plane's snapshots or a
fold from the start when a link is missing).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Sequence

import msgspec

from events.codec import gc_paused
from events.snapshot_files import HISTORY as HISTORY_SNAPSHOT
from events.types import JobSpec, TaskSpec
from projections.cluster import Anomaly, ClusterState
from projections.jobs import JobView, VolumeView
from projections.nodes import NodeView
from projections.tasks import ENDED_STATES, FINAL_STATES, TaskView
from replay_tools.logfile import LogFile, as_log

HISTORY_FORMAT = 4  # 3: max_number (task numbers); 4: jobs
HISTORY_EVERY = 20_000

Entries = list[tuple[int, TaskView]]
JobEntries = list[tuple[int, JobView]]


class HistorySnapshot(msgspec.Struct, kw_only=True):
    """One ``history-<seq>.snap`` (see the module docstring)."""

    format: int
    last_seq: int  # the seq the file is anchored at
    state_seq: int  # the state's own last_seq (lower if the last events were of unknown kinds)
    previous: int
    task_count: int
    max_task_id: str
    nodes: list[NodeView]
    active: Entries
    ended: msgspec.Raw
    anomalies: msgspec.Raw
    max_number: int = 0
    job_count: int
    active_jobs: JobEntries
    ended_jobs: msgspec.Raw
    volumes: list[VolumeView] = []  # every volume: few, and never ended


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(HistorySnapshot)
_entries = msgspec.msgpack.Decoder(Entries)
_job_entries = msgspec.msgpack.Decoder(JobEntries)
_anomalies = msgspec.msgpack.Decoder(list[Anomaly])
# Ended tasks stay in the writer's fold as stubs: the fold only ever reads their state.
_STUB_SPEC = TaskSpec(command="", batch_id="")
# Ended jobs too: the fold reads only that a job id exists and its final state.
_STUB_JOB_SPEC = JobSpec(run="")


def read_history(log: LogFile, seq: int, data: bytes | None = None) -> HistorySnapshot | None:
    """The history snapshot at ``seq`` if its file exists, belongs to this log and parses."""
    if data is None:
        data = log.snapshots.read(HISTORY_SNAPSHOT, seq, log.hash_at)
    return _parse(data, seq) if data is not None else None


def _parse(data: bytes, seq: int) -> HistorySnapshot | None:
    try:
        snap = _decoder.decode(data)
    except msgspec.DecodeError:  # another format (or a torn file): not ours to use
        return None
    return snap if snap.format == HISTORY_FORMAT and snap.last_seq == seq else None


def latest_history(log: LogFile, at_or_before: int) -> HistorySnapshot | None:
    """The newest usable history snapshot at or before a seq."""
    for seq, path in log.snapshot_files(HISTORY_SNAPSHOT, at_or_before):
        data = log.anchored(seq, path)
        snap = read_history(log, seq, data) if data is not None else None
        if snap is not None:
            return snap
    return None


def restore_live_part(snap: HistorySnapshot) -> ClusterState:
    """The state at the snapshot without its ended tasks and jobs (nor anomalies)."""
    tasks = [view for _, view in snap.active]
    jobs = [view for _, view in snap.active_jobs]
    return _state(snap, tasks, [], jobs)


def restore_full(log: LogFile, snap: HistorySnapshot) -> ClusterState | None:
    """The whole state at ``snap``, from the chain of snapshots back to the first."""
    chain = [snap]
    anchors: dict[int, bytes] = {}
    while chain[-1].previous:
        previous = chain[-1].previous
        if previous >= chain[-1].last_seq:
            return None
        found = log.snapshots.read_unchecked(HISTORY_SNAPSHOT, previous)
        older = _parse(found[1], previous) if found is not None else None
        if found is None or older is None:
            return None
        anchors[previous] = found[0]
        chain.append(older)
    # Every link must belong to this log: one query for all their anchors.
    if log.hashes_at(anchors) != anchors:
        return None
    slots: list[TaskView | None] = [None] * snap.task_count
    job_slots: list[JobView | None] = [None] * snap.job_count
    anomalies: list[Anomaly] = []
    with gc_paused():
        try:
            for link in reversed(chain):  # oldest first: a later copy of a task wins
                for ordinal, view in _entries.decode(link.ended):
                    slots[ordinal] = view
                for ordinal, job in _job_entries.decode(link.ended_jobs):
                    job_slots[ordinal] = job
                anomalies += _anomalies.decode(link.anomalies)
            for ordinal, view in snap.active:
                slots[ordinal] = view
            for ordinal, job in snap.active_jobs:
                job_slots[ordinal] = job
        except (IndexError, msgspec.DecodeError):
            return None
        tasks = [view for view in slots if view is not None]
        jobs = [job for job in job_slots if job is not None]
        if len(tasks) != snap.task_count or len(jobs) != snap.job_count:
            return None
        return _state(snap, tasks, anomalies, jobs)


def _state(
    snap: HistorySnapshot,
    tasks: Sequence[TaskView],
    anomalies: list[Anomaly],
    jobs: Sequence[JobView],
) -> ClusterState:
    """A ClusterState from a snapshot's parts, as ``ClusterState.restore`` builds one."""
    state = ClusterState.assemble(
        snap.state_seq, tasks, snap.nodes, anomalies, snap.max_number, jobs=jobs
    )
    state.volumes = {v.name: v for v in snap.volumes}
    return state


class HistoryWriter:
    """Folds the log and writes a history snapshot every ``every`` seqs; incremental.

    Keeps its fold between calls (the control plane calls ``catch_up`` as the log
    grows), with ended tasks and jobs reduced to stubs once written: the fold reads
    nothing of a final task but its state, nor of an ended job but its final state, so
    the stubs fold exactly like the real views.
    """

    def __init__(self, every: int = HISTORY_EVERY) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.every = every
        self._state: ClusterState | None = None
        self._last = 0  # seq of the newest snapshot of the chain (0: none yet)
        self._count = 0  # tasks at that snapshot
        # task id -> ordinal, of the tasks not ended at that snapshot, and of those lost
        self._active: dict[str, int] = {}
        self._lost: dict[str, int] = {}
        self._anomalies = 0
        self._max_id = ""
        self._job_count = 0  # jobs at that snapshot
        self._active_jobs: dict[str, int] = {}  # job id -> ordinal, not ended then

    @property
    def next_mark(self) -> int:
        """The seq the next snapshot will be taken at."""
        return self._last + self.every

    def catch_up(self, log: LogFile, *, stop: threading.Event | None = None) -> list[int]:
        """Write every snapshot due up to the log's last seq; the seqs written.

        ``stop`` ends the work between two snapshots (the control plane shutting down).
        """
        if self._state is None:
            self._state = self._resume(log)
        state = self._state
        written: list[int] = []
        last = log.last_seq
        while self.next_mark <= last and not (stop is not None and stop.is_set()):
            mark = self.next_mark
            state.apply_all(log.read(after=max(state.last_seq, self._last), until=mark))
            self._write(log, state, mark)
            written.append(mark)
        return written

    def _resume(self, log: LogFile) -> ClusterState:
        """Continue the newest valid chain on disk, or start from the beginning."""
        for seq, _ in log.snapshot_files(HISTORY_SNAPSHOT, log.last_seq):
            snap = read_history(log, seq)
            state = restore_full(log, snap) if snap is not None else None
            if snap is None or state is None:
                continue
            self._last, self._count = snap.last_seq, snap.task_count
            self._active = {view.task_id: ordinal for ordinal, view in snap.active}
            self._anomalies = len(state.anomalies)
            self._max_id = snap.max_task_id
            self._job_count = snap.job_count
            self._active_jobs = {job.job_id: ordinal for ordinal, job in snap.active_jobs}
            for ordinal, (task_id, view) in enumerate(state.tasks.items()):
                if view.state in FINAL_STATES:
                    state.tasks[task_id] = _stub(view)
                elif view.state == "lost":
                    self._lost[task_id] = ordinal
            for job_id, job in state.jobs.items():
                if job.final_state is not None:
                    state.jobs[job_id] = _job_stub(job)
            return state
        return ClusterState()

    def _write(self, log: LogFile, state: ClusterState, mark: int) -> None:
        tasks = state.tasks
        candidates = {**self._active, **self._lost}
        new_ids = list(itertools.islice(tasks, self._count, None))
        candidates.update((task_id, self._count + i) for i, task_id in enumerate(new_ids))
        active: Entries = []
        ended: Entries = []  # ended since the last snapshot, or lost then and final now
        lost: dict[str, int] = {}
        for task_id, ordinal in candidates.items():
            view = tasks[task_id]
            if view.state not in ENDED_STATES:
                active.append((ordinal, view))
            elif view.state != "lost":
                ended.append((ordinal, view))
            else:
                lost[task_id] = ordinal
                if task_id not in self._lost:  # lost since the last snapshot
                    ended.append((ordinal, view))
        active.sort(key=lambda entry: entry[0])
        max_id = max([self._max_id, *new_ids])
        active_jobs, ended_jobs = self._split_jobs(state)
        snap = HistorySnapshot(
            format=HISTORY_FORMAT,
            last_seq=mark,
            state_seq=state.last_seq,
            previous=self._last,
            task_count=len(tasks),
            max_task_id=max_id,
            nodes=list(state.nodes.values()),
            active=active,
            ended=msgspec.Raw(_encoder.encode(ended)),
            anomalies=msgspec.Raw(_encoder.encode(state.anomalies[self._anomalies :])),
            max_number=state.last_number,
            job_count=len(state.jobs),
            active_jobs=active_jobs,
            ended_jobs=msgspec.Raw(_encoder.encode(ended_jobs)),
            volumes=list(state.volumes.values()),
        )
        anchor = log.hash_at(mark)
        if anchor is None:
            raise ValueError(f"seq {mark} is not in the log")
        # Never pruned: a full restore needs the whole chain.
        log.snapshots.write(HISTORY_SNAPSHOT, mark, anchor, _encoder.encode(snap))
        for _, view in ended:
            if view.state in FINAL_STATES:  # a lost task may still take its final state
                tasks[view.task_id] = _stub(view)
        self._last, self._count, self._max_id = mark, len(tasks), max_id
        self._active = {view.task_id: ordinal for ordinal, view in active}
        self._lost = lost
        self._anomalies = len(state.anomalies)
        for _, job in ended_jobs:
            state.jobs[job.job_id] = _job_stub(job)
        self._job_count = len(state.jobs)
        self._active_jobs = {job.job_id: ordinal for ordinal, job in active_jobs}

    def _split_jobs(self, state: ClusterState) -> tuple[JobEntries, JobEntries]:
        """The jobs not ended at this snapshot, and those that ended since the last one
        (the jobs active then, and the jobs submitted since), each with its ordinal."""
        jobs = state.jobs
        candidates = dict(self._active_jobs)
        new_ids = itertools.islice(jobs, self._job_count, None)
        candidates.update((job_id, self._job_count + i) for i, job_id in enumerate(new_ids))
        active: JobEntries = []
        ended: JobEntries = []
        for job_id, ordinal in candidates.items():
            job = jobs[job_id]
            (active if job.final_state is None else ended).append((ordinal, job))
        active.sort(key=lambda entry: entry[0])
        return active, ended


def _stub(view: TaskView) -> TaskView:
    return TaskView(task_id=view.task_id, spec=_STUB_SPEC, number=view.number, state=view.state)


def _job_stub(job: JobView) -> JobView:
    return JobView(
        job_id=job.job_id,
        spec=_STUB_JOB_SPEC,
        owner=job.owner,
        rank_task_ids=(),
        final_state=job.final_state,
    )


def write_history_snapshots(
    source: str | os.PathLike[str] | LogFile, *, every: int = HISTORY_EVERY
) -> list[int]:
    """Fold the log once and keep a history snapshot every ``every`` seqs; the seqs written.

    Incremental: it continues the newest chain already on disk.
    """
    log, owned = as_log(source)  # type: ignore[arg-type]
    try:
        return HistoryWriter(every).catch_up(log)
    finally:
        if owned:
            log.close()
