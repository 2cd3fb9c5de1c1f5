"""One log line per event of interest: what the host and the runner say about an event.

The event log is the record; these lines are for people (and log shippers) watching a
process. ``line_of(event)`` says, for one event, the level, the message and the context
(``task``, ``node``, ``job``, ``user``, ``event``: the kind) that the CLI's formatters
(cli/hakuriver/logs.py) put on the line, or None for an event nobody wants a line for
(heartbeats, above all). It is pure, so the host (a listener after each commit:
control_plane/log_lines.py) and the runner (as it queues what it reports:
node_agent/agent.py) say the same thing the same way.

What a line never carries: a token or its hash, a join token, an SSH public key (its
fingerprint only), a task's environment variables. Text users choose (a task's name and
command, reasons, messages) is passed as it is: the formatters escape control characters,
so it cannot forge a line or drive a terminal.
"""

from __future__ import annotations

import logging
import shlex
from typing import NamedTuple

from events import types as t

# A command shown on a line is cut to this many characters (the event log has it whole).
COMMAND_CHARS = 120


class Line(NamedTuple):
    """A log line about one event: its level, its message and its context fields."""

    level: int
    message: str
    context: dict[str, str]


def _gib(size: int | None) -> str:
    return "" if size is None else f", {size / 2**30:.1f} GiB"


def _cores(count: int) -> str:
    return f"{count} core{'' if count == 1 else 's'}"


def _command(spec: t.TaskSpec) -> str:
    command = shlex.join((spec.command, *spec.args))
    if len(command) > COMMAND_CHARS:
        command = command[: COMMAND_CHARS - 1] + "…"
    return f"{spec.name!r} ({command})" if spec.name else command


def _by(event: t.Event, fallback: str = "") -> str:
    actor = event.actor.user if event.actor is not None else fallback
    return f" by {actor}" if actor and actor != "anonymous" else ""


