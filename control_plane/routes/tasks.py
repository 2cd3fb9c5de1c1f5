"""``/api/tasks`` and ``/api/batches``: submit, read, control, task output, and the shell
into a VPS task (``WS /api/tasks/<id>/shell?rows=&cols=&term=``, control_plane/vps_shells.py:
the environment shells' frame protocol)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sanic import Request
from sanic.response import HTTPResponse

from control_plane import vps_shells
from control_plane.access import rule
from control_plane.commands import KillTask, OpenSshSession, PauseTask, SubmitTasks
from control_plane.env_default import DefaultEnvironment
from control_plane.errors import Conflict, DomainError, InvalidRequest, NotFound
from control_plane.hub import ControlPlane
from control_plane.logs import (
    MAX_TAIL_BYTES,
    MAX_TAIL_LINES,
    Stream,
    log_path,
    log_size,
    read_from,
    read_tail,
)
from control_plane.openapi import Query, api, flag, shape
from control_plane.requests import (
    SubmitBatch,
    SubmitTask,
    decode_batch,
    decode_submit,
)
from control_plane.routes.common import (
    JsonBlueprint,
    answer,
    check_may_act,
    control_plane,
    json_object,
    may_see,
    principal_of,
    query_int,
    task_id_of,
)
from control_plane.views import TaskOut
from events.config import is_no_container
from events.ids import new_id
from events.types import TaskSubmitted
from projections.task_query import SORT_KEYS, TaskQuery, select_tasks
from projections.tasks import ENDED_STATES, STATES, TaskView

bp = JsonBlueprint("tasks", url_prefix="/api")
T = TypeVar("T")

# The answers this module writes as dicts, for the OpenAPI document (control_plane/openapi.py).
Submitted = shape("Submitted", batch_id=str, task_ids=list[str], numbers=list[int])
BatchOut = shape("BatchOut", batch_id=str, tasks=list[TaskOut])
TaskPage = shape(
    "TaskPage",
    tasks=list[TaskOut],
    total=int,
    offset=int,
    next_offset=int | None,
    upto=int | None,
)
TaskAccepted = shape("TaskAccepted", task_id=str, number=int, state=str)
_OUTPUT_QUERY = (
    Query("offset", int, "read from this byte (X-Next-Offset of the last answer gives it)"),
    Query("tail", int, "the last lines only (not with offset)"),
    flag("follow", "keep answering the output as it grows, until the task ends"),
)


async def record_submission(
    request: Request, requests: list[SubmitTask]
) -> tuple[str, list[TaskSubmitted]]:
    """Record ``requests`` as one batch through the command boundary: the batch id and the
    ``task.submitted`` events (the original API's ``POST /submit`` records through it too,
    routes/compat.py)."""
    cp = control_plane(request)
    docker = cp.settings.docker
    default: DefaultEnvironment = request.app.ctx.default_environment
    if any(r.container is None for r in requests) and not is_no_container(
        docker.default_container_name
    ):
        problem = await default.ready()
        if problem is not None:
            raise InvalidRequest("container", f"no --container given, and {problem}")
    batch_id = new_id()
    outcome = await cp.execute(
        SubmitTasks(requests=tuple(requests), batch_id=batch_id, actor=principal_of(request))
    )
    return batch_id, list(outcome.decision.submitted)


async def _submit(request: Request, requests: list[SubmitTask]) -> HTTPResponse:
    batch_id, recorded = await record_submission(request, requests)
    return answer(
        {
            "batch_id": batch_id,
            "task_ids": [e.task_id for e in recorded],
            "numbers": [e.number for e in recorded],
        },
        status=201,
    )


@bp.post("/tasks")
@rule("user")
@api("Submit a task (one per target)", request=SubmitTask, response=Submitted, status=201)
async def submit(request: Request) -> HTTPResponse:
    """One ``task.submitted`` per target, tied by a batch id."""
    return await _submit(request, [decode_submit(request.body)])


@bp.post("/batches")
@rule("user")
@api("Submit several tasks as one batch", request=SubmitBatch, response=Submitted, status=201)
async def submit_batch(request: Request) -> HTTPResponse:
    """Several submit requests as one batch: every task recorded, or none."""
    return await _submit(request, decode_batch(request.body).tasks)


@bp.get("/batches/<batch_id:str>")
@rule("user")
@api("The tasks of one batch", response=BatchOut)
async def get_batch(request: Request, batch_id: str) -> HTTPResponse:
    """The tasks of one batch, in submission order."""
    tasks = [t for t in control_plane(request).state.tasks.values() if t.spec.batch_id == batch_id]
    if not tasks:
        raise NotFound("batch_id", f"no batch {batch_id!r}")
    return answer(
        {
            "batch_id": batch_id,
            "tasks": [TaskOut.of(t, may_see(request, t.spec.owner)) for t in tasks],
        }
    )


@bp.get("/tasks")
@rule("user")
@api(
    "List tasks, filtered, sorted and paged",
    response=TaskPage,
    query=(
        Query("status", str, "task states, comma-separated or repeated", repeated=True),
        Query("node", str, "tasks on this node"),
        Query("batch", str, "tasks of this batch"),
        Query("owner", str, "this user's tasks"),
        flag("all_users", "every user's tasks (others' redacted unless an admin)"),
        Query("name", str, "tasks whose name contains this"),
        Query("q", str, "tasks whose command, name or id contains this"),
        Query("sort", str, "the sort key (projections/task_query.py SORT_KEYS)"),
        Query("order", str, "asc or desc (default)"),
        Query("upto", int, "only tasks numbered up to this (the first page's upto)"),
        Query("offset", int, "skip this many"),
        Query("limit", int, "at most this many (default 1000)"),
    ),
)
async def list_tasks(request: Request) -> HTTPResponse:
    """The caller's tasks (``all_users=1``: everyone's; ``owner=U``: U's) filtered by status,
    node, batch, name and text (``q``), sorted (``sort``, ``order``: newest first by
    default) and paged (``offset``, ``limit``). Other users' tasks come redacted
    (``TaskOut.redacted``) unless the caller is an admin."""
    query = _task_query(request)
    state = control_plane(request).state
    if query.upto is None:
        query = dataclasses.replace(query, upto=state.last_number)
    page = select_tasks(state.tasks.values(), query, lambda owner: may_see(request, owner))
    following = query.offset + len(page.tasks)
    return answer(
        {
            "tasks": [TaskOut.of(t, may_see(request, t.spec.owner)) for t in page.tasks],
            "total": page.total,
            "offset": query.offset,
            "next_offset": following if following < page.total else None,
            # Pass it back with the next pages: tasks submitted meanwhile stay out of the
            # walk (they would shift every later page by as many rows).
            "upto": query.upto,
        }
    )


MAX_SEARCH = 200


def _task_query(request: Request) -> TaskQuery:
    """The list's query from the request's arguments (``InvalidRequest`` naming the one at
    fault)."""
    wanted: set[str] = set()
    for raw in request.args.getlist("status", []):
        wanted.update(s.strip() for s in raw.split(",") if s.strip())
    unknown = sorted(wanted - set(STATES))
    if unknown:
        raise InvalidRequest("status", f"unknown state {unknown[0]!r}; one of {', '.join(STATES)}")
    batch = request.args.get("batch")
    owner = request.args.get("owner") or None
    all_users = request.args.get("all_users", "0").lower() in ("1", "true", "yes")
    if owner is None and batch is None and not all_users:
        owner = principal_of(request).user
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order", "must be asc or desc")
    sort = request.args.get("sort", "number")
    if sort not in SORT_KEYS:
        raise InvalidRequest(
            "sort", f"unknown sort key {sort[:40]!r}; one of {', '.join(SORT_KEYS)}"
        )
    texts = {}
    for field in ("name", "q"):
        value = request.args.get(field) or None
        if value is not None and len(value) > MAX_SEARCH:
            raise InvalidRequest(field, f"at most {MAX_SEARCH} characters, got {len(value)}")
        texts[field] = value
    return TaskQuery(
        upto=query_int(request, "upto"),
        states=frozenset(wanted),
        node=request.args.get("node") or None,
        batch=batch,
        owner=owner,
        name=texts["name"],
        text=texts["q"],
        sort=sort,
        descending=order == "desc",
        offset=query_int(request, "offset") or 0,
        limit=query_int(request, "limit", minimum=1) or 1000,
    )


def _task(cp: ControlPlane, ident: str) -> TaskView:
    return cp.state.tasks[task_id_of(cp, ident)]


# The longest ``GET /api/tasks/<id>?wait=`` holds a request (seconds).
MAX_TASK_WAIT_S = 60


@bp.get("/tasks/<ident:str>")
@rule("user")
@api(
    "One task",
    response=TaskOut,
    query=(
        Query(
            "wait",
            int,
            f"seconds (at most {MAX_TASK_WAIT_S}) to wait for the task to end: answered at"
            " its end, or as it is when they are up",
        ),
    ),
)
async def get_task(request: Request, ident: str) -> HTTPResponse:
    """One task in detail (redacted for a caller who is neither its owner nor an admin);
    with ``wait``, once it has ended (or the wait is up): a client waits for a task's end
    without polling (issue 19)."""
    cp = control_plane(request)
    task = _task(cp, ident)
    wait = query_int(request, "wait") or 0
    if wait > MAX_TASK_WAIT_S:
        raise InvalidRequest("wait", f"must be at most {MAX_TASK_WAIT_S} seconds, got {wait}")
    if wait and task.state not in ENDED_STATES:
        task = await _until_ended(request, cp, task.task_id, wait)
    return answer(TaskOut.of(task, may_see(request, task.spec.owner)))


async def _until_ended(request: Request, cp: ControlPlane, task_id: str, wait: float) -> TaskView:
    """The task once it has ended, or as it is after ``wait`` seconds (or at shutdown).

    Woken by each commit (the history service's signal; the state includes the commit
    when a waiter runs), it reads the in-memory state only: no log read per wake-up.
    """
    history = getattr(request.app.ctx, "history", None)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    task = cp.state.tasks[task_id]
    while task.state not in ENDED_STATES and history is not None:
        left = deadline - loop.time()
        if left <= 0 or not await history.wait_beyond(cp.last_seq, left):
            break
        task = cp.state.tasks.get(task_id) or task  # (an ended task may be archived)
    return task


def _reason(request: Request) -> str:
    """Why the caller asks (kill). Who asks is the authenticated caller, never the body:
    a ``requested_by`` in it is ignored (clients written before authentication send one)."""
    body = json_object(request) if request.body else {}
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise InvalidRequest("reason", "must be a string")
    if len(reason) > 1000:
        raise InvalidRequest("reason", "at most 1000 characters")
    return reason


@bp.post("/tasks/<ident:str>/kill")
@rule("user")
@api("Kill a task", response=TaskAccepted, status=202)
async def kill(request: Request, ident: str) -> HTTPResponse:
    """Kill a task: at once while queued, through its node's agent otherwise."""
    cp = control_plane(request)
    reason = _reason(request)
    task = _task(cp, ident)
    await cp.execute(KillTask(task_id=task.task_id, actor=principal_of(request), reason=reason))
    return answer({"task_id": task.task_id, "number": task.number, "state": task.state}, status=202)


