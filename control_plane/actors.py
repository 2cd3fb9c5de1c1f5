"""Who made a request: one rule for the actor recorded in every event a request causes.

Until the API authenticates users (then the actor is the authenticated user), a client
names itself in the ``X-HakuRiver-User`` header on every request: the CLI and
``HakuClient`` send the login name of the user running them. The host records that
name as ``requested_by`` of whatever the request makes happen (kills, pauses, resumes,
environment containers, packaging, shells). A request without the header falls back to
the ``requested_by`` of its JSON body where the route takes one (kill, pause, resume:
API clients written before the header), and then to ``anonymous``.

The header value is the name percent-encoded as UTF-8 (HTTP headers carry ASCII), so
``alice`` is sent as is and ``zoë`` as ``zo%C3%AB``.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from control_plane.errors import InvalidRequest

ACTOR_HEADER = "X-HakuRiver-User"
ANONYMOUS = "anonymous"
MAX_ACTOR_LENGTH = 128


def actor_header_value(name: str) -> str:
    """The header value that names ``name`` (what clients send)."""
    return quote(name, safe="")


def check_actor(name: str, field: str) -> str:
    """A usable actor name: stripped, printable, not too long (``InvalidRequest`` on ``field``)."""
    name = name.strip()
    if len(name) > MAX_ACTOR_LENGTH:
        raise InvalidRequest(field, f"a user name of at most {MAX_ACTOR_LENGTH} characters")
    if not name.isprintable():
        raise InvalidRequest(field, f"{name!r} is not a user name: it holds control characters")
    return name


def actor_from(header: str | None, body_requested_by: str | None = None) -> str:
    """The actor of a request from its header, else its body's ``requested_by``, else anonymous."""
    if header is not None:
        try:
            decoded = unquote(header, errors="strict")
        except UnicodeDecodeError:
            raise InvalidRequest(ACTOR_HEADER, "not a percent-encoded UTF-8 name") from None
        name = check_actor(decoded, ACTOR_HEADER)
        if name:
            return name
    if body_requested_by is not None:
        name = check_actor(body_requested_by, "requested_by")
        if name:
            return name
    return ANONYMOUS
