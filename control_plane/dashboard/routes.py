"""The dashboard: its pages and files at ``/``, and its login API under ``/api/ui``.

The pages are static files of this package (``static/``; no build step, the vendored
libraries listed in ``static/vendor/VENDORED.md``): one HTML shell for every page path,
which reads the JSON API with the session cookie, like the CLI does with its token.
The pages and files carry their own Content-Security-Policy (scripts from this host
only); the app adds the headers every answer carries (app.py ``API_HEADERS``).
"""

from __future__ import annotations

import hashlib
import mimetypes
import time
from pathlib import Path

import msgspec
from sanic import Request
from sanic.response import HTTPResponse

from control_plane.access import authenticate, rule
from control_plane.dashboard.sessions import (
    COOKIE,
    Sessions,
    principal_of_token_id,
    same_origin,
)
from control_plane.errors import InvalidRequest, Refused, Unauthenticated
from control_plane.openapi import api, shape
from control_plane.routes.common import (
    JsonBlueprint,
    answer,
    control_plane,
    error,
    json_object,
    principal_of,
)
from events.envelope import now_us

STATIC = Path(__file__).parent / "static"
# The paths the page shell answers (the page's own router shows the right one): "/", a
# page's name, and a task's or a job's page.
PAGES = frozenset(
    (
        "login",
        "nodes",
        "tasks",
        "submit",
        "jobs",
        "vps",
        "environments",
        "history",
        "admin",
        "reference",
    )
)
DETAIL_PAGES = frozenset(("tasks", "jobs"))

CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; connect-src 'self'; font-src 'self' data:; object-src 'none';"
    " base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

bp = JsonBlueprint("dashboard")

# The login API's bodies and answers, for the OpenAPI document (control_plane/openapi.py).
LoginRequest = msgspec.defstruct(
    "LoginRequest",
    [("token", str | None, None), ("code", str | None, None), ("peek", bool, False)],
    kw_only=True,
)
LoggedIn = msgspec.defstruct(
    "LoggedIn",
    [("user", str), ("role", str), ("csrf", str | None, None), ("expires_in_s", int | None, None)],
    kw_only=True,
)
SessionInfo = shape(
    "SessionInfo",
    user=str,
    role=str,
    csrf=str | None,
    token_id=str,
    expires_at_us=int | None,
)
LoggedOut = shape("LoggedOut", logged_out=bool)
LoginLink = shape("LoginLink", path=str, expires_in_s=int)


class _File(msgspec.Struct, frozen=True):
    body: bytes
    content_type: str
    etag: str


def _load_static() -> dict[str, _File]:
    """Every file under static/, read once: a request can only name one of these (no
    path ever reaches the file system)."""
    files: dict[str, _File] = {}
    for path in sorted(STATIC.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        name = path.relative_to(STATIC).as_posix()
        body = path.read_bytes()
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "text/javascript"):
            kind += "; charset=utf-8"
        if name.endswith(".md") or name.startswith("vendor/LICENSE"):
            kind = "text/plain; charset=utf-8"
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        files[name] = _File(body, kind, etag)
    return files


_FILES: dict[str, _File] | None = None


def static_files() -> dict[str, _File]:
    global _FILES
    if _FILES is None:
        _FILES = _load_static()
    return _FILES


