"""JobView: a job file's run on the cluster, and how its ranks add up to one status.

A job (``job.submitted``) is N ranks, each an ordinary task (``spec.job_id``, ``spec.rank``).
Its life, from the log:

* ``queued`` until every rank is placed at once (``job.placed``, with a ``task.placed``
  per rank in the same commit; never some ranks without the others);
* ``setup``: each rank runs its setup, then waits (``job.setup_done`` from its node);
* ``run``: every rank's setup succeeded, the host told each to run (``job.phase``);
* ``ended`` at ``job.finished``, once every rank ended, with the aggregated state.

``status`` is what users see, as seed 002 aggregates it: ``pending`` while no rank
runs, ``running`` while one is active, ``failed`` as soon as one fails (the others are
being stopped), ``completed`` only when all succeeded; ``stopped`` after ``jobs stop``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from msgspec import Struct

from events.types import JobSpec
from projections.tasks import TaskView

JobPhaseState = Literal["queued", "setup", "run", "ended"]
JobStatus = Literal["pending", "running", "completed", "failed", "stopped"]
JOB_STATUSES: tuple[str, ...] = ("pending", "running", "completed", "failed", "stopped")
# Rank task states in which the rank has started and not ended.
ACTIVE_RANK_STATES = _ACTIVE = frozenset({"running", "paused", "unknown"})
# Rank task states that are not a success.
FAILED_RANK_STATES = _FAILED = frozenset({"failed", "killed", "killed_oom", "lost"})


class JobView(Struct, kw_only=True, gc=False):
    """A job as users see it: its file, its ranks, its phase."""

    job_id: str
    spec: JobSpec
    owner: str
    rank_task_ids: tuple[str, ...]
    yaml: str = ""
    workdir_bytes: int = 0
    submitted_at_us: int = 0
    phase: str = "queued"  # JobPhaseState
    nodes: tuple[str, ...] = ()  # rank order, once placed
    addresses: tuple[str, ...] = ()
    placed_at_us: int | None = None
    placement_reason: str = ""
    setup_done: list[int] = []  # ranks whose setup succeeded (in report order)
    run_at_us: int | None = None  # when the run phase began
    stop_requested_by: str | None = None
    stop_reason: str = ""
    final_state: str | None = None  # from job.finished
    failed_rank: int | None = None
    message: str = ""
    finished_at_us: int | None = None
    last_seq: int = 0

    @property
    def num_nodes(self) -> int:
        return len(self.rank_task_ids)

    @property
    def name(self) -> str:
        """The job's name: the file's, else ``task-<id>`` (seed 002)."""
        return self.spec.name or f"task-{self.job_id}"

    @property
    def ended(self) -> bool:
        return self.final_state is not None


class VolumeView(Struct, kw_only=True, gc=False):
    """A named folder of the shared storage jobs mount (``volume.created``)."""

    name: str
    created_by: str = ""
    created_at_us: int = 0


def rank_states(job: JobView, tasks: Mapping[str, TaskView]) -> list[str]:
    """Each rank's task state, in rank order (``pending`` for a rank the fold lacks)."""
    return [tasks[t].state if t in tasks else "pending" for t in job.rank_task_ids]


def job_status(job: JobView, tasks: Mapping[str, TaskView]) -> str:
    """The aggregated status (see the module's docstring)."""
    if job.final_state is not None:
        return job.final_state
    states = rank_states(job, tasks)
    if job.stop_requested_by is not None:
        return "stopped"
    if any(s in _FAILED for s in states):
        return "failed"
    if any(s in _ACTIVE for s in states):
        return "running"
    if states and all(s == "completed" for s in states):
        return "completed"
    return "pending"


def first_failed_rank(job: JobView, tasks: Mapping[str, TaskView]) -> int | None:
    """The rank whose task ended first without success (None: none did)."""
    failed = [
        (tasks[t].finished_at_us or 0, rank)
        for rank, t in enumerate(job.rank_task_ids)
        if t in tasks and tasks[t].state in _FAILED
    ]
    return min(failed)[1] if failed else None