async def _pause_or_resume(request: Request, ident: str, resume: bool) -> HTTPResponse:
    cp = control_plane(request)
    _reason(request)
    task = _task(cp, ident)
    outcome = await cp.execute(
        PauseTask(task_id=task.task_id, actor=principal_of(request), resume=resume)
    )
    if not all(outcome.delivered):
        verb = "resume" if resume else "pause"
        raise Conflict("task_id", f"cannot {verb} now: node {task.node} is not connected")
    return answer({"task_id": task.task_id, "number": task.number, "state": task.state}, status=202)


@bp.post("/tasks/<ident:str>/pause")
@rule("user")
@api("Pause a running task", response=TaskAccepted, status=202)
async def pause(request: Request, ident: str) -> HTTPResponse:
    """Freeze a running task (SIGSTOP / docker pause on its node)."""
    return await _pause_or_resume(request, ident, resume=False)


@bp.post("/tasks/<ident:str>/resume")
@rule("user")
@api("Resume a paused task", response=TaskAccepted, status=202)
async def resume(request: Request, ident: str) -> HTTPResponse:
    """Continue a paused task."""
    return await _pause_or_resume(request, ident, resume=True)


async def _output(request: Request, ident: str, stream: Stream) -> HTTPResponse | None:
    cp = control_plane(request)
    task = _task(cp, ident)
    check_may_act(request, task.spec.owner, f"the output of task {task.number}")
    offset = query_int(request, "offset")
    tail = query_int(request, "tail")
    follow = request.args.get("follow", "0").lower() in ("1", "true", "yes")
    if offset is not None and tail is not None:
        raise InvalidRequest("tail", "give offset or tail, not both")
    if tail is not None and tail > MAX_TAIL_LINES:
        raise InvalidRequest(
            "tail",
            f"at most {MAX_TAIL_LINES} lines, got {tail}; read the whole output with offset"
            " (in chunks of up to 8 MiB, X-Next-Offset gives the next)",
        )
    path = log_path(cp.settings.shared_dir, task.task_id, stream)
    headers: dict[str, str] = {}
    if tail is not None:
        found = await _unless_gone(lambda stop: read_tail(path, tail, stop=stop))
        data, position = found.data, found.size
        if found.clamped:
            headers["X-Tail-Clamped"] = str(MAX_TAIL_BYTES)
    else:
        if offset:
            size = await asyncio.to_thread(log_size, path)
            if offset > size:
                raise InvalidRequest(
                    "offset", f"{offset} is past the end of the output ({size} bytes so far)"
                )
        data, position = await asyncio.to_thread(read_from, path, offset or 0)
    headers["X-Next-Offset"] = str(position)
    if not follow:
        return HTTPResponse(data, content_type="text/plain; charset=utf-8", headers=headers)
    response = await request.respond(content_type="text/plain; charset=utf-8", headers=headers)
    # Sent even when empty: the headers go out now, so a client knows it is following
    # a task that has printed nothing yet.
    await response.send(data, end_stream=False)
    stopping: asyncio.Event = request.app.ctx.stopping
    # A client that leaves cancels this handler (Sanic), which ends the loop; a stopping
    # host ends it too, so that the graceful shutdown does not wait on followers.
    while not stopping.is_set():
        ended = cp.state.tasks[task.task_id].state in ENDED_STATES
        data, position = await asyncio.to_thread(read_from, path, position)
        if data:
            await response.send(data)
            continue
        if ended:
            break
        await cp.changed(within_s=0.2)
    await response.eof()
    return None


