"""Jobs from SkyPilot-style YAML files: submit, stop, and move along (issue 16).

* ``decide_submit_job``: ``job.submitted`` and one ``task.submitted`` per rank, in one
  commit, all queued: the scheduler places a job's ranks all at once (scheduler.py).
* ``decide_stop_jobs``: ``job.stop_requested`` and a kill of each active rank.
* ``decide_advance_jobs``: the run phase once every rank's setup succeeded (``JobGo`` to
  each), the other ranks stopped once one failed, ``job.finished`` once all ended.
* ``decide_create_volume``: ``volume.created``.

A rank is an ordinary task (``spec.job_id``, ``spec.rank``) whose command is the barrier
script of ``events.jobs``: ``task …``, ``why``, history, SQL and reports see it like any
other. Pure, like every decision: a refusal is a ``DomainError`` naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from control_plane.access import check_owner
from control_plane.commands.identity import user_name_problem
from control_plane.commands.submit import SHARED_DATA, additional_mounts, covers_kernel_view
from control_plane.commands.types import (
    AdvanceJobs,
    Context,
    CreateVolume,
    Decision,
    Send,
    StopJobs,
    SubmitJob,
)
from control_plane.errors import Conflict, InvalidRequest, NotFound, Refused
from control_plane.jobfile.job import VOLUME_NAME
from control_plane.rooms import never_holds
from events import link
from events.ids import is_job_id
from events.jobs import rank_command
from events.types import (
    AnyEvent,
    JobFinished,
    JobPhase,
    JobStopRequested,
    JobSubmitted,
    Mount,
    TaskFinished,
    TaskKillRequested,
    TaskLost,
    TaskSpec,
    TaskSubmitted,
    VolumeCreated,
)
from projections.cluster import ClusterState
from projections.jobs import JobView, first_failed_rank
from projections.tasks import ENDED_STATES, TaskView

# Where a job's files live in the shared storage: ``jobs/<id>/workdir``, ``volumes/<name>``.
JOBS_DIR = "jobs"
VOLUMES_DIR = "volumes"


def volume_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a volume; None if it can."""
    if not VOLUME_NAME.fullmatch(name):
        return (
            f"{name!r} is not a volume name: 1 to 63 lowercase letters, digits, '.', '_' and"
            " '-', starting with a letter or digit"
        )
    return None


def rank_name(job: str, job_id: str, rank: int) -> str:
    """A rank task's name, as k8s-cli names its Kubernetes jobs: ``{name}-{id}-node-{rank}``."""
    return f"{job}-{job_id}-node-{rank}"


# -- submit ------------------------------------------------------------------------------------


def decide_submit_job(state: ClusterState, command: SubmitJob, ctx: Context) -> Decision:
    """The job and its ranks, queued (the scheduler's next pass places them together)."""
    spec, actor = command.spec, command.actor
    if not is_job_id(command.job_id):
        raise InvalidRequest("job_id", f"{command.job_id!r} is not a job id")
    if command.job_id in state.jobs:
        raise Conflict("job_id", f"job {command.job_id} exists already")
    owner = actor.user
    if command.owner is not None and command.owner != actor.user:
        if not actor.is_admin:
            raise Refused(
                "owner",
                f"you are {actor.user}: submitting as {command.owner} needs an admin's token",
            )
        problem = user_name_problem(command.owner)
        if problem:
            raise InvalidRequest("owner", problem)
        owner = command.owner
    for path, name in spec.volumes.items():
        problem = volume_name_problem(name)
        if problem:
            raise InvalidRequest(f"volumes.{path}", problem)
        if spec.container is None and covers_kernel_view(path):
            raise InvalidRequest(
                f"volumes.{path}",
                "a process rank's volume never covers /proc or /sys (the kernel's own views)",
            )

    settings = ctx.settings
    shared = settings.shared_dir
    docker, auth = settings.docker, settings.auth
    mounts = tuple(
        Mount(host_path=str(shared / VOLUMES_DIR / name), container_path=path)
        for path, name in spec.volumes.items()
    )
    if spec.container is not None and not mounts:
        # The host's additional mounts go to container tasks that name none (the seeds'
        # rule for tasks): a job's volumes are its mounts.
        mounts = additional_mounts(docker.additional_mounts)
    may_privilege = actor.is_admin or auth.user_privileged
    roots: tuple[str, ...] | None = None
    if not actor.is_admin and (mounts or command.workdir):
        # Where a user's rank may bind and start from, once the node resolved symlinks:
        # the shared data folder, the volumes, this job's own folder, what [auth] grants.
        roots = tuple(
            dict.fromkeys(
                [
                    str(shared / SHARED_DATA),
                    *auth.user_mount_dirs,
                    str(shared / VOLUMES_DIR),
                    str(shared / JOBS_DIR / command.job_id),
                    *(m.host_path for m in additional_mounts(docker.additional_mounts)),
                ]
            )
        )
    program, args = rank_command(spec.setup, spec.run)
    name = spec.name or f"task-{command.job_id}"  # seed 002's default
    # What every rank asks for; rank i is this with its number and name.
    template = TaskSpec(
        command=program,
        args=args,
        env=dict(spec.envs),
        cores=spec.cores,
        memory_bytes=spec.memory_bytes,
        container=spec.container,
        privileged=docker.tasks_privileged and may_privilege and spec.container is not None,
        mounts=mounts,
        batch_id=command.job_id,
        owner=owner,
        mount_roots=roots,
        gpu_count=spec.gpu_count,
        gpu_model=spec.gpu_model,
        workdir=command.workdir,
        job_id=command.job_id,
        rank=0,
    )
    _check_fits_somewhere(state, template)
    ranks = [
        TaskSubmitted(
            task_id=ctx.new_id(),
            spec=msgspec.structs.replace(
                template, rank=rank, name=rank_name(name, command.job_id, rank)
            ),
            number=state.last_number + rank + 1,
        )
        for rank in range(spec.num_nodes)
    ]
    job = JobSubmitted(
        job_id=command.job_id,
        spec=spec,
        owner=owner,
        rank_task_ids=tuple(r.task_id for r in ranks),
        yaml=command.yaml,
        workdir_bytes=command.workdir_bytes,
    )
    return Decision(events=[job, *ranks], submitted=ranks)


