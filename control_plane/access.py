"""Who may do what: authentication of a credential, and the authorization rules.

Every entry point presents a token (``events.credentials``) as ``Authorization: Bearer``:
the API's routes, the agents' websocket, the environment shells. ``authenticate`` turns
it into a ``Principal`` against the folded identity (``projections.identity``) or
refuses it (``Unauthenticated``, 401). What the principal may then do is decided here
and nowhere else:

- each route declares one *access rule* with ``@rule(...)`` (``RULES`` says what each
  means); the app's request middleware authenticates and applies it before the handler
  runs, and refuses a route that declares none (so a new route cannot be open by
  mistake; tests/control_plane/test_access_matrix.py walks every route);
- what a user may do to a task (kill, pause, resume, read its output, env and history)
  is ``may_act_on``: its owner or an admin; the decisions of the command boundary
  (``control_plane/commands``) and the read routes both ask it.

The refusals never say whether a user or token exists to someone who did not present
its secret: a wrong secret and an unknown id get the same answer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple, TypeVar

from control_plane.errors import Refused, Unauthenticated
from events.credentials import parse_token, secret_matches
from events.types import Actor, AuthFailed
from projections.identity import Identity, TokenView

Access = Literal["public", "user", "admin", "agent", "join"]

# What each rule lets through (docs/security.md has the table per route).
RULES: dict[str, str] = {
    "public": "anyone, no token (holds no data)",
    "user": "any user's token (what a user may see or do is then limited to their own)",
    "admin": "an admin's token",
    "agent": "an enrolled node's agent credential",
    "join": "a join token (exchanged once for an agent credential)",
}

ADMIN = "admin"
_BEARER = "bearer "
INVALID = "invalid token"


class Principal(NamedTuple):
    """Who presented a valid credential."""

    user: str
    role: str
    token_id: str
    token_kind: str
    node: str | None = None  # agent credentials: the node it belongs to
    expires_at_us: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.token_kind == "user" and self.role == ADMIN

    @property
    def actor(self) -> Actor:
        """How the events this principal causes name them."""
        return Actor(user=self.user, token=self.token_id)


# The host itself, for what it does on its own account (the first admin, its local runner).
HOST = Principal(user="host", role=ADMIN, token_id="", token_kind="user")


def token_of(authorization: str | None) -> str | None:
    """The token text of an ``Authorization: Bearer`` header value (None if absent)."""
    if not authorization:
        return None
    if authorization[: len(_BEARER)].lower() != _BEARER:
        return None
    return authorization[len(_BEARER) :].strip()


def authenticate(identity: Identity, authorization: str | None, now_us: int) -> Principal:
    """The principal the header's token stands for; ``Unauthenticated`` when it is none."""
    text = token_of(authorization)
    if not text:
        raise Unauthenticated(
            "Authorization",
            "this needs a token: send 'Authorization: Bearer hkr_…' (the CLI reads --token,"
            " $HAKURIVER_TOKEN or ~/.hakuriver/token)",
        )
    credential = parse_token(text)
    token: TokenView | None = None
    if credential is not None:
        token = identity.tokens.get(credential.id)
    if (
        credential is None
        or token is None
        or token.kind != credential.kind
        or not secret_matches(credential.secret, token.sha256)
    ):
        raise Unauthenticated("Authorization", INVALID)
    # The caller holds the secret: from here on the answer may say what is wrong with it.
    return principal_of_token(identity, token, now_us)


def principal_of_token(
    identity: Identity, token: TokenView, now_us: int, field: str = "Authorization"
) -> Principal:
    """The principal of a known token, if it still holds now (revoked, expired, used up,
    its user disabled or its node revoked: ``Unauthenticated`` on ``field``). A dashboard
    session asks this of its token on every request (dashboard/sessions.py)."""
    if token.revoked:
        raise Unauthenticated(field, f"token {token.id} was revoked")
    if token.expires_at_us is not None and now_us >= token.expires_at_us:
        raise Unauthenticated(field, f"token {token.id} has expired")
    if token.kind == "join" and token.uses_left is not None and token.uses_left <= 0:
        raise Unauthenticated(field, f"join token {token.id} is used up")
    user = identity.users.get(token.user)
    if token.kind != "agent" and (user is None or user.disabled):
        raise Unauthenticated(field, f"the user of token {token.id} is disabled")
    if token.kind == "agent" and token.node in identity.revoked_nodes:
        raise Unauthenticated(field, f"node {token.node} was revoked")
    return Principal(
        user=token.user,
        role=user.role if user is not None else "user",
        token_id=token.id,
        token_kind=token.kind,
        node=token.node,
        expires_at_us=token.expires_at_us,
    )


