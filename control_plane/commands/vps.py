"""Letting a user into a VPS task: the SSH gateway's tunnels and ``vps shell``.

One rule for both doors (``decide_ssh_session``): the task the user named must be a VPS
task they may act on (``access.may_act_on``: its owner or an admin), and it must be
running. A tunnel also needs the task's sshd to be ready (``vps.ready`` with a port); a
shell needs its node's link. The decision records ``ssh.session_opened`` (who, from
where, and where to connect), which the adapter then acts on; how the session ended is
recorded by the adapter as a fact (``ssh.session_closed``).

Refusals say as little as ``access`` allows: a task that does not exist and a task of
someone else's both answer "no VPS task ..." to a user who is not an admin, so the
gateway cannot be used to learn which task ids exist.
"""

from __future__ import annotations

from control_plane.access import may_act_on
from control_plane.commands.types import Context, Decision, OpenSshSession, Send
from control_plane.errors import Conflict, NotFound
from events import link
from events.types import SshSessionOpened
from projections.cluster import ClusterState
from projections.tasks import TaskView
from replay_tools.task_names import StateTasks, UnknownTask, find_task

VPS_PREFIX = "vps-"


def vps_task(state: ClusterState, command: OpenSshSession) -> TaskView:
    """The VPS task ``command.task`` names, if the actor may reach it (``NotFound``)."""
    name = command.task.strip()
    if name.lower().startswith(VPS_PREFIX):
        name = name[len(VPS_PREFIX) :]
    refusal = NotFound("task", f"no VPS task {command.task!r} of yours")
    try:
        task = state.tasks[find_task(name, StateTasks(state))]
    except UnknownTask:
        raise refusal from None
    if not may_act_on(command.actor, task.spec.owner):
        raise refusal
    if task.spec.task_type != "vps":
        raise NotFound("task", f"task {task.number} is not a VPS task")
    return task


def decide_ssh_session(state: ClusterState, command: OpenSshSession, ctx: Context) -> Decision:
    """Open a session into a VPS task (see the module docstring)."""
    task = vps_task(state, command)
    if task.state != "running":
        hint = " (resume it first: hakuriver vps resume)" if task.state == "paused" else ""
        raise Conflict("task", f"VPS task {task.number} is {task.state}{hint}")
    assert task.node is not None
    node = state.nodes.get(task.node)
    address = task.ssh_address or (node.address if node is not None else "")
    sends: list[Send] = []
    if command.via == "gateway":
        if task.sshd is None:
            raise Conflict("task", f"VPS task {task.number} is starting: its sshd is not up yet")
        if not task.sshd or not task.ssh_port:
            why = f": {task.vps_message}" if task.vps_message else ""
            raise Conflict(
                "task",
                f"VPS task {task.number} runs no sshd{why}; use `hakuriver vps shell"
                f" {task.number}`",
            )
        if not address:
            raise Conflict("task", f"node {task.node} reported no address to reach it on")
    else:
        if task.node not in ctx.connected:
            raise Conflict("task", f"VPS task {task.number}: node {task.node} is not connected")
        sends.append(
            Send(
                task.node,
                link.ShellOpen(
                    session=command.session_id,
                    task_id=task.task_id,
                    rows=command.rows,
                    cols=command.cols,
                    term=command.term,
                ),
            )
        )
    opened = SshSessionOpened(
        session_id=command.session_id,
        task_id=task.task_id,
        user=command.actor.user,
        client_address=command.client_address,
        via=command.via,
        node=task.node,
        address=address if command.via == "gateway" else "",
        port=(task.ssh_port or 0) if command.via == "gateway" else 0,
        key_fingerprint=command.key_fingerprint,
    )
    return Decision(events=[opened], sends=sends)
