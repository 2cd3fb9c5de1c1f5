"""The dashboard's logins: browser sessions and one-time login links.

A browser never holds a user's API token. Logging in (with the token pasted once, or a
one-time link from ``hakuriver ui``) makes a *session* of two secrets: one in an
HttpOnly, SameSite=Strict cookie, and a *key* (``csrf``) the page keeps in its origin's
storage and sends in ``X-CSRF-Token`` with every request (``csrf=`` on event streams and
websockets, which cannot carry headers). Both are needed: browsers send a host's cookies
to every port of its name, so another service on the machine could catch the cookie, but
not the key; a cross-site page can make the browser send the cookie, but not the key.

A session stands for the token it was made with: every request checks that token again
(revoked, expired, user disabled or demoted take effect at once, as for the token
itself), and what the session may see and do is exactly what the token may.

Sessions live in the host's memory, hashed: a host restart logs browsers out (they log
in again); nothing of a session reaches the event log but the login itself (``auth``
decisions are the token's). Caps keep a flood from growing them: per user and in all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import NamedTuple

from control_plane.access import Principal, principal_of_token
from control_plane.errors import TooMany, Unauthenticated
from projections.identity import Identity

COOKIE = "hakuriver_session"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 12 * 3600.0  # at most; never beyond the token's own expiry
LINK_TTL_S = 60.0
SESSIONS_PER_USER = 32
SESSIONS_TOTAL = 10_000
LINKS_PER_USER = 5
LINKS_TOTAL = 10_000


class Session(NamedTuple):
    user: str
    token_id: str
    csrf: str
    expires_at: float  # time.monotonic() deadline
    expires_at_us: int | None  # the token's own expiry (wall clock), for the page


class _Link(NamedTuple):
    user: str
    token_id: str
    expires_at: float


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Sessions:
    """Browser sessions and one-time login links, in memory."""

    def __init__(self, ttl_s: float = SESSION_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._sessions: dict[str, Session] = {}
        self._links: dict[str, _Link] = {}

    # -- sessions ---------------------------------------------------------------------

    def open(self, principal: Principal, now_us: int) -> tuple[str, Session]:
        """A new session for ``principal`` (a user token's): its cookie secret and itself.

        Past the per-user cap, that user's oldest session ends; at the total cap, the new
        one is refused (``TooMany``)."""
        now = time.monotonic()
        self._drop_expired(now)
        ttl = self.ttl_s
        if principal.expires_at_us is not None:
            ttl = min(ttl, max(0.0, (principal.expires_at_us - now_us) / 1e6))
        session = Session(
            user=principal.user,
            token_id=principal.token_id,
            csrf=secrets.token_urlsafe(24),
            expires_at=now + ttl,
            expires_at_us=principal.expires_at_us,
        )
        mine = [k for k, s in self._sessions.items() if s.user == principal.user]
        while len(mine) >= SESSIONS_PER_USER:
            self._sessions.pop(mine.pop(0), None)  # dicts keep insertion order: oldest first
        if len(self._sessions) >= SESSIONS_TOTAL:
            # Refused, not evicted: one user's logins must not end other users' sessions.
            raise TooMany("", f"{SESSIONS_TOTAL} dashboard sessions are open; try later")
        secret = "hks_" + secrets.token_urlsafe(32)
        self._sessions[_digest(secret)] = session
        return secret, session

    def find(self, secret: str | None) -> Session | None:
        """The live session of a cookie secret, or None."""
        if not secret:
            return None
        key = _digest(secret)
        session = self._sessions.get(key)
        if session is not None and time.monotonic() >= session.expires_at:
            del self._sessions[key]
            return None
        return session

    def close(self, secret: str | None) -> bool:
        """End the session of ``secret`` (logout); whether there was one."""
        return bool(secret) and self._sessions.pop(_digest(secret or ""), None) is not None

    def count(self) -> int:
        return len(self._sessions)

    def _drop_expired(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if now >= s.expires_at]:
            del self._sessions[key]

    # -- one-time login links ---------------------------------------------------------

    def link(self, principal: Principal) -> str:
        """A one-time login code for ``principal``'s token, valid ``LINK_TTL_S``; past
        ``LINKS_PER_USER`` open ones, that user's oldest is dropped (never another's)."""
        now = time.monotonic()
        for key in [k for k, v in self._links.items() if now >= v.expires_at]:
            del self._links[key]
        mine = [k for k, v in self._links.items() if v.user == principal.user]
        while len(mine) >= LINKS_PER_USER:
            del self._links[mine.pop(0)]
        if len(self._links) >= LINKS_TOTAL:
            raise TooMany("", f"{LINKS_TOTAL} login links are open; try in a minute")
        code = secrets.token_urlsafe(24)
        self._links[_digest(code)] = _Link(principal.user, principal.token_id, now + LINK_TTL_S)
        return code

    def peek(self, code: str) -> str | None:
        """The token id of a live login code, without using it up (the page asks "log in
        as ...?" first: a link from someone else logs the browser in as them)."""
        found = self._links.get(_digest(code))
        if found is None or time.monotonic() >= found.expires_at:
            return None
        return found.token_id

    def redeem(self, code: str) -> str | None:
        """The token id a login code stands for, once (None: unknown, used or expired)."""
        found = self._links.pop(_digest(code), None)
        if found is None or time.monotonic() >= found.expires_at:
            return None
        return found.token_id


def principal_of_token_id(identity: Identity, token_id: str, now_us: int) -> Principal:
    """The principal of a user token known by id (a session's, a login link's), checked
    as access.py checks a presented one."""
    token = identity.tokens.get(token_id)
    if token is None or token.kind != "user":
        raise Unauthenticated("session", "this session's token no longer exists; log in again")
    return principal_of_token(identity, token, now_us, field="session")


def same_origin(origin: str | None, scheme: str, host: str | None) -> bool:
    """Whether a browser's ``Origin`` header names this host as the request reached it
    (scheme, name and port; no header: not a browser's cross-site request, which always
    carries one on a POST or a websocket). Behind a proxy, the proxy must keep ``Host``."""
    if not origin:
        return True
    if origin == "null" or not host:
        return False
    base = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return _normal_origin(origin) == _normal_origin(f"{base}://{host}")


def _normal_origin(url: str) -> str:
    scheme, _, rest = url.strip().lower().rstrip("/").partition("://")
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and rest.endswith(default):
        rest = rest[: -len(default)]
    return f"{scheme}://{rest}"


def csrf_matches(session: Session, presented: str | None) -> bool:
    """Whether the CSRF secret presented is the session's."""
    return bool(presented) and hmac.compare_digest(session.csrf, presented or "")
