"""History routes: the live feed, timelines, time travel, audit, SQL, reports, exports.

Each route reads its parameters into a ``replay_tools.queries`` question and has
``replay_tools.history.History`` answer it, over a cursor of the store on the history
service's threads (``control_plane.history``), never on the event loop: the same code
answers the CLI's ``--db`` mode. docs/history.md is the reference for each route.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

import msgspec
from sanic import Request, Sanic
from sanic.exceptions import ServiceUnavailable
from sanic.response import HTTPResponse

from control_plane.access import Principal, rule
from control_plane.errors import InvalidRequest
from control_plane.history import (
    Cursor,
    HistoryClosed,
    HistoryService,
    SqlLimits,
    StateOut,
    state_document,
)
from control_plane.hub import ControlPlane
from control_plane.openapi import Query, api, shape
from control_plane.routes.common import (
    JsonBlueprint,
    answer,
    check_may_act,
    control_plane,
    json_object,
    principal_of,
    query_int,
    task_id_of,
)
from control_plane.streams import StreamSlots
from events.envelope import now_us
from events.ids import is_job_id
from projections.cluster import ClusterState
from replay_tools.analytics import DEFAULT_MAX_ROWS
from replay_tools.audit import AuditReport
from replay_tools.feed import EventDoc, EventFilter
from replay_tools.history import FeedPage
from replay_tools.queries import (
    EventQuery,
    diff_points,
    event_filter,
    export_query,
    page_size,
    point_of,
    report_query,
    sql_query,
)
from replay_tools.replay import StateDiff
from replay_tools.timeline import PlacementExplanation, explain_placement
from replay_tools.usage import Usage, usage_window

bp = JsonBlueprint("history", url_prefix="/api")
T = TypeVar("T")

# The answers this module writes as dicts, for the OpenAPI document (control_plane/openapi.py).
# A task's or a job's timeline (replay_tools/timeline.py task_history, job_history): who it
# is, and its events with the time between them.
Timeline = shape(
    "Timeline",
    task_id=str | None,
    job_id=str | None,
    number=int | None,
    state=str | None,
    node=str | None,
    events=list[dict[str, Any]],
)
# SQL answers and reports (replay_tools/analytics.py table_document).
Table = shape("Table", columns=list[str], rows=list[list[Any]])
SqlRequest = msgspec.defstruct(
    "SqlRequest", [("sql", str), ("max_rows", int, DEFAULT_MAX_ROWS)], kw_only=True
)
_FILTER_QUERY = (
    Query("kind", str, "event kinds (task.submitted, task.*)", repeated=True),
    Query("exclude", str, "event kinds to leave out", repeated=True),
    Query("task", str, "one task's events (its number, id or a unique prefix)"),
    Query("node", str, "one node's events"),
    Query("source", str, "events from this source"),
    Query("actor", str, "events caused by this user"),
    Query("since", str, "from this seq or time (RFC 3339, or 2h ago)"),
    Query("until", str, "up to this seq or time"),
)
_STREAM_QUERY = (
    Query("after", int, "resume after this seq (or the Last-Event-ID header)"),
    Query("keepalive", int, "seconds between keep-alive comments"),
    Query("csrf", str, "a dashboard session's key (event streams cannot send headers)"),
)

log = logging.getLogger("hakuriver.host.history")

STREAM_PAGE = 1000
# How far back a change feed replays for a page that was away (events).
CHANGES_REPLAY = 10_000
_encode = msgspec.json.Encoder().encode


async def _start_history(app: Sanic) -> None:  # type: ignore[type-arg]
    cp: ControlPlane = app.ctx.cp
    database = cp.settings.database
    limits = SqlLimits(
        slots=database.sql_slots, timeout_s=database.sql_timeout, memory=database.sql_memory
    )
    service = HistoryService(cp.store, sql=limits)
    await service.start()
    app.ctx.history = service


# After the app's own ``before_server_start`` (priority 0) opened the control plane, and
# before the server answers anything: no request ever finds history unready.
bp.listener(_start_history, "before_server_start", priority=-10)


@bp.before_server_stop
async def _stop_history(app: Sanic) -> None:  # type: ignore[type-arg]
    service: HistoryService | None = getattr(app.ctx, "history", None)
    if service is not None:
        await service.close()


def _history(request: Request) -> HistoryService:
    service: HistoryService | None = getattr(request.app.ctx, "history", None)
    if service is None or service.closing.is_set():
        raise ServiceUnavailable(
            "history is not available: the control plane is starting or stopping"
        )
    return service


async def _read(request: Request, work: Callable[[Cursor], T]) -> T:
    """``work(cursor)`` on a history thread; 503 if the service closes meanwhile."""
    try:
        return await _history(request).run(work)
    except HistoryClosed:
        raise ServiceUnavailable("the control plane is stopping") from None


# -- query parameters ---------------------------------------------------------------------


class _LiveNames:
    """Tasks and nodes as the host knows them now (``replay_tools.queries.Names``)."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def task_id(self, ident: str, field: str) -> str:
        return task_id_of(self.cp, ident, field)

    def has_node(self, name: str) -> bool:
        return name in self.cp.state.nodes


