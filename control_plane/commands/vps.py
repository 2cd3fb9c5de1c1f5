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

The actor is read again from the state at each decision (exists, not disabled, its
role now): a connection logged in before an admin was demoted opens no tunnel as an admin.
Where the gateway connects is the node's registered address, and only when the node's
agent link comes from that very IP (``gateway_address``): an agent cannot aim the gateway
at another machine, nor at the host's loopback or a link-local service.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import itertools
from typing import NamedTuple

import msgspec

from control_plane.access import Principal, may_act_on
from control_plane.commands.types import (
    CloseSessionsLeftOpen,
    Context,
    Decision,
    OpenSshSession,
    Send,
)
from control_plane.errors import Conflict, NotFound, Refused
from events import link
from events.types import SshSessionClosed, SshSessionOpened
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
# The most key lines of one user's running VPS tasks the gateway reads at a login (a
# bound on the work of one login: the registered keys come first).
MAX_TASK_KEYS = 256


def current_actor(state: ClusterState, actor: Principal) -> Principal:
    """``actor`` as the state has them now (their role); ``Refused`` once disabled or gone.

    A principal is captured when its holder logs in (an SSH connection, a websocket) and
    may outlive a change of role or a disabling: each decision reads the user again.
    """
    user = state.identity.users.get(actor.user)
    if user is None or user.disabled:
        raise Refused("user", f"user {actor.user!r} is disabled")
    return actor if actor.role == user.role else actor._replace(role=user.role)


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
    actor = current_actor(state, command.actor)
    if actor is not command.actor:
        command = msgspec.structs.replace(command, actor=actor)
    task = vps_task(state, command)
    if task.state != "running":
        hint = " (resume it first: hakuriver vps resume)" if task.state == "paused" else ""
        raise Conflict("task", f"VPS task {task.number} is {task.state}{hint}")
    assert task.node is not None
    sends: list[Send] = []
    address = ""
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
        address = gateway_address(state, task.node, ctx)
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
        user=actor.user,
        client_address=command.client_address,
        via=command.via,
        node=task.node,
        address=address,
        port=(task.ssh_port or 0) if command.via == "gateway" else 0,
        key_fingerprint=command.key_fingerprint,
    )
    return Decision(events=[opened], sends=sends)


def gateway_address(state: ClusterState, node_name: str, ctx: Context) -> str:
    """The address the SSH gateway connects to for a VPS on ``node_name``; ``Conflict``
    naming what to fix when there is none it may use.

    The node's registered address (``[network] runner_address``, where the VPS port is
    published), and only when the node's agent link comes from that same IP: so an agent,
    whatever it reports, points the gateway at the machine its own link comes from and
    nowhere else (never the host's loopback, a link-local metadata service, another
    machine). A runner on the host's own machine (its link from loopback) may register any
    address, a name included: it could reach all of them itself.
    """
    node = state.nodes.get(node_name)
    registered = node.address.strip() if node is not None else ""
    peer = _ip(ctx.link_peers.get(node_name, ""))
    if peer is None:
        raise Conflict(
            "task",
            f"node {node_name}'s runner has not connected since the host started: the"
            " gateway connects to a node only at the address its link comes from; try"
            " again once it is connected",
        )
    if peer.is_loopback:
        return registered or str(peer)
    ip = _ip(registered)
    if ip is None:
        # A name is never resolved: the link's own IP is the node's proven address.
        return str(peer)
    if ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast:
        raise Conflict(
            "task",
            f"node {node_name} registered the address {registered} ([network] runner_address"
            f" on that runner), which the host cannot reach it on; its link comes from"
            f" {peer}: set runner_address to {peer} there and restart the runner",
        )
    if ip != peer:
        raise Conflict(
            "task",
            f"node {node_name} registered the address {registered}, but its link comes from"
            f" {peer}: the gateway connects to a node only at the IP its link comes from;"
            f" set [network] runner_address to {peer} on that runner (or make it reach the"
            f" host from {registered})",
        )
    return str(peer)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP ``text`` writes (an IPv4-mapped IPv6 address as its IPv4), None for a name."""
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def decide_close_left_open(
    state: ClusterState, command: CloseSessionsLeftOpen, ctx: Context
) -> Decision:
    """Close every SSH session the log shows open: at the host's start none can be (they
    lived in the process that stopped without closing them, a kill -9). Their end, their
    duration and their byte counts are unknown, and the reason says so."""
    return Decision(
        events=[
            SshSessionClosed(
                session_id=session.session_id,
                task_id=session.task_id,
                user=session.user,
                via=session.via,
                reason=command.reason,
            )
            for session in state.ssh_sessions.values()
        ]
    )


class GatewayLogin(NamedTuple):
    """Who logs in to the SSH gateway, and where the key they presented comes from."""

    principal: Principal
    # The key's SHA-256 fingerprint (as ``ssh-keygen -l`` writes it).
    fingerprint: str
    # ``key <id>`` (a registered key) or ``task <number>`` (a VPS task's own key).
    source: str


def gateway_login(state: ClusterState, user: str, blob: bytes) -> GatewayLogin | None:
    """Whether ``user`` may log in to the SSH gateway with the public key ``blob`` (the SSH
    wire format); None when they may not (no such user, disabled, a key not theirs: all
    look the same to the client, like a wrong key).

    Their registered keys (``ssh_key.added``), and the ``ssh_public_key`` lines of their
    VPS tasks that hold resources (placed, running, paused): a user who submitted a VPS
    with a key of their own reaches it with that key alone. Never a key they removed
    (``ssh_key.removed``), though a VPS task's spec still holds a copy of it; never a line
    with options (``from=``, ``restrict``...): the gateway would have to honour them, and
    the VPS's own sshd does (docs/security.md).

    The work is the same for a user who exists and one who does not, and grows with the
    user's own VPS tasks alone (indexes kept by the fold), so the time to answer does not
    tell whether a user name exists.
    """
    fingerprint = key_fingerprint(blob)
    identity = state.identity
    view = identity.users.get(user)
    registered = identity.key_of(user, fingerprint)
    removed = identity.key_removed(user, fingerprint)
    owned = state.vps_holding.get(user, {})
    if view is None or view.disabled or removed:
        return None
    principal = Principal(user=user, role=view.role, token_id="", token_kind="user")
    if registered is not None:
        return GatewayLogin(principal, fingerprint, f"key {registered.id}")
    lines = 0
    for task_id in owned:
        task = state.tasks.get(task_id)
        if task is None:
            continue
        for line in (task.spec.ssh_public_key or "").splitlines():
            lines += 1
            if lines > MAX_TASK_KEYS:
                return None
            if plain_key_blob(line) == blob:
                return GatewayLogin(principal, fingerprint, f"task {task.number}")
    return None


def key_fingerprint(blob: bytes) -> str:
    """``SHA256:<base64, unpadded>`` of a public key blob (as OpenSSH and asyncssh write it)."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def plain_key_blob(line: str) -> bytes | None:
    """The key blob of a line that is a key alone (``type base64 [comment]``); None for a
    line with options before the key, or none."""
    words = line.split(maxsplit=2)
    return key_blob(" ".join(words[:2])) if len(words) >= 2 else None


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