def require(principal: Principal, access: Access) -> None:
    """Refuse (403) a principal that the route's rule does not let through."""
    if access == "public":
        return
    kind = principal.token_kind
    if access == "agent":
        if kind != "agent":
            raise Refused(
                "Authorization", "this is the node agents' link: it needs an agent credential"
            )
        return
    if access == "join":
        if kind != "join":
            raise Refused(
                "Authorization", "joining needs a join token (hakuriver token create --join)"
            )
        return
    if kind != "user":
        raise Refused(
            "Authorization", f"a {kind} token cannot be used for this: it needs a user's token"
        )
    if access == "admin" and principal.role != ADMIN:
        raise Refused("Authorization", "this needs an admin's token")


def may_act_on(principal: Principal, owner: str) -> bool:
    """Whether the principal may act on (or read the private parts of) ``owner``'s things."""
    return principal.is_admin or (principal.token_kind == "user" and principal.user == owner)


def check_owner(principal: Principal, owner: str, what: str) -> None:
    """Refuse (403) unless the principal owns ``what`` or is an admin."""
    if not may_act_on(principal, owner):
        raise Refused("", f"{what} belongs to {owner}: only its owner or an admin may do this")


F = TypeVar("F", bound=Callable[..., object])
ACCESS_ATTRIBUTE = "__hakuriver_access__"


def rule(access: Access) -> Callable[[F], F]:
    """Declare a route's access rule (the app's middleware applies it)."""

    def mark(handler: F) -> F:
        setattr(handler, ACCESS_ATTRIBUTE, access)
        return handler

    return mark


def rule_of(handler: object) -> Access | None:
    """The access rule a route handler declared (None: it declared none, and is refused).

    Sanic registers a websocket route as ``partial(app._websocket_handler, handler)``:
    the rule is on the handler inside.
    """
    found = getattr(handler, ACCESS_ATTRIBUTE, None)
    if found is None and isinstance(handler, functools.partial):
        for inner in handler.args[:1]:
            found = getattr(inner, ACCESS_ATTRIBUTE, None)
    return found


class FailureLog:
    """Which refused credentials to record: one ``auth.failed`` per address and window.

    The first refusal from an address in a window is recorded with the count of those
    not recorded since; at most ``max_per_window`` addresses are recorded per window, so
    a flood from many addresses cannot flood the log either.
    """

    def __init__(self, window_s: float = 60.0, max_per_window: int = 100) -> None:
        self.window_s = window_s
        self.max_per_window = max_per_window
        self._window_start = float("-inf")
        self._recorded: set[str] = set()
        self._unrecorded: dict[str, int] = {}

    def note(self, address: str, route: str, reason: str, now: float) -> AuthFailed | None:
        """The event to record for this refusal, or None (it is counted for later)."""
        if now - self._window_start >= self.window_s:
            self._window_start = now
            self._recorded.clear()
        count = self._unrecorded.pop(address, 0) + 1
        if address in self._recorded or len(self._recorded) >= self.max_per_window:
            if len(self._unrecorded) < 10_000:
                self._unrecorded[address] = count
            return None
        self._recorded.add(address)
        return AuthFailed(client_address=address, route=route, reason=reason, count=count)


PAGE_ATTRIBUTE = "__hakuriver_page__"


def page_too(handler: F) -> F:
    """Mark a route whose path is also a dashboard page's address (``GET /tasks``, ``GET
    /nodes``: the original API's routes, routes/compat.py): a browser's navigation there gets
    the page shell (public, no data), anything else the route under its rule."""
    setattr(handler, PAGE_ATTRIBUTE, True)
    return handler


def wants_page(handler: object, headers: Mapping[str, str]) -> bool:
    """Whether a request to a ``page_too`` route is a browser's navigation to the page: it
    asks for HTML and carries no ``Authorization`` header. A browser's navigation never
    carries one (the dashboard's session is a cookie); a script must, to use the route, and
    its client asks for ``*/*`` or JSON, so it gets the route (or the 401 naming the header)."""
    if not getattr(handler, PAGE_ATTRIBUTE, False):
        return False
    return "authorization" not in headers and "text/html" in headers.get("accept", "")