async def _unless_gone(read: Callable[[threading.Event], T]) -> T:
    """``read(stop)`` on a thread; ``stop`` is set if the request is cancelled meanwhile
    (its client left, the host stops), so that the thread ends at its next block."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(read, stop)
    except asyncio.CancelledError:
        stop.set()
        raise


@bp.get("/tasks/<ident:str>/stdout")
@rule("user")
@api(
    "A task's standard output",
    response=str,
    content_type="text/plain; charset=utf-8",
    query=_OUTPUT_QUERY,
)
async def stdout(request: Request, ident: str) -> HTTPResponse | None:
    """The task's standard output (``offset``, ``tail``, ``follow``)."""
    return await _output(request, ident, "stdout")


@bp.get("/tasks/<ident:str>/stderr")
@rule("user")
@api(
    "A task's standard error",
    response=str,
    content_type="text/plain; charset=utf-8",
    query=_OUTPUT_QUERY,
)
async def stderr(request: Request, ident: str) -> HTTPResponse | None:
    """The task's standard error (``offset``, ``tail``, ``follow``)."""
    return await _output(request, ident, "stderr")


_TERM = re.compile(r"[A-Za-z0-9._+-]{1,64}")


def _terminal(request: Request) -> tuple[int, int, str]:
    """The shell's ``rows``, ``cols`` and ``term`` from the query (``InvalidRequest``)."""
    size = []
    for name, default in (("rows", 24), ("cols", 80)):
        value = query_int(request, name, minimum=1)
        if value is not None and value > 1000:
            raise InvalidRequest(name, f"at most 1000, got {value}")
        size.append(default if value is None else value)
    term = request.args.get("term", "xterm")
    if not _TERM.fullmatch(term):
        raise InvalidRequest("term", "a terminal type: letters, digits and ._+- (64 at most)")
    return size[0], size[1], term


