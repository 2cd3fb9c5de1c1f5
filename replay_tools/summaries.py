"""One sentence per event, saying what happened: ``events tail``, ``task history``, the API.

Every kind of events/types.py has its own function here (a test holds every kind to
it). The line that shows a summary already shows the kind, the stream and the source,
so a summary names what the reader could not see there: the node, the image, who asked,
the resources, the exit code.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from events.types import (
    AuthFailed,
    EnvContainerCreated,
    EnvContainerDeleted,
    EnvContainerStarted,
    EnvContainerStopped,
    EnvPackaged,
    EnvShellClosed,
    EnvShellOpened,
    EnvSynced,
    Event,
    JobFinished,
    JobPhase,
    JobPlaced,
    JobSetupDone,
    JobStopRequested,
    JobSubmitted,
    NodeEnrolled,
    NodeForgotten,
    NodeHeartbeat,
    NodeOffline,
    NodeOnline,
    NodeRegistered,
    NodeRevoked,
    SshKeyAdded,
    SshKeyRemoved,
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
    TokenIssued,
    TokenRevoked,
    UserCreated,
    UserDisabled,
    UserRoleChanged,
    VolumeCreated,
    VpsReady,
    kind_of,
)

E = TypeVar("E", bound=Event)
SUMMARIES: dict[type[Event], Callable[[Any], str]] = {}


def _summary_of(kind: type[E]) -> Callable[[Callable[[E], str]], Callable[[E], str]]:
    def register(function: Callable[[E], str]) -> Callable[[E], str]:
        SUMMARIES[kind] = function
        return function

    return register


def summarize(event: Event) -> str:
    """A short sentence for one event (its kind, for a kind this build has no words for)."""
    function = SUMMARIES.get(type(event))
    return function(event) if function is not None else kind_of(event)


# -- words shared by several kinds ---------------------------------------------------------


def plural(count: int, noun: str) -> str:
    """``1 core``, ``2 cores``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _resources(cores: int, memory_bytes: int | None, gpu_ids: tuple[int, ...]) -> str:
    parts = [plural(cores, "core")]
    if memory_bytes:
        parts.append(_size(memory_bytes))
    if gpu_ids:
        parts.append(("GPU " if len(gpu_ids) == 1 else "GPUs ") + ",".join(map(str, gpu_ids)))
    return ", ".join(parts)


def _by(who: str) -> str:
    return f" by {who}"


def _short(ident: str) -> str:
    return ident[:12]


def placement_reason(placed: TaskPlaced) -> str:
    """The placement's reason, led by its policy (which the scheduler may already name)."""
    policy = placed.policy or "manual"
    if placed.reason.startswith(policy):
        return placed.reason
    return f"{policy}: {placed.reason}" if placed.reason else policy


# -- nodes ---------------------------------------------------------------------------------


@_summary_of(NodeRegistered)
def _registered(e: NodeRegistered) -> str:
    gpus = f", {plural(len(e.gpus), 'GPU')}" if e.gpus else ""
    executors = "/".join(e.executors) or "no executor"
    return (
        f"{e.node} registered at {e.address}: {plural(e.cores, 'core')},"
        f" {_size(e.memory_bytes)}{gpus}; runs {executors}"
    )


@_summary_of(NodeHeartbeat)
def _heartbeat(e: NodeHeartbeat) -> str:
    running = plural(len(e.running_task_ids), "task")
    return f"{e.node}: cpu {e.cpu_percent:.0f}%, memory {e.memory_percent:.0f}%, {running} running"


@_summary_of(NodeOffline)
def _offline(e: NodeOffline) -> str:
    return f"{e.node} offline" + (f": {e.reason}" if e.reason else "")


@_summary_of(NodeOnline)
def _online(e: NodeOnline) -> str:
    return f"{e.node} back online"


# -- tasks ---------------------------------------------------------------------------------


@_summary_of(TaskSubmitted)
def _submitted(e: TaskSubmitted) -> str:
    spec = e.spec
    what = f"{spec.name}: " if spec.name else ""
    where = [_resources(spec.cores, spec.memory_bytes, spec.gpu_ids)]
    if spec.task_type == "vps":
        where.append("VPS")
    if spec.target:
        where.append(f"on {spec.target}")
    where.append(f"in {spec.container}" if spec.container else "as a process")
    command = shlex.join([spec.command, *spec.args])
    return f"submitted by {spec.owner}: {what}{command} ({', '.join(where)})"


@_summary_of(TaskPlaced)
def _placed(e: TaskPlaced) -> str:
    numa = f", NUMA {e.numa_id}" if e.numa_id is not None else ""
    resources = _resources(e.cores, e.memory_bytes, e.gpu_ids)
    return f"placed on {e.node} ({resources}{numa}): {placement_reason(e)}"


@_summary_of(TaskDispatched)
def _dispatched(e: TaskDispatched) -> str:
    return f"run command sent to {e.node}"