def _check_fits_somewhere(state: ClusterState, rank: TaskSpec) -> None:
    """Refuse a job no registered node could ever hold one rank of (naming the resource
    at fault: the first that no node has enough of). Fewer such nodes than ranks is no
    refusal: the job waits for more."""
    if not state.nodes:
        return
    nodes = list(state.nodes.values())
    refusals = [never_holds(n, rank) or n.cannot_run(rank) for n in nodes]
    if not all(refusals):
        return
    cores_only = msgspec.structs.replace(rank, memory_bytes=None, gpu_count=0)
    no_gpus = msgspec.structs.replace(rank, gpu_count=0)
    if all(never_holds(n, cores_only) for n in nodes):
        field = "resources.cpus"
    elif all(never_holds(n, no_gpus) for n in nodes):
        field = "resources.memory"
    elif all(never_holds(n, rank) for n in nodes):
        field = "resources.accelerators"
    elif all(n.account_refusal(rank.owner) for n in nodes):
        field = "owner"
    elif all(n.mounts_refusal(rank) for n in nodes):
        field = "volumes"  # a process rank's binds: no node can make mount namespaces
    elif all(n.container_refusal(rank) for n in nodes):
        field = "resources.image_id"  # a container rank: no node has a Docker engine
    else:  # mixed (one node lacks the account, another the binds): the first that applies
        field = "owner" if any(n.account_refusal(rank.owner) for n in nodes) else "volumes"
    shown = "; ".join(f"{n.name}: {r}" for n, r in zip(nodes[:5], refusals, strict=False))
    more = f"; and {len(refusals) - 5} more" if len(refusals) > 5 else ""
    raise InvalidRequest(field, f"no registered node can hold one rank of this job: {shown}{more}")


# -- stop --------------------------------------------------------------------------------------


def decide_stop_jobs(state: ClusterState, command: StopJobs, ctx: Context) -> Decision:
    """Stop the jobs named, or (``all``) every active job of the actor's, or of everyone's."""
    actor = command.actor
    if command.all_users and not command.all:
        raise InvalidRequest("all_users", "--all-users goes with --all (stop every user's jobs)")
    if command.all and command.job_ids:
        raise InvalidRequest("job_ids", "name jobs or give --all, not both")
    if not command.all and not command.job_ids:
        raise InvalidRequest("job_ids", "name the jobs to stop, or give --all")
    if command.all_users and not actor.is_admin:
        raise Refused("all_users", "stopping every user's jobs needs an admin's token")
    jobs: list[JobView] = []
    if command.all:
        jobs = [
            state.jobs[j]
            for j in state.active_jobs
            if command.all_users or state.jobs[j].owner == actor.user
        ]
    else:
        for i, job_id in enumerate(dict.fromkeys(command.job_ids)):
            field = f"job_ids[{i}]"
            job = state.jobs.get(job_id)
            if job is None:
                raise NotFound(field, f"no job {job_id!r}")
            check_owner(actor, job.owner, f"job {job_id}")
            if job.final_state is not None:
                raise Conflict(field, f"job {job_id} is already {job.final_state}")
            if _all_ended(state, job):
                raise Conflict(field, f"job {job_id} has ended: its last rank just finished")
            jobs.append(job)
    by = actor.user
    grace = ctx.settings.timing.kill_grace_period
    decision = Decision()
    for job in jobs:
        if job.stop_requested_by is not None or _all_ended(state, job):
            continue  # stopping already (its ranks were told), or nothing left to stop
        decision.events.append(
            JobStopRequested(job_id=job.job_id, requested_by=by, reason=command.reason)
        )
        reason = command.reason or f"job {job.job_id} stopped by {by}"
        for task_id in job.rank_task_ids:
            task = state.tasks.get(task_id)
            if task is not None:
                _kill_rank(decision, task, by, reason, grace)
    return decision


