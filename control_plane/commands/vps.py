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

import base64
import binascii
import itertools
from typing import NamedTuple

from control_plane.access import Principal, may_act_on
from control_plane.commands.types import Context, Decision, OpenSshSession, Send
from control_plane.errors import Conflict, NotFound
from events import link
from events.types import SshSessionOpened
from projections.cluster import ClusterState
from projections.tasks import TaskView
from replay_tools.task_names import (
    CANDIDATES,
    AmbiguousTask,
    StateTasks,
    UnknownTask,
    find_task,
)

VPS_PREFIX = "vps-"
# The most key lines of one user's running VPS tasks the gateway accepts (a bound on the
# work of one login: the registered keys come first).
MAX_TASK_KEYS = 256


def vps_task(state: ClusterState, command: OpenSshSession) -> TaskView:
    """The VPS task ``command.task`` names, if the actor may reach it (``NotFound``)."""
    name = command.task.strip()
    if name.lower().startswith(VPS_PREFIX):
        name = name[len(VPS_PREFIX) :]
    refusal = NotFound("task", f"no VPS task {command.task!r} of yours")
    try:
        task = state.tasks[find_task(name, StateTasks(state))]
    except AmbiguousTask as ambiguous:
        # A prefix of several tasks may still name one of the actor's (ids' first digits
        # change once a minute): theirs alone count, and others' are never named.
        mine = [
            found
            for found in ambiguous.matches
            if may_act_on(command.actor, state.tasks[found].spec.owner)
        ]
        if not mine:
            raise refusal from None
        if len(mine) > 1 or len(ambiguous.matches) >= CANDIDATES:
            raise NotFound(
                "task", f"{command.task!r} is a prefix of several tasks: give more of the id"
            ) from None
        task = state.tasks[mine[0]]
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


class GatewayLogin(NamedTuple):
    """Who may log in to the SSH gateway under a user name, and with which keys."""

    principal: Principal
    # The public key blobs (the SSH wire format, as in ``ssh-ed25519 <base64>``) the
    # user may present, each with where it comes from (a registered key's fingerprint,
    # or the VPS task whose ``ssh_public_key`` it is).
    keys: dict[bytes, str]


def gateway_login(state: ClusterState, user: str) -> GatewayLogin | None:
    """The keys ``user`` may log in to the SSH gateway with; None when they may not
    (no such user, or disabled: both look the same to the client, like a wrong key).

    The keys are the user's registered SSH keys (``ssh_key.added``) and the
    ``ssh_public_key`` of their VPS tasks that hold resources (placed, running, paused):
    a user who submitted a VPS with a key of their own can reach it with that key alone.
    """
    view = state.identity.users.get(user)
    if view is None or view.disabled:
        return None
    keys: dict[bytes, str] = {}
    for key in state.identity.keys.values():
        if key.user == user:
            blob = key_blob(key.public_key)
            if blob is not None:
                keys.setdefault(blob, key.fingerprint)
    task_keys = 0
    for node in state.nodes.values():
        for task_id in node.task_ids:
            task = state.tasks.get(task_id)
            if task is None or task.spec.task_type != "vps" or task.spec.owner != user:
                continue
            for line in (task.spec.ssh_public_key or "").splitlines():
                blob = key_blob(line)
                if blob is not None and task_keys < MAX_TASK_KEYS:
                    task_keys += 1
                    keys.setdefault(blob, f"task {task.number}")
    principal = Principal(user=user, role=view.role, token_id="", token_kind="user")
    return GatewayLogin(principal=principal, keys=keys)


def key_blob(line: str) -> bytes | None:
    """The public key blob of an OpenSSH public key line (``[options] type base64
    [comment]``), or None when the line holds none. The blob names its own type, which
    must be the type written before it: a line is never half-trusted."""
    words = line.split()
    for kind, encoded in itertools.pairwise(words):
        try:
            blob = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        name = kind.encode()
        prefix = len(name).to_bytes(4, "big") + name
        if len(blob) > len(prefix) and blob.startswith(prefix):
            return blob
    return None