def _file_answer(request: Request, found: _File) -> HTTPResponse:
    headers = {"Content-Security-Policy": CSP, "ETag": found.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == found.etag:
        return HTTPResponse(status=304, headers=headers)
    return HTTPResponse(found.body, headers=headers, content_type=found.content_type)


def sessions(request: Request) -> Sessions:
    """The host's browser sessions (app.py makes them with the app)."""
    found: Sessions = request.app.ctx.ui_sessions
    return found


# -- the pages and their files ----------------------------------------------------------


@rule("public")
async def page(request: Request, page: str = "", ident: str | None = None) -> HTTPResponse:
    """The page shell (index.html) for every page path; the page's router does the rest."""
    known = DETAIL_PAGES if ident is not None else PAGES
    if page and page not in known:
        return error(404, "not_found", f"no page or route {request.path}")
    return _file_answer(request, static_files()["index.html"])


bp.add_route(page, "/", methods=["GET"], name="page_home")
bp.add_route(page, "/<page:[a-z]+>", methods=["GET"], name="page")
bp.add_route(page, "/<page:[a-z]+>/<ident:str>", methods=["GET"], name="page_detail")


@bp.get("/static/<name:path>")
@rule("public")
async def static_file(request: Request, name: str) -> HTTPResponse:
    """One of the dashboard's files (the names are those shipped, nothing else)."""
    found = static_files().get(name)
    if found is None:
        return error(404, "not_found", f"no file {name!r} in the dashboard")
    return _file_answer(request, found)


# -- login --------------------------------------------------------------------------------


def _cookie(request: Request, value: str, max_age: int) -> str:
    secure = "; Secure" if request.scheme == "https" else ""
    return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"


@bp.post("/api/ui/login")
@rule("public")
@api(
    "Log in to the dashboard (a user token, or a login link's code)",
    request=LoginRequest,
    response=LoggedIn,
    description="Sets the session cookie; csrf is the key every later request carries"
    " (X-CSRF-Token). peek with a code answers whose link it is (user and role only).",
)
async def login(request: Request) -> HTTPResponse:
    """Exchange a user token (``token``) or a one-time login code (``code``, from
    ``hakuriver ui``) for a session: the cookie, and in the answer who, their role and the
    session's key (``csrf``) the page sends with every request. ``peek`` with a code says
    whose link it is without using it (the page asks before logging in as someone)."""
    if not same_origin(request.headers.get("origin"), request.scheme, request.headers.get("host")):
        # Login CSRF: another site logging this browser in as someone else.
        raise Refused("Origin", "a login from another site's page")
    body = json_object(request)
    token, code = body.get("token"), body.get("code")
    cp = control_plane(request)
    store = sessions(request)
    now = now_us()
    if (token is None) == (code is None):
        raise InvalidRequest("token", "give either token (a user token) or code (a login link's)")
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise InvalidRequest("token", "must be a user token, hkr_u_…")
    if code is not None and (not isinstance(code, str) or not code):
        raise InvalidRequest("code", "must be the code of a login link")
    peek = body.get("peek", False)
    if not isinstance(peek, bool) or (peek and code is None):
        raise InvalidRequest("peek", "true (with a code) asks whose link it is, without using it")
    try:
        if token is not None:
            principal = authenticate(cp.state.identity, f"Bearer {token.strip()}", now)
        else:
            token_id = (store.peek if peek else store.redeem)(str(code))
            if token_id is None:
                raise Unauthenticated(
                    "code", "this login link is unknown, used or expired; run hakuriver ui again"
                )
            principal = principal_of_token_id(cp.state.identity, token_id, now)
    except Unauthenticated as exc:
        await request.app.ctx.note_refused(request, exc)  # audited as any refused token
        raise
    if principal.token_kind != "user":
        raise Refused("token", "only a user token logs in to the dashboard")
    if peek:
        return answer({"user": principal.user, "role": principal.role})
    secret, session = store.open(principal, now)
    max_age = max(1, int(session.expires_at - time.monotonic()))
    result = answer(
        {
            "user": principal.user,
            "role": principal.role,
            "csrf": session.csrf,
            "expires_in_s": max_age,
        }
    )
    result.headers["Set-Cookie"] = _cookie(request, secret, max_age)
    result.headers["Cache-Control"] = "no-store"
    return result


@bp.get("/api/ui/session")
@rule("user")
@api("Who the dashboard session is", response=SessionInfo)
async def session_info(request: Request) -> HTTPResponse:
    """Who the page is logged in as, and the session's key its requests carry."""
    principal = principal_of(request)
    session = getattr(request.ctx, "ui_session", None)
    result = answer(
        {
            "user": principal.user,
            "role": principal.role,
            "csrf": session.csrf if session is not None else None,
            "token_id": principal.token_id,
            "expires_at_us": principal.expires_at_us,
        }
    )
    result.headers["Cache-Control"] = "no-store"
    return result


@bp.post("/api/ui/logout")
@rule("user")
@api("End this browser's session", response=LoggedOut)
async def logout(request: Request) -> HTTPResponse:
    """End this browser's session (its cookie is cleared)."""
    sessions(request).close(request.cookies.get(COOKIE))
    result = answer({"logged_out": True})
    result.headers["Set-Cookie"] = _cookie(request, "", 0)
    return result


@bp.post("/api/ui/links")
@rule("user")
@api("A one-time login link for the caller's token", response=LoginLink, status=201)
async def make_link(request: Request) -> HTTPResponse:
    """A one-time login link for the caller's token (``hakuriver ui``): valid one minute,
    once; the code is in the URL's fragment, which browsers never send to a server."""
    if getattr(request.ctx, "ui_session", None) is not None:
        raise Refused("", "a login link is made with a token (hakuriver ui), not a session")
    code = sessions(request).link(principal_of(request))
    return answer({"path": f"/login#code={code}", "expires_in_s": 60}, 201)
