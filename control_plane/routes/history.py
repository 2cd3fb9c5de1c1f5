"""History routes: the live feed, timelines, time travel, audit, SQL, reports, exports.

Every read runs on the history service's threads (``control_plane.history``), never
on the event loop. docs/history.md is the reference for each route.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import duckdb
import msgspec
from sanic import Blueprint, Request, Sanic
from sanic.exceptions import ServiceUnavailable
from sanic.response import HTTPResponse

from control_plane.errors import InvalidRequest, NotFound
from control_plane.history import Cursor, HistoryService, state_document
from control_plane.hub import ControlPlane
from control_plane.routes.common import (
    answer,
    control_plane,
    json_object,
    query_int,
    task_id_of,
)
from events.envelope import now_us
from projections.cluster import ClusterState
from replay_tools.analytics import (
    DEFAULT_MAX_ROWS,
    REPORTS,
    SqlRefused,
    report_table,
    table_document,
)
from replay_tools.audit import audit
from replay_tools.export import export_queries
from replay_tools.feed import MAX_PAGE, EventFilter, Page, check_kinds, event_at, events_page
from replay_tools.points import Point, iso, parse_point
from replay_tools.replay import diff_between, state_at
from replay_tools.timeline import explain_placement, task_history

bp = Blueprint("history", url_prefix="/api")
T = TypeVar("T")

STREAM_PAGE = 1000
MAX_SQL_ROWS = 100_000
SQL_TIMEOUT_S = 60.0
_encode = msgspec.json.Encoder().encode


async def _start_history(app: Sanic) -> None:  # type: ignore[type-arg]
    cp: ControlPlane = app.ctx.cp
    service = HistoryService(cp.store)
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
    except RuntimeError as exc:
        if "shutdown" in str(exc):
            raise ServiceUnavailable("the control plane is stopping") from None
        raise


# -- query parameters ---------------------------------------------------------------------


def _point(request: Request, name: str) -> Point | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_point(raw, now_us=now_us())
    except ValueError as exc:
        raise InvalidRequest(name, str(exc)) from None


def _time(request: Request, name: str) -> int | None:
    point = _point(request, name)
    if point is not None and point.seq is not None:
        raise InvalidRequest(name, f"give a time (ISO 8601 or -10m), not a seq ({point.seq})")
    return point.at_us if point is not None else None


def _filter(request: Request, cp: ControlPlane) -> EventFilter:
    try:
        kinds = check_kinds(request.args.getlist("kind", []))
    except ValueError as exc:
        raise InvalidRequest("kind", str(exc)) from None
    try:
        exclude = check_kinds(request.args.getlist("exclude", []))
    except ValueError as exc:
        raise InvalidRequest("exclude", str(exc)) from None
    task = request.args.get("task")
    node = request.args.get("node")
    if node is not None and node not in cp.state.nodes:
        raise NotFound("node", f"no node {node!r}")
    since, until = _point(request, "since"), _point(request, "until")
    return EventFilter(
        kinds=kinds,
        exclude=exclude,
        task_id=task_id_of(cp, task, "task") if task is not None else None,
        node=node,
        source=request.args.get("source"),
        since_seq=since.seq if since else None,
        since_us=since.at_us if since else None,
        until_seq=until.seq if until else None,
        until_us=until.at_us if until else None,
    )


def _ended(request: Request) -> bool:
    tasks: str = request.args.get("tasks", "active")
    if tasks not in ("active", "all"):
        raise InvalidRequest("tasks", f"must be active or all, got {tasks!r}")
    return tasks == "all"


# -- the feed -----------------------------------------------------------------------------


@bp.get("/events")
async def list_events(request: Request) -> HTTPResponse:
    """A page of events after ``after``, filtered; ``next_after`` continues it."""
    cp = control_plane(request)
    flt = _filter(request, cp)
    after = query_int(request, "after") or 0
    tail = query_int(request, "tail", minimum=1)
    limit = tail or query_int(request, "limit", minimum=1) or 1000
    if limit > MAX_PAGE:
        raise InvalidRequest("tail" if tail else "limit", f"at most {MAX_PAGE}, got {limit}")
    upto = cp.store.last_seq
    page = await _read(
        request,
        lambda cur: events_page(cur, flt, after=after, upto=upto, limit=limit, tail=bool(tail)),
    )
    return answer(
        {"events": page.events, "next_after": page.next_after, "more": page.more, "last_seq": upto}
    )


@bp.get("/events/<seq:int>")
async def get_event(request: Request, seq: int) -> HTTPResponse:
    """One event by its seq."""
    found = None
    if 1 <= seq <= 2**63 - 1:
        found = await _read(request, lambda cur: event_at(cur, seq))
    if found is None:
        raise NotFound(
            "seq",
            f"no event at seq {seq} (the log ends at {control_plane(request).store.last_seq})",
        )
    return answer(found)


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
async def stream_events(request: Request) -> None:
    """Server-sent events (``id:`` = seq) after ``Last-Event-ID`` or ``after``, filtered."""
    cp = control_plane(request)
    service = _history(request)
    flt = _filter(request, cp)
    if flt.until_seq is not None or flt.until_us is not None:
        raise InvalidRequest("until", "a stream has no end; read a range with GET /api/events")
    position = _resume_after(request)
    keepalive = _keepalive(request)
    response = await request.respond(
        content_type="text/event-stream; charset=utf-8",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    await response.send(f"retry: 1000\n: events after seq {position}\n\n")
    while not service.closing.is_set():
        upto = cp.store.last_seq
        if upto > position:
            try:
                page = await _read(request, _page_reader(flt, position, upto))
            except ServiceUnavailable:
                break  # shutting down: end the stream cleanly; the client resumes later
            if page.events:
                await response.send(
                    "".join(f"id: {e.seq}\ndata: {_encode(e).decode()}\n\n" for e in page.events)
                )
            position = page.next_after
            continue
        if not await service.wait_beyond(position, keepalive):
            # A comment keeps proxies from timing out; the id moves the client's resume
            # point past the events its filter skipped.
            await response.send(f"id: {position}\n: keep-alive\n\n")
    await response.eof()


def _page_reader(flt: EventFilter, after: int, upto: int) -> Callable[[Cursor], Page]:
    return lambda cur: events_page(cur, flt, after=after, upto=upto, limit=STREAM_PAGE)


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
async def get_task_history(request: Request, ident: str) -> HTTPResponse:
    """Every event of a task, with the time between them."""
    cp = control_plane(request)
    service = _history(request)
    task_id = task_id_of(cp, ident)
    return answer(await _read(request, lambda cur: task_history(service.log(cur), task_id)))


@bp.get("/tasks/<ident:str>/why")
async def get_task_why(request: Request, ident: str) -> HTTPResponse:
    """Where the task was placed and why, and why the other nodes were not chosen."""
    cp = control_plane(request)
    service = _history(request)
    task_id = task_id_of(cp, ident)
    records = await _read(request, lambda cur: service.log(cur).read(streams=[f"task:{task_id}"]))
    # On the loop: it reads the live state (the nodes, for a task still pending).
    return answer(explain_placement(records, cp.state))


# -- time travel --------------------------------------------------------------------------


@bp.get("/state")
async def get_state(request: Request) -> HTTPResponse:
    """The cluster now (with its seq), or at ``at`` (a seq or a time) as it was then."""
    cp = control_plane(request)
    service = _history(request)
    ended = _ended(request)
    at = _point(request, "at")
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
        state = state_at(service.log(cur), seq=at.seq, at_us=at.at_us, ended=ended)
        return _encode(state_document(state, ended=ended))

    return _json(await _read(request, travel))


@bp.get("/state/diff")
async def get_state_diff(request: Request) -> HTTPResponse:
    """What changed from ``a`` to ``b`` (seqs or times; ``b`` defaults to now)."""
    service = _history(request)
    a = _point(request, "a")
    if a is None:
        raise InvalidRequest("a", "give the first point: a seq or a time")
    b = _point(request, "b") or Point(seq=control_plane(request).store.last_seq)
    return answer(await _read(request, lambda cur: diff_between(service.log(cur), a, b)))


# -- audit, SQL, reports, exports -----------------------------------------------------------


@bp.get("/audit")
async def get_audit(request: Request) -> HTTPResponse:
    """The hash chain and the invariants of the log, up to its last seq when asked."""
    upto = control_plane(request).store.last_seq
    return answer(await _read(request, lambda cur: audit(cur, upto=upto)))


@bp.post("/sql")
async def post_sql(request: Request) -> HTTPResponse:
    """One read-only SELECT over the log's views: ``{"sql": "...", "max_rows": N}``."""
    body = json_object(request, 'a JSON object {"sql": "SELECT ..."}')
    sql = body.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidRequest("sql", "give one SELECT statement as a string")
    max_rows = body.get("max_rows", DEFAULT_MAX_ROWS)
    if (
        isinstance(max_rows, bool)
        or not isinstance(max_rows, int)
        or not 1 <= max_rows <= MAX_SQL_ROWS
    ):
        raise InvalidRequest("max_rows", f"must be an integer from 1 to {MAX_SQL_ROWS}")
    try:
        result = await _history(request).sql(sql, max_rows, SQL_TIMEOUT_S)
    except SqlRefused as exc:
        raise InvalidRequest("sql", str(exc)) from None
    except duckdb.Error as exc:
        raise InvalidRequest("sql", f"the statement failed: {exc}") from None
    return answer(
        table_document(
            result.columns,
            result.rows,
            row_count=len(result.rows),
            truncated=result.truncated,
        )
    )