def _filter(request: Request, cp: ControlPlane) -> EventFilter:
    query = EventQuery(
        kinds=tuple(request.args.getlist("kind", [])),
        exclude=tuple(request.args.getlist("exclude", [])),
        task=request.args.get("task"),
        node=request.args.get("node"),
        source=request.args.get("source"),
        actor=request.args.get("actor"),
        since=request.args.get("since"),
        until=request.args.get("until"),
    )
    return event_filter(query, _LiveNames(cp))


def _ended(request: Request) -> bool:
    tasks: str = request.args.get("tasks", "active")
    if tasks not in ("active", "all"):
        raise InvalidRequest("tasks", f"must be active or all, got {tasks!r}")
    return tasks == "all"


# -- the feed -----------------------------------------------------------------------------


@bp.get("/events")
@rule("admin")
@api(
    "A page of events, filtered",
    response=FeedPage,
    query=(
        *_FILTER_QUERY,
        Query("after", int, "events after this seq (next_after of the last page)"),
        Query("limit", int, "at most this many (default 1000)"),
        Query("tail", int, "the last this many instead"),
    ),
)
async def list_events(request: Request) -> HTTPResponse:
    """A page of events after ``after``, filtered; ``next_after`` continues it."""
    cp = control_plane(request)
    flt = _filter(request, cp)
    after = query_int(request, "after") or 0
    tail = query_int(request, "tail", minimum=1)
    limit = page_size(tail or query_int(request, "limit", minimum=1) or 1000, tail=bool(tail))
    service, upto = _history(request), cp.last_seq
    page = await _read(
        request,
        lambda cur: service.history(cur).events(
            flt, after=after, limit=limit, tail=bool(tail), upto=upto
        ),
    )
    return answer(page)


@bp.get("/events/<seq:int>")
@rule("admin")
@api("One event by its seq", response=EventDoc)
async def get_event(request: Request, seq: int) -> HTTPResponse:
    """One event by its seq."""
    service = _history(request)
    return answer(await _read(request, lambda cur: service.history(cur).event(seq)))


def _resume_after(request: Request) -> int:
    header = request.headers.get("last-event-id")
    if header is not None and header.strip():
        try:
            value = int(header)
        except ValueError:
            raise InvalidRequest("Last-Event-ID", f"must be a seq, got {header!r}") from None
        if value < 0:
            raise InvalidRequest("Last-Event-ID", f"must be at least 0, got {value}")
        return value
    return query_int(request, "after") or 0


@bp.get("/events/stream")
@rule("admin")
@api(
    "Events as they are recorded (server-sent events)",
    response=str,
    content_type="text/event-stream",
    query=(*_FILTER_QUERY, *_STREAM_QUERY),
    description="id: is the seq, data: the event document (as GET /api/events/{seq}).",
)
async def stream_events(request: Request) -> None:
    """Server-sent events (``id:`` = seq) after ``Last-Event-ID`` or ``after``, filtered."""
    flt = _filter(request, control_plane(request))
    if flt.until_seq is not None or flt.until_us is not None:
        raise InvalidRequest("until", "a stream has no end; read a range with GET /api/events")
    position = _resume_after(request)

    def render(page: FeedPage) -> str:
        return "".join(f"id: {e.seq}\ndata: {_encode(e).decode()}\n\n" for e in page.events)

    await _serve_stream(request, flt, position, f": events after seq {position}", render)


