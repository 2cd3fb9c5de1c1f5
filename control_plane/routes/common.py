"""What every route shares: the control plane from the app context, JSON answers."""

from __future__ import annotations

from typing import Any

import msgspec
import sanic
from sanic import Request, json
from sanic.response import HTTPResponse

from control_plane.access import Principal, check_owner, may_act_on
from control_plane.errors import InvalidRequest, NotFound
from control_plane.hub import ControlPlane
from control_plane.requests import not_utf8_field
from replay_tools.task_names import AmbiguousTask, StateTasks, UnknownTask, find_task


class JsonBlueprint(sanic.Blueprint):
    """Sanic's Blueprint with every route's error format fixed to JSON (our errors are JSON
    documents, app.py). Sanic otherwise guesses the format of each route when it is
    defined, by reading and parsing the handler's source: a fifth of a second of every
    host's start-up, for an answer that is always JSON here."""

    def _determine_error_format(self, handler: Any) -> str:
        return "json"


_encoder = msgspec.json.Encoder()


def control_plane(request: Request) -> ControlPlane:
    """The ``ControlPlane`` hung on the app context."""
    cp: ControlPlane = request.app.ctx.cp
    return cp


def principal_of(request: Request) -> Principal:
    """Who made the request, as the app's middleware authenticated them (access.py)."""
    principal: Principal = request.ctx.principal
    return principal


def may_see(request: Request, owner: str) -> bool:
    """Whether the caller may see ``owner``'s private parts (env values, output)."""
    return may_act_on(principal_of(request), owner)


def check_may_act(request: Request, owner: str, what: str) -> None:
    """Refuse (403) unless the caller owns ``what`` or is an admin."""
    check_owner(principal_of(request), owner, what)


def answer(value: Any, status: int = 200) -> HTTPResponse:
    """A JSON answer from any msgspec-encodable value."""
    return HTTPResponse(_encoder.encode(value), status=status, content_type="application/json")


def error(status: int, kind: str, message: str, field: str | None = None) -> HTTPResponse:
    """The API's error document."""
    body: dict[str, str] = {"error": kind, "message": message}
    if field is not None:
        body["field"] = field
    return json(body, status=status)


def json_object(request: Request, expected: str = "a JSON object") -> dict[str, Any]:
    """The request body as a JSON object (``InvalidRequest`` on ``body`` otherwise)."""
    try:
        request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(not_utf8_field(request.body), "not valid UTF-8 text") from None
    try:
        body = request.json
    except Exception:
        raise InvalidRequest("body", "malformed JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body", f"expected {expected}")
    return body


def query_int(request: Request, name: str, *, minimum: int = 0) -> int | None:
    """An optional integer query parameter (``InvalidRequest`` naming it when malformed)."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        # ASCII digits and a sign only: int() also takes "٣", "1_0" and spaces.
        plain = len(raw) <= 20 and raw.isascii() and raw.lstrip("-").isdigit()
        value = int(raw) if plain else None
    except ValueError:
        value = None
    if value is None:
        raise InvalidRequest(name, f"must be an integer, got {raw[:40]!r}")
    if value > 2**63 - 1:
        raise InvalidRequest(name, f"must be at most {2**63 - 1}, got {raw}")
    if value < minimum:
        raise InvalidRequest(name, f"must be at least {minimum}, got {value}")
    return value


def task_id_of(cp: ControlPlane, ident: str, field: str = "task_id") -> str:
    """The task ``ident`` names (its number, its id, or a unique prefix of 8+ characters).

    ``NotFound`` when it names none; ``InvalidRequest`` (400) naming some of the
    matches when it is a prefix of several (``replay_tools.task_names`` has the rule).
    """
    try:
        return find_task(ident, StateTasks(cp.state))
    except AmbiguousTask as exc:
        raise InvalidRequest(field, str(exc)) from None
    except UnknownTask as exc:
        raise NotFound(field, str(exc)) from None
