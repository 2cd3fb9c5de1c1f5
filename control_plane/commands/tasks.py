"""Controlling a task a user names: kill, pause, resume.

Each request is recorded as an event saying who asked (``task.kill_requested``,
``task.pause_requested``, ``task.resume_requested``); the state changes when the node
reports what it did, except where nobody else can: a queued task is killed on the spot,
and a task whose node is unreachable ends as ``lost`` when killed.
"""

from __future__ import annotations

from control_plane.access import check_owner
from control_plane.commands.types import Context, Decision, KillTask, PauseTask, Send
from control_plane.errors import Conflict, NotFound
from events import link
from events.types import (
    AnyEvent,
    TaskFinished,
    TaskKillRequested,
    TaskLost,
    TaskPauseRequested,
    TaskResumeRequested,
)
from projections.cluster import ClusterState
from projections.tasks import TaskView


def _task(state: ClusterState, task_id: str) -> TaskView:
    task = state.tasks.get(task_id)
    if task is None:
        raise NotFound("task_id", f"no task {task_id!r}")
    return task


def decide_kill(state: ClusterState, command: KillTask, ctx: Context) -> Decision:
    """A kill request; a queued task is killed on the spot, an unknown one given up."""
    task = _task(state, command.task_id)
    check_owner(command.actor, task.spec.owner, f"task {task.number}")
    by = command.actor.user
    if task.is_final or task.state == "lost":
        raise Conflict("task_id", f"task {task.number} is already {task.state}")
    events: list[AnyEvent] = [
        TaskKillRequested(task_id=task.task_id, requested_by=by, reason=command.reason)
    ]
    sends: list[Send] = []
    if task.state == "pending":
        events.append(
            TaskFinished(task_id=task.task_id, state="killed", message="killed while queued")
        )
    elif task.state == "unknown":
        # Its node cannot be told now. The user gives the task up: it ends here, and its
        # node is told to kill it if it comes back with it (decide_hello).
        events.append(
            TaskLost(
                task_id=task.task_id,
                node=task.node,
                reason=f"killed by {by} while node {task.node} was unreachable",
            )
        )
    elif task.node is not None:
        grace = ctx.settings.timing.kill_grace_period
        reason = command.reason or f"requested by {by}"
        sends.append(Send(task.node, link.Kill(task_id=task.task_id, grace_s=grace, reason=reason)))
    return Decision(events=events, sends=sends)


def decide_pause(state: ClusterState, command: PauseTask, ctx: Context) -> Decision:
    """A pause (or resume) request for a running (or paused) task whose node is connected."""
    task = _task(state, command.task_id)
    check_owner(command.actor, task.spec.owner, f"task {task.number}")
    verb = "resume" if command.resume else "pause"
    if task.state == "unknown":
        raise Conflict(
            "task_id",
            f"cannot {verb} task {task.number}: its node {task.node} is unreachable"
            " (the task's state is unknown until the node comes back)",
        )
    if task.state != ("paused" if command.resume else "running"):
        raise Conflict("task_id", f"cannot {verb} task {task.number}: it is {task.state}")
    if task.node is None or task.node not in ctx.connected:
        raise Conflict("task_id", f"cannot {verb} now: node {task.node} is not connected")
    by = command.actor.user
    if command.resume:
        return Decision(
            events=[TaskResumeRequested(task_id=task.task_id, requested_by=by)],
            sends=[Send(task.node, link.Resume(task_id=task.task_id))],
        )
    return Decision(
        events=[TaskPauseRequested(task_id=task.task_id, requested_by=by)],
        sends=[Send(task.node, link.Pause(task_id=task.task_id))],
    )