@bp.get("/events/changes")
@rule("user")
@api(
    "Change notices for the dashboard (server-sent events)",
    response=str,
    content_type="text/event-stream",
    query=_STREAM_QUERY,
    description="data: {seq, kind, stream} of each event the caller may see, never a payload.",
)
async def stream_changes(request: Request) -> None:
    """Server-sent change notices for the dashboard: ``id:`` = seq, ``data:`` = the seq,
    kind and stream of each event the caller may see (an admin: all; a user: the tasks'
    and nodes' events, whose metadata every user sees, and their own jobs'), never a
    payload: the page reads what changed from the API, which decides what the caller may
    see of it."""
    cp = control_plane(request)
    principal = principal_of(request)
    given = request.headers.get("last-event-id") or request.args.get("after")
    position = _resume_after(request) if given else cp.last_seq  # default: from now on
    # A page catches up on what it missed while away, a little: further back, it is told
    # to read everything again ("resync") rather than make the host read the whole log.
    oldest = max(0, cp.last_seq - CHANGES_REPLAY)
    resync = ""
    if position < oldest:
        position = oldest
        resync = "data: " + _encode({"seq": oldest, "kind": "resync", "stream": ""}).decode()
        resync += "\n\n"

    def render(page: FeedPage) -> str:
        text = "".join(
            "data: " + _encode({"seq": e.seq, "kind": e.kind, "stream": e.stream}).decode() + "\n\n"
            for e in page.events
            if _may_see_stream(cp.state, principal, e.stream)
        )
        # The id moves the client's resume point past what it was not shown.
        return f"{text}id: {page.next_after}\n\n" if text else ""

    opening = f"{resync}id: {position}\n: changes after seq {position}"
    await _serve_stream(request, EventFilter(), position, opening, render)


