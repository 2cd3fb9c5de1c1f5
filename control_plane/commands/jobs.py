"""Jobs from SkyPilot-style YAML files: submit, stop, and move along (issue 16).

* ``decide_submit_job``: ``job.submitted`` and one ``task.submitted`` per rank (queued:
  the scheduler places a job's ranks all at once, ``scheduler.py``).
* ``decide_stop_jobs``: ``job.stop_requested`` and a kill of each active rank.
* ``decide_advance_jobs``: the run phase once every setup succeeded, the other ranks
  stopped once one failed, ``job.finished`` once all ended.
* ``decide_create_volume``: ``volume.created``.

Pure, like every decision: a refusal is a ``DomainError`` naming the field.
"""

from __future__ import annotations

from control_plane.commands.types import (
    AdvanceJobs,
    Context,
    CreateVolume,
    Decision,
    StopJobs,
    SubmitJob,
)
from projections.cluster import ClusterState


def decide_submit_job(state: ClusterState, command: SubmitJob, ctx: Context) -> Decision:
    """The job and its ranks, queued."""
    raise NotImplementedError


def decide_stop_jobs(state: ClusterState, command: StopJobs, ctx: Context) -> Decision:
    """Stop the jobs named (or all of the actor's, or everyone's)."""
    raise NotImplementedError


def decide_advance_jobs(state: ClusterState, command: AdvanceJobs, ctx: Context) -> Decision:
    """Phases, failure, ends of the active jobs (nothing when nothing is due)."""
    raise NotImplementedError


def decide_create_volume(state: ClusterState, command: CreateVolume, ctx: Context) -> Decision:
    """``volume.created``."""
    raise NotImplementedError