@_summary_of(TaskStarted)
def _started(e: TaskStarted) -> str:
    what = f"container {_short(e.container_id)}" if e.container_id else f"pid {e.pid}"
    ssh = f", ssh port {e.ssh_port}" if e.ssh_port else ""
    return f"started on {e.node} ({what}{ssh})"


@_summary_of(TaskPaused)
def _paused(e: TaskPaused) -> str:
    return "paused: its processes are stopped"


@_summary_of(TaskResumed)
def _resumed(e: TaskResumed) -> str:
    return "resumed: its processes run again"


@_summary_of(TaskKillRequested)
def _kill_requested(e: TaskKillRequested) -> str:
    return "kill requested" + _by(e.requested_by) + (f": {e.reason}" if e.reason else "")


@_summary_of(TaskPauseRequested)
def _pause_requested(e: TaskPauseRequested) -> str:
    return "pause requested" + _by(e.requested_by)


@_summary_of(TaskResumeRequested)
def _resume_requested(e: TaskResumeRequested) -> str:
    return "resume requested" + _by(e.requested_by)


@_summary_of(TaskFinished)
def _finished(e: TaskFinished) -> str:
    # The node reports it: the line's source column names the node already.
    code = "" if e.exit_code is None else f" (exit code {e.exit_code})"
    return f"{e.state}{code}" + (f": {e.message}" if e.message else "")


@_summary_of(TaskLost)
def _lost(e: TaskLost) -> str:
    where = f" on {e.node}" if e.node else ""
    return f"lost{where}: {e.reason}"


@_summary_of(TaskUnreachable)
def _unreachable(e: TaskUnreachable) -> str:
    why = f": {e.reason}" if e.reason else ""
    return f"unknown ({e.was} when {e.node} went silent){why}"


@_summary_of(TaskReconnected)
def _reconnected(e: TaskReconnected) -> str:
    return f"{e.state} again: {e.node} came back with it after {_gap(e.unreachable_s)}"