async def _serve_stream(
    request: Request,
    flt: EventFilter,
    position: int,
    opening: str,
    render: Callable[[FeedPage], str],
) -> None:
    """Serve the log after ``position`` as server-sent events until the client leaves or
    the host stops: each page read is sent as ``render`` writes it (nothing: skipped),
    and a keep-alive moves the client's resume point when nothing is new."""
    cp = control_plane(request)
    service = _history(request)
    keepalive = _keepalive(request)
    recheck: Callable[[Request], bool] = request.app.ctx.recheck
    client = f"{principal_of(request).user}@{request.remote_addr or request.ip}"
    with _stream_slots(request).hold(client):  # 429 past the client's share (streams.py)
        response = await request.respond(
            content_type="text/event-stream; charset=utf-8",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        stall_s = cp.settings.network.event_stream_stall_s
        send = functools.partial(_send_within, request, response, stall_s)
        if not await send(f"retry: 1000\n{opening}\n\n"):
            return
        while not service.closing.is_set():
            if not recheck(request):
                break  # its token revoked, its user disabled or demoted, its session ended
            upto = cp.last_seq
            if upto > position:
                try:
                    page = await _read(request, _page_reader(service, flt, position, upto))
                except ServiceUnavailable:
                    break  # shutting down: end the stream cleanly; the client resumes later
                text = render(page)
                if text and not await send(text):
                    return
                position = page.next_after
                continue
            # A comment keeps proxies from timing out; the id moves the client's resume
            # point past the events its filter skipped.
            if not await service.wait_beyond(position, keepalive) and not await send(
                f"id: {position}\n: keep-alive\n\n"
            ):
                return
        await response.eof()


def _may_see_stream(state: ClusterState, principal: Principal, stream: str) -> bool:
    """Whether a change notice of ``stream`` may go to ``principal`` (/events/changes)."""
    if principal.is_admin:
        return True
    family, _, key = stream.partition(":")
    if family in ("node", "task"):
        # Every user sees every task's metadata (its id, state, node: GET /api/tasks);
        # a notice says no more than that a task changed.
        return True
    if family == "job":
        job = state.jobs.get(key)
        return job is not None and job.owner == principal.user
    return False


def _stream_slots(request: Request) -> StreamSlots:
    slots: StreamSlots | None = getattr(request.app.ctx, "stream_slots", None)
    if slots is None:
        network = control_plane(request).settings.network
        slots = StreamSlots(network.event_streams_per_client, network.event_streams_total)
        request.app.ctx.stream_slots = slots
    return slots


async def _send_within(request: Request, response: Any, stall_s: float, data: str) -> bool:
    """Write to a stream; False if the subscriber had not read for ``stall_s`` (then its
    connection is dropped: nothing is buffered for it)."""
    try:
        await asyncio.wait_for(response.send(data), stall_s)
    except TimeoutError:
        log.info("dropped an event stream subscriber that stopped reading (%ss)", stall_s)
        cast(asyncio.Transport, request.transport).abort()
        return False
    return True


def _page_reader(
    service: HistoryService, flt: EventFilter, after: int, upto: int
) -> Callable[[Cursor], FeedPage]:
    return lambda cur: service.history(cur).events(flt, after=after, limit=STREAM_PAGE, upto=upto)


def _keepalive(request: Request) -> float:
    raw = request.args.get("keepalive", "15")
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest("keepalive", f"must be a number of seconds, got {raw!r}") from None
    if not 0.05 <= value <= 300:
        raise InvalidRequest("keepalive", f"must be between 0.05 and 300 seconds, got {value}")
    return value


# -- tasks --------------------------------------------------------------------------------


@bp.get("/tasks/<ident:str>/history")
@rule("user")
@api("A task's (or a job's) timeline", response=Timeline)
async def get_task_history(request: Request, ident: str) -> HTTPResponse:
    """Every event of a task, with the time between them; for a job's id, the job's
    timeline (its events and its ranks' key ones)."""
    cp = control_plane(request)
    service = _history(request)
    job = cp.state.jobs.get(ident) if is_job_id(ident) else None
    if job is not None:  # job ids are exact: one never reads as a task prefix here
        check_may_act(request, job.owner, f"job {ident}")
        return answer(await _read(request, lambda cur: service.history(cur).job_history(ident)))
    task_id = task_id_of(cp, ident)
    _check_task(request, cp, task_id)
    return answer(await _read(request, lambda cur: service.history(cur).task_history(task_id)))


@bp.get("/tasks/<ident:str>/why")
@rule("user")
@api("Where a task was placed and why", response=PlacementExplanation)
async def get_task_why(request: Request, ident: str) -> HTTPResponse:
    """Where the task was placed and why, and why the other nodes were not chosen."""
    cp = control_plane(request)
    service = _history(request)
    task_id = task_id_of(cp, ident)
    _check_task(request, cp, task_id)
    records = await _read(request, lambda cur: service.history(cur).task_events(task_id))
    # On the loop: it reads the live state (the nodes, for a task still pending), which
    # the --db mode (History.why) folds from the log.
    return answer(explain_placement(records, cp.state))


def _check_task(request: Request, cp: ControlPlane, task_id: str) -> None:
    task = cp.state.tasks[task_id]
    check_may_act(request, task.spec.owner, f"task {task.number}")


# -- time travel --------------------------------------------------------------------------


@bp.get("/state")
@rule("admin")
@api(
    "The cluster now, or at a point of its history",
    response=StateOut,
    query=(
        Query("at", str, "a seq or a time (default: now)"),
        Query("tasks", str, "active (default) or all"),
    ),
)
async def get_state(request: Request) -> HTTPResponse:
    """The cluster now (with its seq), or at ``at`` (a seq or a time) as it was then."""
    cp = control_plane(request)
    service = _history(request)
    ended = _ended(request)
    at = point_of("at", request.args.get("at"))
    if at is None:
        # Taken on the loop, between two commits: the state and its seq match.
        if not ended:
            return answer(state_document(cp.state, ended=False))
        data = cp.state.snapshot()  # the whole state: serialised off the loop from a copy
        return _json(
            await _read(
                request, lambda _: _encode(state_document(ClusterState.restore(data), ended=True))
            )
        )

    def travel(cur: Any) -> bytes:
        return _encode(state_document(service.history(cur).state(at, ended=ended), ended=ended))

    return _json(await _read(request, travel))


@bp.get("/state/diff")
@rule("admin")
@api(
    "What changed between two points",
    response=StateDiff,
    query=(
        Query("a", str, "from this seq or time", required=True),
        Query("b", str, "to this seq or time (default: now)"),
    ),
)
async def get_state_diff(request: Request) -> HTTPResponse:
    """What changed from ``a`` to ``b`` (seqs or times; ``b`` defaults to now)."""
    service = _history(request)
    a, b = diff_points(request.args.get("a"), request.args.get("b"))
    return answer(await _read(request, lambda cur: service.history(cur).diff(a, b)))


@bp.get("/usage")
@rule("user")
@api(
    "Allocated and offered resources over time",
    response=Usage,
    query=(
        Query("hours", float, "the window (default 6)"),
        Query("points", int, "buckets (default 120)"),
    ),
)
async def get_usage(request: Request) -> HTTPResponse:
    """Cores, memory and GPUs allocated and offered over the last ``hours`` (default 6),
    in ``points`` buckets (default 120): the overview's chart. Aggregates only, so any
    user may read it (replay_tools/usage.py says how each number is made)."""
    hours, points = usage_window(request.args.get("hours"), request.args.get("points"))
    service = _history(request)
    # Every open overview asks again on each change: callers asking the same window while
    # it is being read share that one read (it scans the log's placements).
    flights: dict[tuple[float, int], asyncio.Future[Any]] = request.app.ctx.__dict__.setdefault(
        "usage_flights", {}
    )
    key = (hours, points)
    flight = flights.get(key)
    if flight is None:
        end_us = now_us()
        flight = asyncio.ensure_future(
            _read(
                request,
                lambda cur: service.history(cur).usage(end_us=end_us, hours=hours, points=points),
            )
        )
        flights[key] = flight
        flight.add_done_callback(lambda _: flights.pop(key, None))
    return answer(await asyncio.shield(flight))


# -- audit, SQL, reports, exports -----------------------------------------------------------


@bp.get("/audit")
@rule("admin")
@api("Verify the hash chain and the invariants of the log", response=AuditReport)
async def get_audit(request: Request) -> HTTPResponse:
    """The hash chain and the invariants of the log, up to its last seq when asked."""
    service = _history(request)
    upto = control_plane(request).store.last_seq
    return answer(await _read(request, lambda cur: service.history(cur).audit(upto)))


@bp.post("/sql")
@rule("admin")
@api("One read-only SELECT over the log's views", request=SqlRequest, response=Table)
async def post_sql(request: Request) -> HTTPResponse:
    """One read-only SELECT over the log's views: ``{"sql": "...", "max_rows": N}``."""
    body = json_object(request, 'a JSON object {"sql": "SELECT ..."}')
    query = sql_query(body.get("sql"), body.get("max_rows", DEFAULT_MAX_ROWS))
    try:
        return answer(await _history(request).sql(query))
    except HistoryClosed:
        raise ServiceUnavailable("the control plane is stopping") from None


@bp.get("/reports/<name:str>")
@rule("user")
@api(
    "A canned report (queue-wait, runtime, failures, utilization)",
    response=Table,
    query=(
        Query("by", str, "node (default) or owner"),
        Query("since", str, "from this time"),
    ),
)
async def get_report(request: Request, name: str) -> HTTPResponse:
    """A canned report (queue-wait, runtime, failures, utilization) by node or owner."""
    principal = principal_of(request)
    # A user who is not an admin gets the report over their own tasks only.
    owner = None if principal.is_admin else principal.user
    query = report_query(name, request.args.get("by"), request.args.get("since"), owner)
    service = _history(request)
    return answer(await _read(request, lambda cur: service.history(cur).report(query)))


@bp.get("/export/<name:str>")
@rule("admin")
@api(
    "The events or one view as an Arrow IPC stream",
    response=bytes,
    content_type="application/vnd.apache.arrow.stream",
    query=(Query("since", str, "from this time"),),
)
async def get_export(request: Request, name: str) -> None:
    """The events or one view as an Arrow IPC stream (the CLI writes it as Parquet)."""
    chunks = _history(request).export(export_query(name, request.args.get("since")))
    first = await anext(chunks)  # the query runs (or fails, as an error answer) before we answer
    response = await request.respond(content_type="application/vnd.apache.arrow.stream")
    await response.send(first)
    async for chunk in chunks:
        if chunk:
            await response.send(chunk)
    await response.eof()


def _json(body: bytes) -> HTTPResponse:
    return HTTPResponse(body, content_type="application/json")
