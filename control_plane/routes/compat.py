"""The original HakuRiver's host API (0.3.x), so that scripts written against it keep working.

A thin adapter: each route parses the original's request, does what our route of the same
purpose does (the same command through ``ControlPlane.execute``, the same ownership rules,
the same access rule) and answers in the original's JSON shape. docs/api.md, "Compatibility
layer (the original's API)", lists the routes, the mapping and the differences.

Task ids: the original's were snowflake integers, sent as strings of digits. Ours are
UUIDv7 strings, and every task has a number (1, 2, 3, ...) that every route accepts
(docs/decisions.md, "Task numbers as short ids"): the original's ``task_id`` is the
number, as a string of digits, so a script that stores, prints or ``int()``s it works as
before; a path takes the number, the full id or a prefix, as our routes do.

Authentication: these routes need a user's token in ``Authorization: Bearer``, as ours do
(the original had none); docs/decisions.md, "The original's API behind our tokens".
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct
from sanic import Request
from sanic.response import HTTPResponse

from control_plane.access import page_too, rule, wants_page
from control_plane.commands import KillTask, PauseTask
from control_plane.dashboard.routes import page
from control_plane.errors import Conflict, DomainError, InvalidRequest, NotFound
from control_plane.logs import MAX_CHUNK, Stream, log_path, log_size, read_from
from control_plane.openapi import Query, api
from control_plane.requests import MAX_BYTES, MAX_CORES, SubmitTask, decode_body
from control_plane.routes.common import (
    JsonBlueprint,
    answer,
    check_may_act,
    control_plane,
    may_see,
    principal_of,
    query_int,
    task_id_of,
)
from control_plane.routes.tasks import record_submission
from projections.nodes import NodeView
from projections.tasks import TaskView
from replay_tools.points import iso

bp = JsonBlueprint("compat")

# -- the answers' types (the OpenAPI document) ---------------------------------------------
# The original's JSON shapes as the handlers below write them (as dicts). Only the document
# uses these; tests/e2e/test_compat_api.py decodes real answers with them and re-encodes
# them, so a field added to, renamed in or dropped from a handler's answer fails there.
# The original's names are kept as they were, camel case and all. Every route here is
# tagged "compat" (the blueprint's name) and its summary starts with ORIGINAL.

ORIGINAL = "Original API: "
_TEXT = "text/plain; charset=utf-8"
_PAGE_TOO = (
    " Also the dashboard's page address: a browser's navigation (Accept: text/html and no"
    " Authorization header) gets the page (HTML) instead of this JSON."
)


class OriginalNodeRef(Struct, kw_only=True):
    """The node the original's submit placed a task on (``url``: null, our agents serve
    no HTTP)."""

    hostname: str
    url: None


class OriginalSubmitted(Struct, kw_only=True):
    """``POST /submit``'s answer: ``task_ids`` are the tasks' numbers as strings of digits
    (the original's snowflakes); ``assigned_node`` the node of the last target, null while
    it is queued; ``batch_id`` is ours."""

    message: str
    task_ids: list[str]
    assigned_node: OriginalNodeRef | None
    batch_id: str


class OriginalTask(Struct, kw_only=True):
    """A task as the original's ``GET /status/{id}`` answered it, plus ``number``, ``id``,
    ``owner`` and ``redacted`` (another user's task: ``command`` empty, ``arguments``,
    ``env_vars`` empty and the output paths null). Times are RFC 3339 UTC."""

    task_id: str
    batch_id: str
    task_type: str
    command: str
    arguments: list[str]
    env_vars: dict[str, str]
    required_cores: int
    required_gpus: list[int]
    required_memory_bytes: int | None
    status: str
    assigned_node: str | None
    target_numa_node_id: int | None
    stdout_path: str | None
    stderr_path: str | None
    exit_code: int | None
    error_message: str | None
    submitted_at: str | None
    started_at: str | None
    completed_at: str | None
    systemd_unit_name: None
    assignment_suspicion_count: int
    container_name: str | None
    privileged: bool
    number: int
    id: str
    owner: str
    redacted: bool


class OriginalVps(Struct, kw_only=True):
    """An active VPS task as the original's ``GET /vps/status`` listed it (``ssh_port``:
    null for another user's, or until it runs)."""

    task_id: str
    status: str
    assigned_node: str | None
    target_numa_node_id: int | None
    required_cores: int
    required_gpus: list[int]
    required_memory_bytes: int | None
    submitted_at: str | None
    started_at: str | None
    ssh_port: int | None
    number: int
    id: str
    owner: str
    redacted: bool


class OriginalMessage(Struct, kw_only=True):
    """The original's answer to kill, pause and resume."""

    message: str


class OriginalNuma(Struct, kw_only=True):
    """One NUMA node of the original's ``numa_topology`` (keyed by its id, a string)."""

    cores: list[int]
    memory_bytes: int


class OriginalGpu(Struct, kw_only=True):
    """The original's ``GPUInfo``; what our agents do not measure is null."""

    gpu_id: int
    name: str
    driver_version: None
    pci_bus_id: None
    gpu_utilization: int | None
    graphics_clock_mhz: None
    mem_utilization: None
    mem_clock_mhz: None
    memory_total_mib: float
    memory_used_mib: float
    memory_free_mib: float
    temperature: int | None
    fan_speed: None
    power_usage_mw: None
    power_limit_mw: None
    uuid: str | None


class OriginalNode(Struct, kw_only=True):
    """A node as the original's ``GET /nodes`` listed it (``cores_in_use``: "N/A" while
    offline, as the original wrote it)."""

    hostname: str
    url: None
    total_cores: int
    cores_in_use: int | str
    available_cores: int
    status: str
    last_heartbeat: str | None
    numa_topology: dict[str, OriginalNuma] | None
    gpu_info: list[OriginalGpu]


class OriginalNodeHealth(Struct, kw_only=True):
    """One node's latest heartbeat data, as the original's ``GET /health`` gave it."""

    hostname: str
    status: str
    last_heartbeat: str | None
    cpu_percent: float
    memory_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    total_cores: int
    numa_topology: dict[str, OriginalNuma] | None
    current_avg_temp: float | None
    current_max_temp: float | None
    gpu_info: list[OriginalGpu]


class OriginalAggregate(Struct, kw_only=True):
    """The cluster's aggregate, with the original's (camel case) names."""

    totalNodes: int
    onlineNodes: int
    totalCores: int
    totalMemBytes: int
    usedMemBytes: int
    avgCpuPercent: float
    avgMemPercent: float
    maxAvgCpuTemp: float
    maxMaxCpuTemp: float
    lastUpdated: str | None


class OriginalHealth(Struct, kw_only=True):
    """``GET /health``'s answer: a history of one (the latest heartbeats) and its
    aggregate, each in a list as the original's minute of history was."""

    nodes: list[list[OriginalNodeHealth]]
    aggregate: list[OriginalAggregate]


# -- POST /submit ---------------------------------------------------------------------------


class OriginalSubmit(Struct, kw_only=True):
    """The original's ``TaskRequest`` (hakuriver 0.3.0, core/models.py), field for field.
    Unknown fields are ignored, as its pydantic model did: a script that sends one it
    always sent keeps working."""

    task_type: str = "command"
    command: str = ""  # a VPS task's: the SSH public key
    arguments: list[str] = []
    env_vars: dict[str, str] = {}
    required_cores: Annotated[int, Meta(ge=0, le=MAX_CORES)] = 1
    required_gpus: list[list[Annotated[int, Meta(ge=0)]]] | None = None  # one list per target
    required_memory_bytes: Annotated[int, Meta(ge=0, le=MAX_BYTES)] | None = None
    targets: list[str] | None = None  # "host" or "host:numa"
    container_name: str | None = None  # None: the host's default; "NULL": no container
    privileged: bool | None = None
    additional_mounts: list[str] | None = None


_submit_decoder = msgspec.json.Decoder(OriginalSubmit)
# The original's target syntax (its validator): a host name, and a NUMA node after a colon.
_TARGET = re.compile(r"[a-zA-Z0-9.-]+(:\d+)?")
# Our request's fields, by the original's name (our refusals are answered naming theirs).
_ORIGINAL_FIELD = {
    "args": "arguments",
    "env": "env_vars",
    "cores": "required_cores",
    "memory": "required_memory_bytes",
    "container": "container_name",
    "mounts": "additional_mounts",
    "ssh_public_key": "command",
}


def _ours(body: OriginalSubmit) -> SubmitTask:
    """The original's request as ours (``InvalidRequest`` naming the original's field)."""
    if body.task_type not in ("command", "vps"):
        raise InvalidRequest("task_type", f"{body.task_type[:40]!r}: one of command, vps")
    targets = body.targets or []
    gpus = body.required_gpus
    if gpus is not None and not targets:
        raise InvalidRequest("required_gpus", "GPUs need targets (one GPU list per target)")
    if gpus is not None and len(gpus) != len(targets):
        raise InvalidRequest(
            "required_gpus", f"one GPU list per target: {len(gpus)} lists, {len(targets)} targets"
        )
    ours = []
    for i, target in enumerate(targets):
        if not _TARGET.fullmatch(target):
            raise InvalidRequest(
                f"targets[{i}]", f"{target[:80]!r}: use 'hostname' or 'hostname:numa_id'"
            )
        listed = gpus[i] if gpus is not None else []
        ours.append(f"{target}::{','.join(map(str, listed))}" if listed else target)
    vps = body.task_type == "vps"
    return SubmitTask(
        task_type="vps" if vps else "command",
        command="" if vps else body.command,
        args=[] if vps else body.arguments,
        env={} if vps else body.env_vars,
        cores=body.required_cores,
        # The original set no limit for 0 (its runner skipped a falsy limit); ours refuses 0.
        memory=body.required_memory_bytes or None,
        targets=ours,
        container=body.container_name,
        privileged=body.privileged,
        mounts=body.additional_mounts or [],
        ssh_public_key=(body.command or None) if vps else None,
    )


def _renamed(exc: DomainError) -> DomainError:
    """Our refusal (any kind: a 400, a 403 on mounts or privileged, a 503), naming the
    original's field (``args[2]`` -> ``arguments[2]``)."""
    head = re.match(r"[A-Za-z_]+", exc.field or "")
    if head is None or head[0] not in _ORIGINAL_FIELD:
        return exc
    return type(exc)(_ORIGINAL_FIELD[head[0]] + exc.field[head.end() :], exc.message)


@bp.post("/submit")
@rule("user")
@api(
    ORIGINAL + "submit a task (one per target)",
    request=OriginalSubmit,
    response=OriginalSubmitted,
    status=202,
    description="The original's TaskRequest, as POST /api/tasks (docs/api.md, Compatibility"
    " layer): unknown fields are ignored; a refusal names the original's field.",
)
async def submit(request: Request) -> HTTPResponse:
    """``POST /submit``: one task per target, as ``POST /api/tasks``; 202 ``{"message",
    "task_ids", "assigned_node"}`` as the original answered."""
    body = decode_body(_submit_decoder, request.body)
    try:
        batch_id, recorded = await record_submission(request, [_ours(body)])
    except DomainError as exc:
        raise _renamed(exc) from None
    state = control_plane(request).state
    tasks = [state.tasks[e.task_id] for e in recorded if e.task_id in state.tasks]
    placed = [t.node for t in tasks if t.node]
    node = state.nodes.get(placed[-1]) if placed else None
    return answer(
        {
            "message": f"Task batch submitted successfully. {len(recorded)} tasks created.",
            "task_ids": [str(e.number) for e in recorded],
            # The original's: the node of its last target. None while the task is queued.
            "assigned_node": None if node is None else {"hostname": node.name, "url": None},
            "batch_id": batch_id,
        },
        status=202,
    )


# -- tasks ------------------------------------------------------------------------------------


def _task(request: Request, ident: str) -> TaskView:
    cp = control_plane(request)
    return cp.state.tasks[task_id_of(cp, ident)]


def _task_document(request: Request, task: TaskView) -> dict[str, Any]:
    """A task as the original's ``GET /status/{id}`` answered it (plus ``number``, ``id``,
    ``owner`` and ``redacted``). Another user's task leaves out what only its owner sees,
    as our routes do."""
    private = may_see(request, task.spec.owner)
    spec = task.spec
    shared = control_plane(request).settings.shared_dir
    return {
        "task_id": str(task.number),
        "batch_id": spec.batch_id,
        "task_type": spec.task_type,
        "command": spec.command if private else "",
        "arguments": list(spec.args) if private else [],
        "env_vars": dict(spec.env) if private else {},
        "required_cores": task.cores if task.node else spec.cores,
        "required_gpus": list(task.gpu_ids or spec.gpu_ids),
        "required_memory_bytes": spec.memory_bytes,
        "status": task.state,
        "assigned_node": task.node,
        "target_numa_node_id": task.numa_id if task.node else spec.numa_id,
        # Where the output is on the shared folder (the original's scripts read it there).
        "stdout_path": str(log_path(shared, task.task_id, "stdout")) if private else None,
        "stderr_path": str(log_path(shared, task.task_id, "stderr")) if private else None,
        "exit_code": task.exit_code,
        "error_message": task.message or None,
        "submitted_at": iso(task.submitted_at_us or None),
        "started_at": iso(task.started_at_us),
        "completed_at": iso(task.finished_at_us),
        "systemd_unit_name": None,
        "assignment_suspicion_count": 0,
        "container_name": spec.container,
        "privileged": spec.privileged,
        "number": task.number,
        "id": task.task_id,
        "owner": spec.owner,
        "redacted": not private,
    }


@bp.get("/status/<ident:str>")
@rule("user")
@api(ORIGINAL + "one task", response=OriginalTask)
async def status(request: Request, ident: str) -> HTTPResponse:
    """``GET /status/{id}``: one task, as ``GET /api/tasks/{id}``."""
    return answer(_task_document(request, _task(request, ident)))


# The original listed every task on each call; here the newest 1000 (as GET /api/tasks),
# so no user can make the host build a document of every task ever submitted per call.
COMPAT_LIST_LIMIT = 1000


def _newest_first(tasks: Iterable[TaskView], task_type: str) -> list[TaskView]:
    return sorted(
        (t for t in tasks if t.spec.task_type == task_type),
        key=lambda t: (t.submitted_at_us, t.number),
        reverse=True,
    )


@bp.get("/tasks")
@page_too
@rule("user")
@api(
    ORIGINAL + "the command tasks, newest first",
    response=list[OriginalTask],
    query=(
        Query("limit", int, f"at most this many (default and most {COMPAT_LIST_LIMIT})"),
        Query("offset", int, "skip this many newest first"),
    ),
    description="Another user's tasks come redacted." + _PAGE_TOO,
)
async def list_tasks(request: Request) -> HTTPResponse:
    """``GET /tasks``: every command task, newest first (the original listed all; another
    user's come redacted, as ``GET /api/tasks?all_users=1``). A browser's navigation to
    ``/tasks`` gets the dashboard's page (access.wants_page)."""
    if wants_page(list_tasks, request.headers):
        return await page(request, "tasks")
    state = control_plane(request).state
    limit = query_int(request, "limit", minimum=1) or COMPAT_LIST_LIMIT
    if limit > COMPAT_LIST_LIMIT:
        raise InvalidRequest("limit", f"at most {COMPAT_LIST_LIMIT}; page with offset")
    offset = query_int(request, "offset") or 0
    tasks = _newest_first(state.tasks.values(), "command")[offset : offset + limit]
    return answer([_task_document(request, t) for t in tasks])


@bp.get("/vps/status")
@rule("user")
@api(ORIGINAL + "the active VPS tasks, newest first", response=list[OriginalVps])
async def vps_status(request: Request) -> HTTPResponse:
    """``GET /vps/status``: the VPS tasks still active, newest first (``ssh_port`` is null
    for another user's, as ``GET /api/tasks`` leaves it out)."""
    active = ("pending", "assigning", "running", "paused", "unknown")
    state = control_plane(request).state
    found = []
    for task in _newest_first(state.tasks.values(), "vps"):
        if task.state not in active:
            continue
        private = may_see(request, task.spec.owner)
        found.append(
            {
                "task_id": str(task.number),
                "status": task.state,
                "assigned_node": task.node,
                "target_numa_node_id": task.numa_id if task.node else task.spec.numa_id,
                "required_cores": task.cores if task.node else task.spec.cores,
                "required_gpus": list(task.gpu_ids or task.spec.gpu_ids),
                "required_memory_bytes": task.spec.memory_bytes,
                "submitted_at": iso(task.submitted_at_us or None),
                "started_at": iso(task.started_at_us),
                "ssh_port": task.ssh_port if private else None,
                "number": task.number,
                "id": task.task_id,
                "owner": task.spec.owner,
                "redacted": not private,
            }
        )
    return answer(found)


@bp.post("/kill/<ident:str>")
@rule("user")
@api(ORIGINAL + "kill a task", response=OriginalMessage, status=202)
async def kill(request: Request, ident: str) -> HTTPResponse:
    """``POST /kill/{id}``: as ``POST /api/tasks/{id}/kill`` (its owner or an admin)."""
    cp = control_plane(request)
    task = _task(request, ident)
    await cp.execute(KillTask(task_id=task.task_id, actor=principal_of(request)))
    return answer({"message": f"Kill requested for task {task.number}."}, status=202)


@bp.post("/command/<ident:str>/<command:str>")
@rule("user")
@api(
    ORIGINAL + "pause or resume a task",
    response=OriginalMessage,
    description="command: pause or resume (another: 400 naming command).",
)
async def command(request: Request, ident: str, command: str) -> HTTPResponse:
    """``POST /command/{id}/pause|resume``: as ``POST /api/tasks/{id}/pause|resume``."""
    if command not in ("pause", "resume"):
        raise InvalidRequest("command", f"{command[:40]!r}: pause or resume")
    cp = control_plane(request)
    task = _task(request, ident)
    resume = command == "resume"
    outcome = await cp.execute(
        PauseTask(task_id=task.task_id, actor=principal_of(request), resume=resume)
    )
    if not all(outcome.delivered):
        raise Conflict("task_id", f"cannot {command} now: node {task.node} is not connected")
    verb = "Resume" if resume else "Pause"
    return answer({"message": f"{verb} for task {task.number} sent to node {task.node}."})


async def _output(request: Request, ident: str, stream: Stream) -> HTTPResponse | None:
    """The task's whole output so far, as text (the original read the whole file); the
    caller must own the task or be an admin. Beyond one chunk it is streamed, so the host
    holds one chunk per request whatever the output's size."""
    task = _task(request, ident)
    check_may_act(request, task.spec.owner, f"the output of task {task.number}")
    path = log_path(control_plane(request).settings.shared_dir, task.task_id, stream)
    size = await asyncio.to_thread(log_size, path)
    kind = _TEXT
    if size <= MAX_CHUNK:
        data, _ = await asyncio.to_thread(read_from, path, 0, MAX_CHUNK)
        return HTTPResponse(data, content_type=kind)
    response = await request.respond(content_type=kind)
    position = 0
    while position < size:
        data, position = await asyncio.to_thread(
            read_from, path, position, min(MAX_CHUNK, size - position)
        )
        if not data:
            break
        await response.send(data)
    await response.eof()
    return None


@bp.get("/task/<ident:str>/stdout")
@rule("user")
@api(ORIGINAL + "a task's whole stdout so far", response=str, content_type=_TEXT)
async def stdout(request: Request, ident: str) -> HTTPResponse | None:
    """``GET /task/{id}/stdout``: as ``GET /api/tasks/{id}/stdout``, the whole of it."""
    return await _output(request, ident, "stdout")


@bp.get("/task/<ident:str>/stderr")
@rule("user")
@api(ORIGINAL + "a task's whole stderr so far", response=str, content_type=_TEXT)
async def stderr(request: Request, ident: str) -> HTTPResponse | None:
    """``GET /task/{id}/stderr``: as ``GET /api/tasks/{id}/stderr``, the whole of it."""
    return await _output(request, ident, "stderr")


# -- nodes and health ---------------------------------------------------------------------------


def _numa(node: NodeView) -> dict[str, Any] | None:
    """The original's ``numa_topology``: ``{"<id>": {"cores": [...], "memory_bytes": N}}``."""
    if not node.numa:
        return None
    return {str(n.id): {"cores": list(n.cpus), "memory_bytes": n.memory_bytes} for n in node.numa}


_MIB = 1 << 20


def _gpus(node: NodeView) -> list[dict[str, Any]]:
    """The original's ``gpu_info`` (its GPUInfo); what our agents do not measure is null."""
    usage = {u.id: u for u in node.gpu_usage}
    found = []
    for gpu in node.gpus:
        used = usage.get(gpu.id)
        used_bytes = used.memory_used_bytes if used is not None else 0
        found.append(
            {
                "gpu_id": gpu.id,
                "name": gpu.name,
                "driver_version": None,
                "pci_bus_id": None,
                "gpu_utilization": round(used.utilization_percent) if used is not None else None,
                "graphics_clock_mhz": None,
                "mem_utilization": None,
                "mem_clock_mhz": None,
                "memory_total_mib": gpu.memory_bytes / _MIB,
                "memory_used_mib": used_bytes / _MIB,
                "memory_free_mib": max(0, gpu.memory_bytes - used_bytes) / _MIB,
                "temperature": (
                    round(used.temperature_c)
                    if used is not None and used.temperature_c is not None
                    else None
                ),
                "fan_speed": None,
                "power_usage_mw": None,
                "power_limit_mw": None,
                "uuid": gpu.uuid,
            }
        )
    return found


def _nodes(request: Request) -> list[NodeView]:
    return sorted(control_plane(request).state.nodes.values(), key=lambda n: n.name)


@bp.get("/nodes")
@page_too
@rule("user")
@api(ORIGINAL + "every node", response=list[OriginalNode], description=_PAGE_TOO.strip())
async def list_nodes(request: Request) -> HTTPResponse:
    """``GET /nodes``: every node, as the original listed them (``GET /api/nodes`` has
    more). A browser's navigation to ``/nodes`` gets the dashboard's page."""
    if wants_page(list_nodes, request.headers):
        return await page(request, "nodes")
    found = []
    for node in _nodes(request):
        found.append(
            {
                "hostname": node.name,
                "url": None,  # our agents serve no HTTP: the host never calls them
                "total_cores": node.cores,
                "cores_in_use": node.allocated_cores if node.online else "N/A",
                "available_cores": node.free_cores if node.online else 0,
                "status": "online" if node.online else "offline",
                "last_heartbeat": iso(node.last_seen_us or None),
                "numa_topology": _numa(node),
                "gpu_info": _gpus(node),
            }
        )
    return answer(found)


def _health(node: NodeView) -> dict[str, Any]:
    temperatures = list(node.temperatures.values())
    return {
        "hostname": node.name,
        "status": "online" if node.online else "offline",
        "last_heartbeat": iso(node.last_seen_us or None),
        "cpu_percent": node.cpu_percent,
        "memory_percent": node.memory_percent,
        "memory_used_bytes": node.memory_used_bytes,
        "memory_total_bytes": node.memory_bytes,
        "total_cores": node.cores,
        "numa_topology": _numa(node),
        "current_avg_temp": sum(temperatures) / len(temperatures) if temperatures else None,
        "current_max_temp": max(temperatures) if temperatures else None,
        "gpu_info": _gpus(node),
    }


def _aggregate(nodes: list[NodeView], healths: list[dict[str, Any]]) -> dict[str, Any]:
    """The original's cluster aggregate (its names, camel case and all)."""
    cores = sum(n.cores for n in nodes)
    memory = sum(n.memory_bytes for n in nodes)
    used = sum(n.memory_used_bytes for n in nodes)
    avg_temps = [h["current_avg_temp"] for h in healths if h["current_avg_temp"] is not None]
    max_temps = [h["current_max_temp"] for h in healths if h["current_max_temp"] is not None]
    seen = [h["last_heartbeat"] for h in healths if h["last_heartbeat"]]
    return {
        "totalNodes": len(nodes),
        "onlineNodes": sum(1 for n in nodes if n.online),
        "totalCores": cores,
        "totalMemBytes": memory,
        "usedMemBytes": used,
        # Weighted by cores, as the original did.
        "avgCpuPercent": sum(n.cpu_percent * n.cores for n in nodes) / max(1, cores),
        "avgMemPercent": used / max(1, memory) * 100,
        "maxAvgCpuTemp": max(avg_temps, default=0),
        "maxMaxCpuTemp": max(max_temps, default=0),
        "lastUpdated": max(seen, default=None),
    }


@bp.get("/health")
@rule("user")
@api(
    ORIGINAL + "the nodes' latest heartbeat data and the cluster's aggregate",
    response=OriginalHealth | list[OriginalNodeHealth],
    query=(Query("hostname", str, "this node's entry alone, as [entry] (404 if unknown)"),),
)
async def health(request: Request) -> HTTPResponse:
    """``GET /health[?hostname=H]``: the nodes' latest heartbeat data and the cluster's
    aggregate, in the original's shape. The original kept a minute of history, one entry a
    second; this answers the latest only (a history of one): ``GET /api/usage`` has the
    history. ``hostname``: that node's entry alone, as ``[entry]`` (404 naming it if
    unknown; the original's filter never matched and answered everything)."""
    nodes = _nodes(request)
    hostname = request.args.get("hostname")
    if hostname:
        for node in nodes:
            if node.name == hostname:
                return answer([_health(node)])
        raise NotFound("hostname", f"no node {hostname[:80]!r}")
    healths = [_health(n) for n in nodes]
    return answer({"nodes": [healths], "aggregate": [_aggregate(nodes, healths)]})