def _all_ended(state: ClusterState, job: JobView) -> bool:
    """Whether every rank of ``job`` has ended (its ``job.finished`` is due)."""
    return all(t in state.tasks and state.tasks[t].state in ENDED_STATES for t in job.rank_task_ids)


def _kill_rank(decision: Decision, task: TaskView, by: str, reason: str, grace: float) -> None:
    """Kill one rank as ``decide_kill`` kills a task: a queued one on the spot, an
    unreachable one given up, a placed one through its node. Ended ranks, and ranks a
    kill was asked for already, are left alone."""
    if task.state in ENDED_STATES or task.kill_requested_by is not None:
        return
    events: list[AnyEvent] = [
        TaskKillRequested(task_id=task.task_id, requested_by=by, reason=reason)
    ]
    if task.state == "pending":
        events.append(TaskFinished(task_id=task.task_id, state="killed", message=reason))
    elif task.state == "unknown":
        events.append(
            TaskLost(
                task_id=task.task_id,
                node=task.node,
                reason=f"{reason}, while node {task.node} was unreachable",
            )
        )
    elif task.node is not None:
        decision.sends.append(
            Send(task.node, link.Kill(task_id=task.task_id, grace_s=grace, reason=reason))
        )
    decision.events += events


# -- advance -----------------------------------------------------------------------------------


def decide_advance_jobs(state: ClusterState, command: AdvanceJobs, ctx: Context) -> Decision:
    """For each active job, whichever is due: its end, the stop of a failed job's other
    ranks, or its run phase. Nothing when nothing is due (the loop calls it often)."""
    decision = Decision()
    grace = ctx.settings.timing.kill_grace_period
    for job_id in state.active_jobs:
        job = state.jobs[job_id]
        ranks = [state.tasks.get(t) for t in job.rank_task_ids]
        if any(r is None for r in ranks):
            continue  # a broken log (the audit reports it): nothing sensible to decide
        tasks = [r for r in ranks if r is not None]
        if all(t.state in ENDED_STATES for t in tasks):
            decision.events.append(_finished(state, job, tasks))
            continue
        failed = first_failed_rank(job, state.tasks)
        if failed is not None:
            if job.stop_requested_by is None:
                why = _rank_failure(failed, tasks[failed])
                for task in tasks:
                    _kill_rank(decision, task, f"job {job_id}", f"{why}: stopping the job", grace)
            continue
        if job.phase == "setup" and len(set(job.setup_done)) == len(tasks):
            decision.events.append(JobPhase(job_id=job_id, phase="run"))
            for task in tasks:
                if task.node is not None and task.node in ctx.connected:
                    decision.sends.append(Send(task.node, link.JobGo(task_id=task.task_id)))
    return decision


def _rank_failure(rank: int, task: TaskView) -> str:
    """How a rank ended, in a few words: ``rank 1 failed (exit code 3)``."""
    detail = f"exit code {task.exit_code}" if task.exit_code is not None else task.message
    detail = f" ({detail})" if detail else ""
    return f"rank {rank} {task.state}{detail}"


def _finished(state: ClusterState, job: JobView, tasks: Sequence[TaskView]) -> JobFinished:
    if all(t.state == "completed" for t in tasks):
        # Every rank succeeded: a stop that came too late to stop anything changes nothing.
        return JobFinished(job_id=job.job_id, state="completed")
    if job.stop_requested_by is not None:
        return JobFinished(
            job_id=job.job_id,
            state="stopped",
            message=job.stop_reason or f"stopped by {job.stop_requested_by}",
        )
    rank = first_failed_rank(job, state.tasks)
    # Every rank ended and not all completed: one ended without success.
    assert rank is not None
    message = _rank_failure(rank, tasks[rank])
    if job.phase in ("queued", "setup") and tasks[rank].started_at_us is not None:
        message += " during setup"
    if tasks[rank].message and tasks[rank].exit_code is not None:
        message += f": {tasks[rank].message}"
    return JobFinished(job_id=job.job_id, state="failed", message=message, failed_rank=rank)


# -- volumes -----------------------------------------------------------------------------------


def decide_create_volume(state: ClusterState, command: CreateVolume, ctx: Context) -> Decision:
    """``volume.created`` (the adapter made the folder)."""
    problem = volume_name_problem(command.name)
    if problem:
        raise InvalidRequest("name", problem)
    if command.name in state.volumes:
        raise Conflict("name", f"volume {command.name!r} exists")
    return Decision(events=[VolumeCreated(name=command.name, created_by=command.actor.user)])
