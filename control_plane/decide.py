"""Pure command handlers: validate a user's request against the state, return events.

Nothing here does I/O. A handler either returns the events to append or raises
``InvalidRequest`` naming the field (or target) at fault, so nothing is ever
half-recorded: the caller appends the whole list in one batch or nothing.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence

from msgspec import Struct

from control_plane.errors import InvalidRequest
from control_plane.requests import (
    SubmitTask,
    Target,
    parse_mount,
    parse_size,
)
from control_plane.requests import parse_target as _parse_target
from events import link
from events.types import (
    AnyEvent,
    Mount,
    NodeOnline,
    NodeRegistered,
    TaskFinished,
    TaskKillRequested,
    TaskLost,
    TaskReconnected,
    TaskSpec,
    TaskSubmitted,
)
from projections.cluster import ClusterState
from projections.nodes import NodeView
from projections.tasks import TaskView

NO_CONTAINER = "NULL"


def never_fits(node: NodeView, cores: int, memory: int | None, target: Target) -> str | None:
    """Why a task could never run on ``node`` even when it is idle; None if it could."""
    if cores > node.cores:
        return f"asks for {_cores(cores)}, {node.name} has {node.cores}"
    if memory is not None and node.memory_bytes and memory > node.memory_bytes:
        return f"asks for {memory} bytes of memory, {node.name} has {node.memory_bytes}"
    if target.numa_id is not None:
        numa_ids = [numa.id for numa in node.numa]
        if target.numa_id not in numa_ids:
            return f"{node.name} has no NUMA node {target.numa_id} (has {numa_ids})"
        if cores > node.numa_cores(target.numa_id):
            return (
                f"asks for {_cores(cores)}, NUMA node {target.numa_id} of {node.name}"
                f" has {node.numa_cores(target.numa_id)}"
            )
    gpu_ids = {gpu.id for gpu in node.gpus}
    missing = [g for g in target.gpu_ids if g not in gpu_ids]
    if missing:
        return f"{node.name} has no GPU {missing} (has {sorted(gpu_ids)})"
    return None


def decide_submit(
    state: ClusterState,
    request: SubmitTask,
    *,
    new_id: Callable[[], str],
    default_container: str | None,
    allow_privileged: bool = False,
    batch_id: str | None = None,
    privileged_default: bool = False,
    mount_dirs: Sequence[str] = (),
    default_mounts: Sequence[str] = (),
) -> list[TaskSubmitted]:
    """One ``task.submitted`` per target (or one for automatic placement), tied by a batch id.

    The host's ``[docker]`` policy: ``privileged_default`` (``tasks_privileged``) applies
    when the request does not say; ``allow_privileged`` false refuses privileged tasks;
    a non-empty ``mount_dirs`` (``allowed_mount_dirs``) refuses ``--mount`` host paths
    outside those folders; ``default_mounts`` (``additional_mounts``) are given to
    container tasks that name no ``--mount`` of their own (the seeds' override rule).
    """
    memory = parse_size(request.memory)
    targets = [_parse_target(t, f"targets[{i}]") for i, t in enumerate(request.targets)]
    mounts = tuple(
        Mount(host_path=h, container_path=c, read_only=ro)
        for h, c, ro in (parse_mount(m, f"mounts[{i}]") for i, m in enumerate(request.mounts))
    )
    for i, mount in enumerate(mounts):
        if mount_dirs and not _inside(mount.host_path, mount_dirs):
            raise InvalidRequest(
                f"mounts[{i}]",
                f"host path {mount.host_path!r} is outside the folders this host allows"
                f" to be mounted ({', '.join(mount_dirs)})",
            )
    bad_env = [key for key in request.env if not key or "=" in key or "\0" in key]
    if bad_env:
        raise InvalidRequest("env", f"invalid variable name {bad_env[0]!r}")
    container = request.container if request.container is not None else default_container
    if container == NO_CONTAINER:
        container = None
    if request.privileged and not allow_privileged:
        raise InvalidRequest("privileged", "this host does not allow privileged tasks")
    if request.privileged and container is None:
        raise InvalidRequest("privileged", "only container tasks can be privileged")
    privileged = (
        request.privileged if request.privileged is not None else privileged_default
    ) and container is not None
    if container is not None and not mounts and default_mounts:
        mounts = tuple(
            Mount(host_path=h, container_path=c, read_only=ro)
            for h, c, ro in (
                parse_mount(m, f"additional_mounts[{i}]") for i, m in enumerate(default_mounts)
            )
        )
    if request.task_type == "vps":
        if len(targets) > 1:
            raise InvalidRequest("targets", "a VPS task takes at most one target")
        if container is None:
            raise InvalidRequest("container", "a VPS task needs a container environment")
        if not request.ssh_public_key:
            raise InvalidRequest("ssh_public_key", "a VPS task needs the user's public key")

    for i, target in enumerate(targets):
        node = state.nodes.get(target.node)
        if node is None:
            known = ", ".join(sorted(state.nodes)) or "none registered yet"
            raise InvalidRequest(f"targets[{i}]", f"unknown node {target.node!r} (known: {known})")
        reason = never_fits(node, request.cores, memory, target)
        if reason:
            raise InvalidRequest(f"targets[{i}]", f"{target} can never fit: {reason}")
    if not targets and state.nodes:
        auto = Target(node="")
        if all(never_fits(n, request.cores, memory, auto) for n in state.nodes.values()):
            # Blame cores when no node has that many even ignoring memory.
            cores_alone = any(
                not never_fits(n, request.cores, None, auto) for n in state.nodes.values()
            )
            raise InvalidRequest(
                "memory" if cores_alone else "cores",
                "no registered node is large enough for this task",
            )

    batch_id = batch_id or new_id()
    events = []
    placements: list[Target | None] = list(targets) if targets else [None]
    for place in placements:
        spec = TaskSpec(
            task_type=request.task_type,
            command=request.command,
            args=tuple(request.args),
            env=dict(request.env),
            cores=request.cores,
            memory_bytes=memory,
            gpu_ids=place.gpu_ids if place else (),
            numa_id=place.numa_id if place else None,
            container=container,
            privileged=privileged,
            mounts=mounts,
            target=str(place) if place else None,
            batch_id=batch_id,
            owner=request.owner,
            name=request.name,
            ssh_public_key=request.ssh_public_key,
        )
        events.append(TaskSubmitted(task_id=new_id(), spec=spec))
    return events


def _inside(path: str, folders: Sequence[str]) -> bool:
    """Whether ``path`` (normalised, so ``..`` cannot escape) lies in one of ``folders``."""
    clean = posixpath.normpath(path)
    for folder in folders:
        root = posixpath.normpath(folder)
        if clean == root or clean.startswith(root.rstrip("/") + "/"):
            return True
    return False


def decide_kill(state: ClusterState, task_id: str, requested_by: str) -> list[AnyEvent]:
    """A kill request; a task still waiting in the queue is killed on the spot."""
    task = state.tasks.get(task_id)
    if task is None:
        raise InvalidRequest("task_id", f"no task {task_id!r}")
    if task.is_final or task.state == "lost":
        raise InvalidRequest("task_id", f"task {task.number} is already {task.state}")
    events: list[AnyEvent] = [TaskKillRequested(task_id=task_id, requested_by=requested_by)]
    if task.state == "pending":
        events.append(TaskFinished(task_id=task_id, state="killed", message="killed while queued"))
    elif task.state == "unknown":
        # Its node cannot be told now. The user gives the task up: it ends here, and its
        # node is told to kill it if it comes back with it (decide_hello).
        events.append(
            TaskLost(
                task_id=task_id,
                node=task.node,
                reason=f"killed by {requested_by} while node {task.node} was unreachable",
            )
        )
    return events


class Reconciliation(Struct, frozen=True, kw_only=True):
    """What a node's hello leads to: its registration (recorded as from the node), the
    host's events about its tasks, and the commands to send once both are recorded."""

    registration: list[AnyEvent]
    events: list[AnyEvent]
    commands: list[link.Message]


def decide_hello(
    state: ClusterState, hello: link.Hello, *, now_us: int, grace_s: float
) -> Reconciliation:
    """Reconcile what a (re)connecting agent runs with what the log says runs there.

    For each task holding resources on the node (``unknown`` ones by the state they had):
    the agent runs it, or holds its final report → it stays (an unknown one is
    ``task.reconnected``), and a kill requested meanwhile is sent; placed but never
    received → ``run`` again (or, if a kill was asked for, ``killed before it started``);
    anything else the agent has no trace of → ``task.lost``. A task the agent runs that
    the host considers ended, or placed elsewhere, is killed.
    """
    registration: list[AnyEvent] = []
    events: list[AnyEvent] = []
    commands: list[link.Message] = []
    machine = NodeRegistered(
        node=hello.node,
        address=hello.address,
        cores=hello.cores,
        memory_bytes=hello.memory_bytes,
        numa=hello.numa,
        gpus=hello.gpus,
        agent_version=hello.agent_version,
        executors=hello.executors,
    )
    view = state.nodes.get(hello.node)
    if view is None or _machine(view) != _machine(machine):
        registration.append(machine)
    elif not view.online:
        registration.append(NodeOnline(node=hello.node))
    running = {t.task_id for t in hello.running}
    reported = set(hello.reported)
    for task_id in list(view.task_ids) if view is not None else []:
        task = state.tasks[task_id]
        was = task.state_before_unknown if task.state == "unknown" else task.state
        back = (
            [
                TaskReconnected(
                    task_id=task_id,
                    node=hello.node,
                    state=was,  # type: ignore[arg-type]
                    unreachable_s=max(0, now_us - (task.unknown_since_us or now_us)) / 1e6,
                )
            ]
            if task.state == "unknown"
            else []
        )
        if task_id in running:
            events += back
            if task.kill_requested_by is not None:
                commands.append(link.Kill(task_id=task_id, grace_s=grace_s))
        elif task_id in reported:
            events += back  # its final report follows in the agent's first batch
        elif was == "assigning" and task.kill_requested_by is not None:
            events.append(
                TaskFinished(
                    task_id=task_id,
                    state="killed",
                    message="killed before it started",
                    node=hello.node,
                )
            )
        elif was == "assigning":
            events += back
            commands.append(run_command(task))
        else:
            events.append(
                TaskLost(
                    task_id=task_id,
                    node=hello.node,
                    reason="the node's agent came back without this task",
                )
            )
    for task_id in running:
        known = state.tasks.get(task_id)
        if known is None or known.node != hello.node or not known.holds_resources:
            commands.append(
                link.Kill(
                    task_id=task_id, grace_s=grace_s, reason="the host considers this task ended"
                )
            )
    return Reconciliation(registration=registration, events=events, commands=commands)


def _machine(e: object) -> tuple[object, ...]:
    return tuple(
        getattr(e, f)
        for f in ("address", "cores", "memory_bytes", "numa", "gpus", "agent_version", "executors")
    )


def run_command(task: TaskView) -> link.Run:
    """The run command for a placed task, with the resources it was placed on."""
    return link.Run(
        task_id=task.task_id,
        spec=task.spec,
        cores=task.cores,
        memory_bytes=task.memory_bytes,
        gpu_ids=task.gpu_ids,
        numa_id=task.numa_id,
    )


def _cores(count: int) -> str:
    return f"{count} core" if count == 1 else f"{count} cores"
