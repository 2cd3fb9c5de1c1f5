"""The Sanic app factory: one process, owning the log and the state.

``create_app(settings)`` builds the app; the ``before_server_start`` listener
opens the store and rebuilds the state (``ControlPlane.open``) and starts the
scheduler, liveness and snapshot loops; ``after_server_stop`` closes them and
writes a final snapshot. Sanic must run with ``single_process=True``: DuckDB
allows one writer, and the state lives in this process's memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

import duckdb
from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse

from control_plane.access import (
    FailureLog,
    Principal,
    authenticate,
    require,
    rule_of,
    wants_page,
)
from control_plane.bootstrap import ensure_admin
from control_plane.commands import CloseSessionsLeftOpen, RecordFacts
from control_plane.dashboard import routes as dashboard
from control_plane.dashboard.sessions import (
    COOKIE,
    CSRF_HEADER,
    Sessions,
    csrf_matches,
    principal_of_token_id,
    same_origin,
)
from control_plane.errors import (
    ERROR_CODE,
    DomainError,
    Refused,
    StoreFailing,
    Unauthenticated,
    error_of_kind,
)
from control_plane.hub import ControlPlane
from control_plane.metrics import HostMetrics
from control_plane.routes import (
    agents,
    compat,
    environments,
    history,
    identity,
    jobs,
    metrics,
    nodes,
    ssh,
    tasks,
)
from control_plane.routes import openapi as openapi_routes
from control_plane.routes import tls as tls_routes
from control_plane.routes.common import error
from control_plane.settings import HostSettings
from control_plane.ssh_gateway import GatewayStatus, start_gateway
from events import link
from events.envelope import now_us
from events.store import StoreUnavailable
from replay_tools.queries import HistoryError

if TYPE_CHECKING:  # cryptography is imported only where TLS is on (start-up time)
    from control_plane.tls import HostTls

log = logging.getLogger("hakuriver.host")

# Sanic's own refusals (routing, body size), by status; ours are DomainErrors (errors.py).
_KINDS = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    503: "unavailable",
}


# How long a stop may take, from SIGINT/SIGTERM to exit, beyond the kill grace period (the
# ``up`` command waits for its tasks' kills): past it the process exits anyway. Shutdown
# is bounded by design (followers end, user SQL is interrupted, log reads stop at the next
# block); this is the backstop for whatever a thread still does (docs/operations.md).
SHUTDOWN_DEADLINE_S = 30.0
# Open connections (a request being answered) get this long to finish once stopping.
GRACEFUL_S = 5.0
SHUTDOWN_EXIT_CODE = 70
# What a 503 for an unwritable log suggests: the agents' resends pause about as long.
STORE_RETRY_AFTER_S = "5"
# Sent with every answer that does not set its own (the dashboard's pages do).
API_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
# Methods that change nothing: a dashboard session's request with one of them needs no
# ``Origin`` of this host's (it still needs the session's key).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class LogInUse(Exception):
    """Another process has the event log open: DuckDB refused its lock (one writer)."""


def create_app(
    settings: HostSettings, name: str = "hakuriver", *, tls: HostTls | None = None
) -> Sanic:  # type: ignore[type-arg]
    """The control plane as a Sanic app, configured from ``settings``.

    ``tls``: what the server is run with (control_plane/tls.py), for ``/api/tls/ca``.
    """
    app: Sanic = Sanic(name)  # type: ignore[type-arg]
    app.config.REQUEST_MAX_SIZE = settings.max_body_bytes
    app.config.WEBSOCKET_MAX_SIZE = link.MAX_FRAME_BYTES  # the agent link's frame limit
    app.config.WEBSOCKET_PING_INTERVAL = 20
    app.config.WEBSOCKET_PING_TIMEOUT = 20
    app.config.KEEP_ALIVE_TIMEOUT = 30
    app.config.RESPONSE_TIMEOUT = 24 * 3600  # log follows stream for as long as tasks run
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = GRACEFUL_S
    app.ctx.settings = settings
    # Set when the server starts to stop: long answers (log follows) end on it.
    app.ctx.stopping = asyncio.Event()
    app.ctx.tls = tls
    blueprints = (
        tasks.bp,
        jobs.bp,
        nodes.bp,
        agents.bp,
        history.bp,
        environments.bp,
        identity.bp,
        ssh.bp,
        metrics.bp,
    )
    app.ctx.ui_sessions = Sessions()
    # compat: the original API's paths (/tasks, /status/<id>...) are static, so Sanic's
    # router prefers them to the dashboard's page paths; /tasks and /nodes are both.
    for blueprint in (*blueprints, tls_routes.bp, compat.bp, dashboard.bp, openapi_routes.bp):
        app.blueprint(blueprint)
    failures = FailureLog(window_s=settings.auth.failure_window_s)

    async def note_refused(request: Request, exc: Unauthenticated) -> None:
        """Record a refused credential (at most one ``auth.failed`` per address and
        window: access.FailureLog); the dashboard's login records its refusals here too."""
        route = request.route.path if request.route is not None else request.path
        event = failures.note(
            request.remote_addr or request.ip or "", route, exc.message, time.monotonic()
        )
        if event is not None:
            try:
                await app.ctx.cp.execute(RecordFacts(events=(event,)))
            except Exception:
                log.exception("could not record a refused credential")

    app.ctx.note_refused = note_refused

    @app.on_request
    async def _authorize(request: Request) -> None:
        """Authentication and the route's access rule, for every request (access.py)."""
        route = request.route
        if route is None:  # Sanic answers it (404, 405) before any handler runs
            return
        access = rule_of(route.handler)
        if access is None:
            # A route that declares no rule is refused, not open (access.py).
            raise Refused("", f"{request.path} declares no access rule; refused")
        if access == "public" or wants_page(route.handler, request.headers):
            return  # a page_too route's page is public (access.wants_page)
        cp: ControlPlane = app.ctx.cp
        try:
            principal = _principal(request, cp)
        except Unauthenticated as exc:
            await note_refused(request, exc)
            raise
        require(principal, access)
        request.ctx.principal = principal

    def recheck(request: Request) -> bool:
        """Whether the caller of a long answer (an event stream) may still have it: the
        same credential, still valid, the same user and role, still let in by the route's
        rule. A revoked token, a disabled or demoted user, or a logout ends the stream."""
        access = rule_of(request.route.handler) if request.route is not None else None
        if access is None or access == "public":
            return True
        try:
            principal = _principal(request, app.ctx.cp)
            require(principal, access)
        except DomainError:
            return False
        before: Principal = request.ctx.principal
        return (principal.user, principal.role) == (before.user, before.role)

    app.ctx.recheck = recheck

    def _principal(request: Request, cp: ControlPlane) -> Principal:
        """The caller: by its ``Authorization`` header, or else by a dashboard session's
        cookie and key (dashboard/sessions.py); a session's changes must come from this
        host's own pages (``Origin``)."""
        header = request.headers.get("authorization")
        secret = request.cookies.get(COOKIE) if header is None else None
        if secret is None:
            return authenticate(cp.state.identity, header, now_us())
        session = app.ctx.ui_sessions.find(secret)
        if session is None:
            raise Unauthenticated(
                "session",
                "this dashboard session has ended (logged out, expired, or the host"
                " restarted); log in again",
            )
        principal = principal_of_token_id(cp.state.identity, session.token_id, now_us())
        websocket = request.headers.get("upgrade", "").lower() == "websocket"
        if websocket or request.method not in SAFE_METHODS:
            origin = request.headers.get("origin")
            if not same_origin(origin, request.scheme, request.headers.get("host")):
                raise Refused("Origin", "a change with a dashboard session from another site")
        # Every request with the cookie carries the session's second secret, which the page
        # keeps in its origin's storage, never in a cookie: browsers send cookies to every
        # port of a host name, so a cookie alone (caught by any other service there) is no
        # session. Event streams and websockets cannot send headers: csrf= instead.
        presented = request.headers.get(CSRF_HEADER)
        if presented is None and (websocket or request.method in ("GET", "HEAD")):
            presented = request.args.get("csrf")
        if not csrf_matches(session, presented):
            raise Refused(
                CSRF_HEADER,
                "a request with a dashboard session must carry the session's key (header"
                " X-CSRF-Token; csrf= on an event stream or websocket); log in again",
            )
        request.ctx.ui_session = session
        return principal

    @app.on_response  # type: ignore[untyped-decorator]
    async def _headers(request: Request, response: HTTPResponse) -> None:
        """What every answer says to a browser: nothing here is to be sniffed into
        another type, framed, or given a referrer; an API answer opened in a browser runs
        nothing (the dashboard's own pages set their policy: dashboard/routes.py)."""
        for name, value in API_HEADERS.items():
            if name not in response.headers:
                response.headers[name] = value

    @app.before_server_start
    async def _open(app: Sanic) -> None:  # type: ignore[type-arg]
        try:
            cp = await ControlPlane.open(settings)
        except duckdb.IOException as exc:
            if "lock" not in str(exc):
                raise
            raise LogInUse(str(exc)) from None
        app.ctx.cp = cp
        app.ctx.metrics = HostMetrics(cp, app.ctx)  # GET /api/metrics
        app.ctx.admin_token_file = await ensure_admin(cp)
        await _close_sessions_left_open(cp)
        cp.start()
        # The SSH gateway to VPS tasks (its port is known once bound: GET /api/ssh).
        app.ctx.ssh_gateway = await start_gateway(cp, settings, failures)

    @app.before_server_stop
    async def _stopping(app: Sanic) -> None:  # type: ignore[type-arg]
        app.ctx.stopping.set()
        _exit_if_stuck(SHUTDOWN_DEADLINE_S + settings.timing.kill_grace_period)
        # The SSH gateway's sessions are closed and their closes recorded while the log is
        # still open (bounded: ssh_gateway.STOP_WITHIN_S).
        gateway: GatewayStatus | None = getattr(app.ctx, "ssh_gateway", None)
        if gateway is not None and gateway.gateway is not None:
            await gateway.gateway.stop()
        # So are the ``vps shell`` sessions' (bounded: vps_shells.STOP_WITHIN_S), before
        # the server closes their websockets and the agents' links.
        cp: ControlPlane | None = getattr(app.ctx, "cp", None)
        if cp is not None:
            await cp.shells.stop("host stopping")

    @app.after_server_stop
    async def _close(app: Sanic) -> None:  # type: ignore[type-arg]
        cp: ControlPlane | None = getattr(app.ctx, "cp", None)
        if cp is not None:
            await cp.close()

    @app.exception(DomainError)
    async def _refused(request: Request, exc: DomainError) -> HTTPResponse:
        answer = error(exc.status, ERROR_CODE[exc.kind], exc.message, exc.field or None)
        if exc.status == 401:
            answer.headers["WWW-Authenticate"] = 'Bearer realm="hakuriver"'
        if isinstance(exc, StoreFailing):
            answer.headers["Retry-After"] = STORE_RETRY_AFTER_S
        return answer

    @app.exception(StoreUnavailable)
    async def _store_unavailable(request: Request, exc: StoreUnavailable) -> HTTPResponse:
        # A read while the store opens its file again (after a failed write).
        answer = error(503, ERROR_CODE[StoreFailing.kind], str(exc))
        answer.headers["Retry-After"] = STORE_RETRY_AFTER_S
        return answer

    @app.exception(HistoryError)
    async def _history_refused(request: Request, exc: HistoryError) -> HTTPResponse:
        # replay_tools may not import the control plane: its refusals carry the kind's name.
        refused = error_of_kind(exc.kind, exc.field, exc.message)
        return error(refused.status, ERROR_CODE[refused.kind], exc.message, exc.field or None)

    @app.exception(SanicException)
    async def _sanic(request: Request, exc: SanicException) -> HTTPResponse:
        status = exc.status_code
        message = str(exc) or "request failed"
        if status == 413:
            message = f"request body larger than {settings.max_body_bytes} bytes"
        return error(status, _KINDS.get(status, "invalid_request"), message)

    @app.exception(UnicodeDecodeError)
    async def _not_utf8(request: Request, exc: UnicodeDecodeError) -> HTTPResponse:
        # Routes name the field where they can (requests.decode_body); this is the backstop.
        return error(400, "invalid_request", "the request is not valid UTF-8 text", "body")

    @app.exception(Exception)
    async def _bug(request: Request, exc: Exception) -> HTTPResponse:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, "internal", f"internal error ({type(exc).__name__}); see the host log")

    return app