def _say(event: t.Event) -> tuple[int, str] | None:
    info, warning = logging.INFO, logging.WARNING
    match event:
        case t.NodeRegistered():
            gpus = f", {len(event.gpus)} GPUs" if event.gpus else ""
            return info, (
                f"node registered at {event.address}: {_cores(event.cores)}"
                f"{_gib(event.memory_bytes)}{gpus}, executors {', '.join(event.executors)}"
            )
        case t.NodeOnline():
            return info, "node online"
        case t.NodeOffline():
            return warning, f"node offline: {event.reason}"
        case t.NodeEnrolled():
            return info, "node enrolled (joined with a join token)"
        case t.NodeRevoked():
            return warning, f"node revoked{_by(event)}: {event.reason or 'no reason given'}"
        case t.NodeForgotten():
            return info, f"node forgotten{_by(event)}: {event.reason or 'no reason given'}"
        case t.TaskSubmitted():
            spec = event.spec
            number = f" {event.number}" if event.number else ""
            where = f" for {spec.target}" if spec.target else ""
            return info, (
                f"task{number} submitted by {spec.owner}{where}: {_command(spec)},"
                f" {_cores(spec.cores)}{_gib(spec.memory_bytes)}, in {spec.container or 'NULL'}"
            )
        case t.TaskPlaced():
            gpus = f", GPUs {list(event.gpu_ids)}" if event.gpu_ids else ""
            why = f" ({event.reason})" if event.reason else ""
            return info, f"task placed: {_cores(event.cores)}{_gib(event.memory_bytes)}{gpus}{why}"
        case t.TaskStarted():
            how = f"container {event.container_id[:12]}" if event.container_id else ""
            how = how or (f"pid {event.pid}" if event.pid is not None else "")
            return info, f"task started{f' ({how})' if how else ''}"
        case t.TaskFinished():
            code = f", exit code {event.exit_code}" if event.exit_code is not None else ""
            note = f": {event.message}" if event.message else ""
            level = info if event.state in ("completed", "killed") else warning
            return level, f"task finished: {event.state}{code}{note}"
        case t.TaskKillRequested():
            reason = f": {event.reason}" if event.reason else ""
            return info, f"task kill requested{_by(event, event.requested_by)}{reason}"
        case t.TaskPauseRequested():
            return info, f"task pause requested{_by(event, event.requested_by)}"
        case t.TaskResumeRequested():
            return info, f"task resume requested{_by(event, event.requested_by)}"
        case t.TaskPaused():
            return info, "task paused"
        case t.TaskResumed():
            return info, "task resumed"
        case t.TaskLost():
            return warning, f"task lost: {event.reason}"
        case t.TaskUnreachable():
            return warning, f"task unreachable (was {event.was}): {event.reason or 'node silent'}"
        case t.TaskReconnected():
            return info, f"task reachable again ({event.state}) after {event.unreachable_s:.0f}s"
        case t.VpsReady():
            if not event.sshd:
                return info, f"VPS ready without sshd: {event.message}"
            return info, f"VPS ready: sshd at {event.address}:{event.ssh_port}"
        case t.JobSubmitted():
            name = f" {event.spec.name!r}" if event.spec.name else ""
            return info, (
                f"job{name} submitted by {event.owner}: {event.spec.num_nodes} node(s),"
                f" {len(event.rank_task_ids)} rank(s)"
            )
        case t.JobPlaced():
            return info, f"job placed on {', '.join(event.nodes)}"
        case t.JobPhase():
            return info, f"job phase: {event.phase}"
        case t.JobSetupDone():
            return info, f"job rank {event.rank} set up"
        case t.JobStopRequested():
            return info, f"job stop requested{_by(event, event.requested_by)}"
        case t.JobFinished():
            note = f": {event.message}" if event.message else ""
            return (
                info if event.state != "failed" else warning
            ), f"job finished: {event.state}{note}"
        case t.EnvPackaged():
            return info, (
                f"environment {event.name} packaged{_by(event, event.requested_by)}:"
                f" {event.tarball} ({event.size_bytes / 2**20:.0f} MiB)"
            )
        case t.EnvSynced():
            return info, f"environment {event.name} synced in {event.duration_s:.1f}s"
        case t.EnvContainerCreated():
            return info, f"environment {event.name} created from {event.image}{_by(event)}"
        case t.EnvContainerStarted():
            return info, f"environment {event.name} started{_by(event)}"
        case t.EnvContainerStopped():
            return info, f"environment {event.name} stopped{_by(event)}"
        case t.EnvContainerDeleted():
            return info, f"environment {event.name} deleted{_by(event)}"
        case t.EnvShellOpened():
            return info, f"environment {event.name} shell {event.session_id} opened{_by(event)}"
        case t.EnvShellClosed():
            return info, f"environment {event.name} shell {event.session_id} closed"
        case t.SshSessionOpened():
            via = f" at {event.address}:{event.port}" if event.address else ""
            return info, (
                f"SSH session {event.session_id} opened ({event.via}) by {event.user}"
                f" from {event.client_address or 'unknown'}{via}"
            )
        case t.SshSessionClosed():
            return info, (
                f"SSH session {event.session_id} closed ({event.via}, {event.reason or 'ended'}):"
                f" {event.bytes_in} bytes in, {event.bytes_out} out, {event.duration_s:.0f}s"
            )
        case t.UserCreated():
            return info, f"user {event.name} created ({event.role}){_by(event)}"
        case t.UserRoleChanged():
            return info, f"user {event.name} is now {event.role}{_by(event)}"
        case t.UserDisabled():
            return info, f"user {event.name} disabled{_by(event)}"
        case t.TokenIssued():
            # The token's public id only: never its secret's hash.
            name = f" {event.name!r}" if event.name else ""
            return info, f"{event.token_kind} token {event.token_id}{name} issued{_by(event)}"
        case t.TokenRevoked():
            return info, f"token {event.token_id} revoked{_by(event)}"
        case t.SshKeyAdded():
            # The fingerprint only: the key itself is long and the fingerprint names it.
            return info, f"SSH key {event.fingerprint} added for {event.user}"
        case t.SshKeyRemoved():
            return info, f"SSH key {event.key_id} removed for {event.user}"
        case t.AuthFailed():
            return warning, (
                f"refused {event.count} request(s) from {event.client_address or 'unknown'}"
                f" to {event.route}: {event.reason}"
            )
        case t.VolumeCreated():
            return info, f"volume {event.name} created{_by(event, event.created_by)}"
    # Heartbeats, dispatches and anything new: no line (the event log has them).
    return None


def line_of(event: t.Event, kind: str = "") -> Line | None:
    """The line to log about ``event``, or None (not of interest: heartbeats above all).

    ``context`` holds ``task``, ``node`` and ``job`` where the event names them, ``user``
    for who asked, and ``event``: its kind (``kind``, or the event's own tag).
    """
    said = _say(event)
    if said is None:
        return None
    context: dict[str, str] = {"event": kind or str(type(event).__struct_config__.tag)}
    task = getattr(event, "task_id", None)
    if isinstance(task, str):
        context["task"] = task
    node = getattr(event, "node", None)
    if isinstance(node, str) and node:
        context["node"] = node
    job = getattr(event, "job_id", None) or (
        event.spec.job_id if isinstance(event, t.TaskSubmitted) else None
    )
    if isinstance(job, str):
        context["job"] = job
    if event.actor is not None:
        context["user"] = event.actor.user
    return Line(said[0], said[1], context)