@bp.websocket("/tasks/<ident:str>/shell")  # type: ignore[untyped-decorator]
@rule("user")
@api(
    "A terminal in a VPS task's container",
    query=(
        Query("rows", int, "terminal rows (default 24)"),
        Query("cols", int, "terminal columns (default 80)"),
        Query("term", str, "terminal type (default xterm)"),
        Query("csrf", str, "a dashboard session's key (websockets cannot send headers)"),
    ),
    description="Binary terminal bytes both ways; JSON resize frames from the client,"
    " exit or error frames from the host (docs/vps.md).",
)
async def vps_shell(request: Request, ws: Any, ident: str) -> None:
    """``hakuriver vps shell``: a terminal in a VPS task's container, through its node's
    agent (binary terminal bytes both ways; JSON ``resize`` from the client, ``exit`` or
    ``error`` from the host)."""
    try:
        rows, cols, term = _terminal(request)
    except DomainError as exc:
        frame = {"type": "error", "status": exc.status, "field": exc.field, "message": exc.message}
        await ws.send(json.dumps(frame))
        await ws.close()
        return
    command = OpenSshSession(
        task=ident,
        actor=principal_of(request),
        session_id=new_id(),
        via="shell",
        client_address=request.ip or "",
        rows=rows,
        cols=cols,
        term=term,
    )
    await vps_shells.relay(control_plane(request), ws, command)