@bp.get("/reports/<name:str>")
async def get_report(request: Request, name: str) -> HTTPResponse:
    """A canned report (queue-wait, runtime, failures, utilization) by node or owner."""
    if name not in REPORTS:
        raise NotFound("name", f"no report {name!r}; one of {', '.join(REPORTS)}")
    by = request.args.get("by", "node")
    if by not in ("node", "owner"):
        raise InvalidRequest("by", f"must be node or owner, got {by!r}")
    since = _time(request, "since")
    columns, rows = await _read(
        request,
        lambda cur: report_table(cur, name, since_us=since, by=by),
    )
    return answer(table_document(columns, rows, report=name, by=by, since=iso(since)))


@bp.get("/export/<name:str>")
async def get_export(request: Request, name: str) -> None:
    """The events or one view as an Arrow IPC stream (the CLI writes it as Parquet)."""
    if name not in export_queries():
        raise NotFound("name", f"no export {name!r}; one of {', '.join(export_queries())}")
    since = _time(request, "since")
    chunks = _history(request).export(name, since)
    first = await anext(chunks)  # the query runs (or fails, as an error answer) before we answer
    response = await request.respond(content_type="application/vnd.apache.arrow.stream")
    await response.send(first)
    async for chunk in chunks:
        if chunk:
            await response.send(chunk)
    await response.eof()


def _json(body: bytes) -> HTTPResponse:
    return HTTPResponse(body, content_type="application/json")