async def _close_sessions_left_open(cp: ControlPlane) -> None:
    """Record the close of the SSH sessions a killed host left open (before any new one
    opens: none of those the log shows open can have survived that host)."""
    try:
        outcome = await cp.execute(CloseSessionsLeftOpen())
    except StoreFailing as exc:  # the next start closes them
        log.warning("could not close the SSH sessions left open: %s", exc.message)
        return
    if outcome.seqs:
        log.warning(
            "closed %d SSH session(s) left open by a host that did not stop cleanly",
            len(outcome.seqs),
        )


def _exit_if_stuck(deadline_s: float) -> None:
    """Arm a backstop: if this process is still alive ``deadline_s`` from now, it exits.

    A daemon timer: it does not keep the process up, and it still runs while the
    interpreter waits at exit for worker threads (concurrent.futures joins them), which
    is where a stop used to hang. The log needs no clean close: acknowledged events are
    committed, and a restart replays what a kill -9 would leave.
    """

    def give_up() -> None:
        log.error("stopping took longer than %.0fs: exiting anyway", deadline_s)
        logging.shutdown()
        os._exit(SHUTDOWN_EXIT_CODE)

    timer = threading.Timer(deadline_s, give_up)
    timer.daemon = True
    timer.name = "hakuriver-shutdown-deadline"
    timer.start()
