"""Submitting: validate each request against the state, number the tasks, and place
those that fit now in the same decision.

Nothing here does I/O. A decision either returns the events to append or raises
``InvalidRequest`` naming the field (or target) at fault, so nothing is ever
half-recorded: the whole batch is appended in one commit, or nothing.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence

import msgspec

from control_plane.commands.identity import user_name_problem
from control_plane.commands.types import Context, Decision, PlaceQueued, Send, SubmitTasks
from control_plane.commands.vps_submit import VPS_COMMAND, check_vps_request
from control_plane.errors import InvalidRequest, Refused
from control_plane.requests import (
    SubmitTask,
    Target,
    check_text_fields,
    parse_mount,
    parse_size,
)
from control_plane.requests import parse_target as _parse_target
from control_plane.scheduler import Placement
from events import link
from events.config import is_no_container
from events.types import Mount, TaskDispatched, TaskPlaced, TaskSpec, TaskSubmitted
from projections.cluster import ClusterState
from projections.nodes import NodeView
from projections.tasks import TaskView

# The part of the shared directory that tasks work in (``/shared`` in a container).
SHARED_DATA = "shared_data"


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


def submitted_events(
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
    owner: str = "anonymous",
    user_mount_dirs: Sequence[str] | None = None,
    user_privileged: bool = True,
) -> list[TaskSubmitted]:
    """One ``task.submitted`` per target (or one for automatic placement), tied by a batch id.

    The host's ``[docker]`` policy: ``privileged_default`` (``tasks_privileged``) applies
    when the request does not say; ``allow_privileged`` false refuses privileged tasks;
    a non-empty ``mount_dirs`` (``allowed_mount_dirs``) refuses ``--mount`` host paths
    outside those folders; ``default_mounts`` (``additional_mounts``) are given to
    container tasks that name no ``--mount`` of their own (the seeds' override rule).

    ``owner`` is the authenticated user the tasks belong to. For a user who is not an
    admin, ``user_mount_dirs`` (not None) are the only folders ``--mount`` may name (the
    shared data folder and what ``[auth] user_mount_dirs`` grants), and ``user_privileged``
    false refuses ``--privileged`` (``[auth] user_privileged``) and keeps the host's
    ``privileged_default`` from their tasks: a default is no way around the rule.
    """
    check_text_fields(request)
    memory = parse_size(request.memory)
    targets = [_parse_target(t, f"targets[{i}]") for i, t in enumerate(request.targets)]
    mounts = tuple(
        Mount(host_path=h, container_path=c, read_only=ro)
        for h, c, ro in (parse_mount(m, f"mounts[{i}]") for i, m in enumerate(request.mounts))
    )
    for i, mount in enumerate(mounts):
        if user_mount_dirs is not None and not _inside(mount.host_path, user_mount_dirs):
            raise Refused(
                f"mounts[{i}]",
                f"host path {mount.host_path!r} is outside the shared data folder: mounting it"
                f" needs an admin's token (users may mount {', '.join(user_mount_dirs)};"
                " an admin can grant more with [auth] user_mount_dirs)",
            )
        if mount_dirs and not _inside(mount.host_path, mount_dirs):
            raise InvalidRequest(
                f"mounts[{i}]",
                f"host path {mount.host_path!r} is outside the folders this host allows"
                f" to be mounted ({', '.join(mount_dirs)})",
            )
    container = request.container if request.container is not None else default_container
    if is_no_container(container):
        container = None
    if request.privileged and not allow_privileged:
        raise InvalidRequest("privileged", "this host does not allow privileged tasks")
    if request.privileged and not user_privileged:
        raise Refused(
            "privileged",
            "a privileged container is root on its node: it needs an admin's token"
            " (or [auth] user_privileged = true on the host)",
        )
    if request.privileged and container is None:
        raise InvalidRequest("privileged", "only container tasks can be privileged")
    # ``tasks_privileged`` makes privileged the default for those who may run privileged
    # containers; a user who may not gets an unprivileged one, as if the host said nothing.
    default = privileged_default and user_privileged
    privileged = (
        request.privileged if request.privileged is not None else default
    ) and container is not None
    if container is None:
        for i, mount in enumerate(mounts):
            if covers_kernel_view(mount.container_path):
                raise InvalidRequest(
                    f"mounts[{i}]",
                    f"target {mount.container_path!r} is at or under /proc or /sys: a process"
                    " task's mount never covers the kernel's own views (the node refuses it)",
                )
    if container is not None and not mounts:
        mounts = additional_mounts(default_mounts)
    command, public_key = request.command, request.ssh_public_key
    vps = request.task_type == "vps"
    if vps:
        public_key = check_vps_request(state, request, targets, container, owner)
        command = VPS_COMMAND

    for i, target in enumerate(targets):
        node = state.nodes.get(target.node)
        if node is None:
            known = ", ".join(sorted(state.nodes)) or "none registered yet"
            raise InvalidRequest(f"targets[{i}]", f"unknown node {target.node!r} (known: {known})")
        reason = never_fits(node, request.cores, memory, target)
        if reason:
            raise InvalidRequest(f"targets[{i}]", f"{target} can never fit: {reason}")
        no_account = node.account_refusal(owner)
        if no_account:
            raise InvalidRequest(f"targets[{i}]", f"{target} can never run it: {no_account}")
        if container is None and mounts and not node.process_mounts:
            raise InvalidRequest("mounts", _no_mounts_on(node.name))
        if container is not None and vps is False and "docker" not in node.executors:
            raise InvalidRequest(f"targets[{i}]", _no_docker_on(str(target), container))
    if not targets and state.nodes:
        auto = Target(node="")
        large = [n for n in state.nodes.values() if not never_fits(n, request.cores, memory, auto)]
        if not large:
            # Blame cores when no node has that many even ignoring memory.
            cores_alone = any(
                not never_fits(n, request.cores, None, auto) for n in state.nodes.values()
            )
            raise InvalidRequest(
                "memory" if cores_alone else "cores",
                "no registered node is large enough for this task",
            )
        no_accounts = [n.account_refusal(owner) for n in sorted(large, key=lambda n: n.name)]
        if all(no_accounts):
            raise InvalidRequest("owner", _no_node_for(owner, [r for r in no_accounts if r]))
        # The account and the binds on the SAME node: one that can bind but lacks the
        # account, and another with the account that cannot bind, hold it nowhere.
        if (
            container is None
            and mounts
            and not any(n.process_mounts and not n.account_refusal(owner) for n in large)
        ):
            raise InvalidRequest("mounts", _no_mounts_on(None, owner))
        if (
            container is not None
            and vps is False  # a VPS's own check (check_vps_request) names what it needs
            and not any("docker" in n.executors and not n.account_refusal(owner) for n in large)
        ):
            raise InvalidRequest("container", _no_docker_on(None, container))

    batch_id = batch_id or new_id()
    events = []
    placements: list[Target | None] = list(targets) if targets else [None]
    for place in placements:
        spec = TaskSpec(
            task_type=request.task_type,
            command=command,
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
            owner=owner,
            mount_roots=_roots(user_mount_dirs, mounts, default_mounts),
            name=request.name,
            ssh_public_key=public_key,
        )
        events.append(TaskSubmitted(task_id=new_id(), spec=spec))
    return events


def additional_mounts(entries: Sequence[str]) -> tuple[Mount, ...]:
    """The host's ``[docker] additional_mounts`` as mounts (given to container tasks that
    name none)."""
    return tuple(
        Mount(host_path=h, container_path=c, read_only=ro)
        for h, c, ro in (parse_mount(m, f"additional_mounts[{i}]") for i, m in enumerate(entries))
    )


def _roots(
    user_dirs: Sequence[str] | None, mounts: tuple[Mount, ...], default_mounts: Sequence[str]
) -> tuple[str, ...] | None:
    """The folders a user's task's mounts must resolve into on the node (None: an admin's)."""
    if user_dirs is None or not mounts:
        return None
    given = [parse_mount(m, "additional_mounts")[0] for m in default_mounts]
    return tuple(dict.fromkeys([*user_dirs, *given]))


def _inside(path: str, folders: Sequence[str]) -> bool:
    """Whether ``path`` (normalised, so ``..`` cannot escape) lies in one of ``folders``."""
    clean = posixpath.normpath(path)
    for folder in folders:
        root = posixpath.normpath(folder)
        if clean == root or clean.startswith(root.rstrip("/") + "/"):
            return True
    return False


def covers_kernel_view(target: str) -> bool:
    """Whether a process task's mount target is /proc, /sys or under them (as written:
    the node checks the path it resolves to, and the file system it is on, again)."""
    path = posixpath.normpath(target)
    return any(path == top or path.startswith(top + "/") for top in ("/proc", "/sys"))


def _no_docker_on(target: str | None, container: str) -> str:
    """A container task where no node (or not ``target``) has a Docker engine."""
    where = f"{target} has no" if target else "no registered node large enough has a"
    return (
        f"{where} Docker engine to run the container environment {container!r} (the"
        " default environment, when you gave no --container); pass --container NULL to"
        " run the task as a plain process, or start Docker on a node and restart its runner"
    )


def _no_mounts_on(node: str | None, owner: str | None = None) -> str:
    """``--mount`` on a process task where no node (or not ``node``) can bind them."""
    where = f"node {node} cannot" if node else "no registered node large enough can"
    if owner is not None:
        where = f"no registered node large enough with an account {owner!r} can"
    return (
        f"{where} give a process task (--container NULL) its --mount binds: that needs a"
        " runner running as root that may make mount namespaces. Run the task in a"
        " container, or drop --mount"
    )


def _no_node_for(owner: str, refusals: list[str], shown: int = 5) -> str:
    """No node large enough has ``owner``'s account: say so, naming a few of them."""
    more = f"; and {len(refusals) - shown} more" if len(refusals) > shown else ""
    return (
        f"no registered node large enough can run tasks as {owner!r}: "
        + "; ".join(refusals[:shown])
        + more
    )


def _cores(count: int) -> str:
    return f"{count} core" if count == 1 else f"{count} cores"


# One submission is one commit: at most as many tasks as a batch may hold
# (requests.SubmitBatch), however they are spread over requests and targets.
MAX_TASKS_PER_SUBMISSION = 10_000


def decide_submission(state: ClusterState, command: SubmitTasks, ctx: Context) -> Decision:
    """A batch: ``task.submitted`` per target of each request, numbered after the highest
    number so far, with the placements of those that fit now in the same commit (one
    durable commit instead of two is a quarter of a trivial task's latency)."""
    docker, auth = ctx.settings.docker, ctx.settings.auth
    count = sum(max(1, len(r.targets)) for r in command.requests)
    if count > MAX_TASKS_PER_SUBMISSION:
        raise InvalidRequest(
            "targets",
            f"{count} tasks in one submission (one per target); at most"
            f" {MAX_TASKS_PER_SUBMISSION}: split it",
        )
    actor = command.actor
    admin = actor.is_admin
    # A user's mounts stay in what their containers see as /shared already: the rest of the
    # shared directory holds every task's output and the environment tarballs runners load.
    user_data = str(ctx.settings.shared_dir / SHARED_DATA)
    user_mounts = None if admin else [user_data, *auth.user_mount_dirs]
    submitted: list[TaskSubmitted] = []
    for i, request in enumerate(command.requests):
        owner = actor.user
        if request.owner is not None and request.owner != actor.user:
            if not admin:
                raise Refused(
                    f"tasks[{i}].owner" if len(command.requests) > 1 else "owner",
                    f"you are {actor.user}: submitting as {request.owner} needs an admin's token",
                )
            # An admin may submit on behalf of any user name (as root may with Slurm),
            # one without an account here too: the tasks are that name's.
            problem = user_name_problem(request.owner)
            if problem:
                raise InvalidRequest("owner", problem)
            owner = request.owner
        try:
            submitted += submitted_events(
                state,
                request,
                new_id=ctx.new_id,
                default_container=docker.default_container_name,
                allow_privileged=docker.allow_privileged,
                batch_id=command.batch_id,
                privileged_default=docker.tasks_privileged,
                mount_dirs=docker.allowed_mount_dirs,
                default_mounts=docker.additional_mounts,
                owner=owner,
                user_mount_dirs=user_mounts,
                user_privileged=admin or auth.user_privileged,
            )
        except (InvalidRequest, Refused) as exc:
            if len(command.requests) == 1:
                raise
            raise type(exc)(f"tasks[{i}].{exc.field}", exc.message) from None
    after = state.last_number
    submitted = [msgspec.structs.replace(e, number=after + i) for i, e in enumerate(submitted, 1)]
    incoming = [TaskView(task_id=e.task_id, spec=e.spec) for e in submitted]
    placements = ctx.scheduler.plan(state, incoming, now_us=ctx.now_us)
    # The pass may also place older queued work that fits now (a node freed since the
    # last pass): its specs are in the state.
    specs = {e.task_id: e.spec for e in submitted}
    for placed in placements:
        if isinstance(placed, TaskPlaced) and placed.task_id not in specs:
            specs[placed.task_id] = state.tasks[placed.task_id].spec
    decision = dispatching(placements, specs, ctx.connected)
    decision.events[:0] = submitted
    decision.submitted = submitted
    return decision


def decide_placement(state: ClusterState, command: PlaceQueued, ctx: Context) -> Decision:
    """The scheduler's pass over the queue: the placements that fit now, dispatched."""
    if not state.pending:
        return Decision()
    placements = ctx.scheduler.plan(state, now_us=ctx.now_us)
    specs = {
        p.task_id: state.tasks[p.task_id].spec for p in placements if isinstance(p, TaskPlaced)
    }
    return dispatching(placements, specs, ctx.connected)


def dispatching(
    placements: Sequence[Placement], specs: dict[str, TaskSpec], connected: frozenset[str]
) -> Decision:
    """Placements, ``task.dispatched`` and a ``run`` for those whose node's agent is connected.

    ``task.dispatched`` is recorded in the placement's commit, before the run command
    leaves: recorded after it, the node's ``task.started`` could commit first. If the
    send then fails, the agent's reconnection re-sends the command (decide_hello). A
    job's ``job.placed`` and ``job.phase`` are recorded where the pass put them, right
    after its ranks' placements; they send nothing.
    """
    decision = Decision(events=list(placements))
    for placed in placements:
        if isinstance(placed, TaskPlaced) and placed.node in connected:
            decision.events.append(TaskDispatched(task_id=placed.task_id, node=placed.node))
            decision.sends.append(Send(placed.node, run_of(placed, specs[placed.task_id])))
    return decision


def run_of(placed: TaskPlaced, spec: TaskSpec) -> link.Run:
    """The run command for a placement, with the resources it reserved (and the variables
    it added: a job rank's)."""
    if placed.env:
        spec = msgspec.structs.replace(spec, env={**spec.env, **placed.env})
    return link.Run(
        task_id=placed.task_id,
        spec=spec,
        cores=placed.cores,
        memory_bytes=placed.memory_bytes,
        gpu_ids=placed.gpu_ids,
        numa_id=placed.numa_id,
    )