def _gap(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- environments and SSH ------------------------------------------------------------------


@_summary_of(EnvPackaged)
def _packaged(e: EnvPackaged) -> str:
    return (
        f"{e.name} packaged{_by(e.requested_by)} as {e.tarball}"
        f" ({_size(e.size_bytes)}, sha256 {e.sha256[:12]}) from {e.image}"
    )


@_summary_of(EnvSynced)
def _synced(e: EnvSynced) -> str:
    stamp = datetime.fromtimestamp(e.timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{e.name} of {stamp} loaded on {e.node} in {e.duration_s:.1f}s"


@_summary_of(EnvContainerCreated)
def _container_created(e: EnvContainerCreated) -> str:
    container = f" (container {_short(e.container_id)})" if e.container_id else ""
    return f"{e.name} from {e.image}{container}{_by(e.requested_by)}"


@_summary_of(EnvContainerStarted)
def _container_started(e: EnvContainerStarted) -> str:
    return f"{e.name} started{_by(e.requested_by)}"


@_summary_of(EnvContainerStopped)
def _container_stopped(e: EnvContainerStopped) -> str:
    return f"{e.name} stopped{_by(e.requested_by)}"


@_summary_of(EnvContainerDeleted)
def _container_deleted(e: EnvContainerDeleted) -> str:
    return f"{e.name} deleted{_by(e.requested_by)} (its tarballs stay)"


@_summary_of(EnvShellOpened)
def _shell_opened(e: EnvShellOpened) -> str:
    source = f" from {e.client_address}" if e.client_address else ""
    return f"shell {_short(e.session_id)} into {e.name} opened{_by(e.requested_by)}{source}"


@_summary_of(EnvShellClosed)
def _shell_closed(e: EnvShellClosed) -> str:
    code = "" if e.exit_code is None else f" (exit code {e.exit_code})"
    return f"shell {_short(e.session_id)} into {e.name} closed{code}"


@_summary_of(VpsReady)
def _vps_ready(e: VpsReady) -> str:
    if e.sshd and e.ssh_port:
        where = f"{e.address}:{e.ssh_port}" if e.address else f"port {e.ssh_port}"
        return f"VPS ready on {e.node}: sshd at {where}"
    why = f" ({e.message})" if e.message else ""
    return f"VPS up on {e.node} without sshd{why}: reach it with `hakuriver vps shell`"


@_summary_of(SshSessionOpened)
def _ssh_opened(e: SshSessionOpened) -> str:
    source = f" from {e.client_address}" if e.client_address else ""
    on = f" on {e.node}" if e.node else ""
    at = f" (sshd at {e.address}:{e.port})" if e.address else ""
    if e.via == "shell":
        return f"{e.user} opened a shell in VPS task {e.task_id}{on}{at}{source}"
    return f"{e.user} tunnelled to task {e.task_id}{on}{at}{source}"


@_summary_of(SshSessionClosed)
def _ssh_closed(e: SshSessionClosed) -> str:
    what = "shell in" if e.via == "shell" else "tunnel to"
    who = f"{e.user}'s " if e.user else ""
    why = f", {e.reason}" if e.reason else ""
    return (
        f"{who}{what} task {e.task_id} closed after {e.duration_s:.1f} s"
        f" ({_size(e.bytes_in)} in, {_size(e.bytes_out)} out{why})"
    )


# -- identity -------------------------------------------------------------------------------


def _actor(e: Event) -> str:
    return _by(e.actor.user) if e.actor is not None else ""


@_summary_of(UserCreated)
def _user_created(e: UserCreated) -> str:
    return f"user {e.name} created ({e.role}){_actor(e)}"


@_summary_of(UserRoleChanged)
def _user_role(e: UserRoleChanged) -> str:
    return f"user {e.name} is now {e.role}{_actor(e)}"


@_summary_of(UserDisabled)
def _user_disabled(e: UserDisabled) -> str:
    why = f": {e.reason}" if e.reason else ""
    return f"user {e.name} disabled{_actor(e)}{why}"


@_summary_of(TokenIssued)
def _token_issued(e: TokenIssued) -> str:
    name = f" {e.name!r}" if e.name else ""
    node = f" for node {e.node}" if e.node else ""
    if e.expires_at_us is None:
        expiry = ", no expiry"
    else:
        expiry = f", expires {datetime.fromtimestamp(e.expires_at_us / 1e6, UTC):%Y-%m-%d %H:%M}Z"
    uses = f", {plural(e.uses, 'use')}" if e.uses is not None else ""
    return f"{e.token_kind} token{name} of {e.user}{node} issued{_by(e.issued_by)}{expiry}{uses}"


@_summary_of(TokenRevoked)
def _token_revoked(e: TokenRevoked) -> str:
    why = f": {e.reason}" if e.reason else ""
    return f"token {e.token_id} revoked{why}"


@_summary_of(AuthFailed)
def _auth_failed(e: AuthFailed) -> str:
    where = f" on {e.route}" if e.route else ""
    source = f" from {e.client_address}" if e.client_address else ""
    return f"{plural(e.count, 'request')} refused{source}{where}: {e.reason}"


@_summary_of(NodeEnrolled)
def _node_enrolled(e: NodeEnrolled) -> str:
    join = f" with join token {e.join_token_id}" if e.join_token_id else ""
    return f"node {e.node} enrolled{join} (credential {e.token_id})"


@_summary_of(NodeRevoked)
def _node_revoked(e: NodeRevoked) -> str:
    why = f": {e.reason}" if e.reason else ""
    return f"node {e.node} revoked{why}"


@_summary_of(NodeForgotten)
def _node_forgotten(e: NodeForgotten) -> str:
    why = f": {e.reason}" if e.reason else ""
    return f"node {e.node} forgotten{why}"


@_summary_of(SshKeyAdded)
def _key_added(e: SshKeyAdded) -> str:
    comment = f" ({e.comment})" if e.comment else ""
    return f"{e.key_type} key {e.fingerprint}{comment} added for {e.user}{_actor(e)}"


@_summary_of(SshKeyRemoved)
def _key_removed(e: SshKeyRemoved) -> str:
    return f"key {e.key_id} of {e.user} removed{_actor(e)}"


# -- jobs ----------------------------------------------------------------------------------


@_summary_of(JobSubmitted)
def _job_submitted(e: JobSubmitted) -> str:
    spec = e.spec
    name = spec.name or f"task-{e.job_id}"
    per_rank = [_resources(spec.cores, spec.memory_bytes, ())]
    if spec.gpu_count:
        model = f" {spec.gpu_model}" if spec.gpu_model else ""
        per_rank.append(f"{plural(spec.gpu_count, 'GPU')}{model}")
    per_rank.append(f"in {spec.container}" if spec.container else "as a process")
    nodes = plural(spec.num_nodes, "node")
    return f"job {name} submitted by {e.owner}: {nodes} ({', '.join(per_rank)} each)"


@_summary_of(JobPlaced)
def _job_placed(e: JobPlaced) -> str:
    ranks = ", ".join(f"rank {rank} on {node}" for rank, node in enumerate(e.nodes))
    policy = e.policy or "gang"
    why = e.reason if e.reason.startswith(policy) else f"{policy}: {e.reason}".rstrip(": ")
    return f"every rank placed at once: {ranks} ({why})"


@_summary_of(JobPhase)
def _job_phase(e: JobPhase) -> str:
    if e.phase == "run":
        return "every rank's setup done: run phase, each rank told to run"
    return f"{e.phase} phase: each rank runs its setup, then waits for the others"


@_summary_of(JobSetupDone)
def _job_setup_done(e: JobSetupDone) -> str:
    return f"rank {e.rank} of job {e.job_id} set up on {e.node}, waiting for the other ranks"


@_summary_of(JobStopRequested)
def _job_stop_requested(e: JobStopRequested) -> str:
    why = f": {e.reason}" if e.reason else ""
    return f"job stop requested by {e.requested_by}{why}"


@_summary_of(JobFinished)
def _job_finished(e: JobFinished) -> str:
    how = f": {e.message}" if e.message else ""
    return f"job {e.state}{how}"


@_summary_of(VolumeCreated)
def _volume_created(e: VolumeCreated) -> str:
    return f"volume {e.name} created by {e.created_by}"
