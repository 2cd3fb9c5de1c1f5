"""``/api/whoami``, ``/api/users``, ``/api/tokens``, ``/api/join``, ``/api/keys`` and
``/api/nodes/<name>/revoke``: identity, as thin adapters of the identity commands.

A token's secret is made here (the OS's random generator), answered once, and only its
SHA-256 reaches the log (``events.credentials``).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
from msgspec import Struct
from sanic import Request
from sanic.response import HTTPResponse

from control_plane.access import Principal, rule
from control_plane.commands import (
    AddKey,
    ChangeRole,
    CreateUser,
    DisableUser,
    EnrollNode,
    IssueToken,
    RemoveKey,
    RevokeNode,
    RevokeToken,
)
from control_plane.errors import InvalidRequest, NotFound, Refused
from control_plane.openapi import Query, api, flag, shape
from control_plane.routes.common import (
    JsonBlueprint,
    answer,
    control_plane,
    json_object,
    principal_of,
)
from events.credentials import make_token
from events.envelope import now_us
from events.ids import new_id
from projections.identity import KeyView, TokenView, UserView

bp = JsonBlueprint("identity", url_prefix="/api")

# The answers this module writes as dicts, for the OpenAPI document (control_plane/openapi.py).
Whoami = shape(
    "Whoami",
    user=str,
    role=str,
    token_id=str,
    token_kind=str,
    node=str | None,
    expires_at_us=int | None,
)


class UserDoc(Struct, kw_only=True):
    """A user, as the identity routes answer it."""

    name: str
    role: str
    disabled: bool
    created_at_us: int | None
    created_by: str | None


UserList = shape("UserList", users=list[UserDoc])


class TokenDoc(Struct, kw_only=True):
    """A token (never its secret), as the identity routes answer it."""

    id: str
    user: str
    kind: str
    name: str
    issued_at_us: int | None
    expires_at_us: int | None
    issued_by: str | None
    revoked: bool
    uses_left: int | None
    node: str | None


TokenList = shape("TokenList", tokens=list[TokenDoc])
TokenMade = msgspec.defstruct(
    "TokenMade",
    [("token", str), ("host_url", str | None), ("ca_fingerprint", str | None)],
    bases=(TokenDoc,),
    kw_only=True,
)
Revoked = shape("Revoked", id=str, revoked=bool)
Joined = shape("Joined", token=str, node=str, id=str)
NodeRevoked = shape("NodeRevoked", node=str, revoked=bool)


class KeyDoc(Struct, kw_only=True):
    """An SSH public key, as the identity routes answer it."""

    id: str
    user: str
    type: str
    fingerprint: str
    comment: str
    public_key: str
    added_at_us: int | None


KeyList = shape("KeyList", keys=list[KeyDoc])
KeyAdded = shape("KeyAdded", key=KeyDoc)
KeyRemoved = shape("KeyRemoved", id=str, removed=bool)
# The bodies these routes read field by field (json_object and _string).
UserRequest = shape("UserRequest", name=str, role=str)
RoleRequest = shape("RoleRequest", role=str)
TokenRequest = shape(
    "TokenRequest", kind=str, user=str, name=str, uses=int | None, ttl_s=float | None
)
JoinRequest = shape("JoinRequest", node=str)
KeyRequest = shape("KeyRequest", public_key=str, user=str)
_WHOSE = (
    Query("user", str, "this user's (admins only, for another user)"),
    flag("all", "every user's (admins only)"),
)

MAX_TTL_S = 100 * 365 * 86400
MAX_KEY_LENGTH = 16384


def _user_doc(user: UserView) -> dict[str, Any]:
    return {
        "name": user.name,
        "role": user.role,
        "disabled": user.disabled,
        "created_at_us": user.created_at_us,
        "created_by": user.created_by,
    }


def _token_doc(token: TokenView) -> dict[str, Any]:
    return {
        "id": token.id,
        "user": token.user,
        "kind": token.kind,
        "name": token.name,
        "issued_at_us": token.issued_at_us,
        "expires_at_us": token.expires_at_us,
        "issued_by": token.issued_by,
        "revoked": token.revoked,
        "uses_left": token.uses_left,
        "node": token.node,
    }


def _key_doc(key: KeyView) -> dict[str, Any]:
    return {
        "id": key.id,
        "user": key.user,
        "type": key.key_type,
        "fingerprint": key.fingerprint,
        "comment": key.comment,
        "public_key": key.public_key,
        "added_at_us": key.added_at_us,
    }


def _string(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise InvalidRequest(name, "must be a string" if name in body else "is required")
    return value


# -- who am I -----------------------------------------------------------------------------


@bp.get("/whoami")
@rule("user")
@api("Who the caller is", response=Whoami)
async def whoami(request: Request) -> HTTPResponse:
    """The caller: user, role and the token used."""
    p = principal_of(request)
    return answer(
        {
            "user": p.user,
            "role": p.role,
            "token_id": p.token_id,
            "token_kind": p.token_kind,
            "node": p.node,
            "expires_at_us": p.expires_at_us,
        }
    )


# -- users --------------------------------------------------------------------------------


@bp.get("/users")
@rule("admin")
@api("The users", response=UserList)
async def list_users(request: Request) -> HTTPResponse:
    """Every user account."""
    users = control_plane(request).state.identity.users.values()
    return answer({"users": [_user_doc(u) for u in sorted(users, key=lambda u: u.name)]})


def _user_answer(request: Request, name: str, status: int = 200) -> HTTPResponse:
    return answer(
        {"user": _user_doc(control_plane(request).state.identity.users[name])}, status=status
    )


@bp.post("/users")
@rule("admin")
@api("Make a user", request=UserRequest, response=UserDoc, status=201)
async def create_user(request: Request) -> HTTPResponse:
    """Make a user: ``{"name": "bob", "role": "user"}``."""
    body = json_object(request)
    name, role = _string(body, "name"), _string(body, "role", "user")
    await control_plane(request).execute(
        CreateUser(name=name, role=role, actor=principal_of(request))
    )
    return _user_answer(request, name, 201)


@bp.post("/users/<name:str>/role")
@rule("admin")
@api("Change a user's role", request=RoleRequest, response=UserDoc)
async def change_role(request: Request, name: str) -> HTTPResponse:
    """Change a user's role: ``{"role": "admin"}``."""
    role = _string(json_object(request), "role")
    await control_plane(request).execute(
        ChangeRole(name=name, role=role, actor=principal_of(request))
    )
    return _user_answer(request, name)


@bp.post("/users/<name:str>/disable")
@rule("admin")
@api("Disable a user", response=UserDoc)
async def disable_user(request: Request, name: str) -> HTTPResponse:
    """Disable a user: none of their tokens works from now on."""
    await control_plane(request).execute(DisableUser(name=name, actor=principal_of(request)))
    return _user_answer(request, name)


# -- tokens -------------------------------------------------------------------------------


@bp.get("/tokens")
@rule("user")
@api("The caller's tokens", response=TokenList, query=_WHOSE)
async def list_tokens(request: Request) -> HTTPResponse:
    """The caller's tokens; an admin's ``all=1`` (every user's) or ``user=U``."""
    p = principal_of(request)
    user = request.args.get("user")
    every = request.args.get("all", "0").lower() in ("1", "true", "yes")
    if (every or (user is not None and user != p.user)) and not p.is_admin:
        raise Refused("user", "other users' tokens: this needs an admin's token")
    wanted = None if every else (user or p.user)
    tokens = control_plane(request).state.identity.tokens.values()
    return answer({"tokens": [_token_doc(t) for t in tokens if wanted is None or t.user == wanted]})


def _ttl_us(body: dict[str, Any]) -> int | None:
    ttl = body.get("ttl_s")
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
        raise InvalidRequest("ttl_s", "must be a number of seconds, or null for no expiry")
    if not 0 < ttl <= MAX_TTL_S:
        raise InvalidRequest("ttl_s", f"must be between 1 and {MAX_TTL_S} seconds")
    return now_us() + int(ttl * 1_000_000)


@bp.post("/tokens")
@rule("user")
@api(
    "Make a token (its secret is in this answer only)",
    request=TokenRequest,
    response=TokenMade,
    status=201,
)
async def create_token(request: Request) -> HTTPResponse:
    """A new token (its secret is in this answer and nowhere else)."""
    p = principal_of(request)
    body = json_object(request)
    kind = _string(body, "kind", "user")
    if kind not in ("user", "join"):
        raise InvalidRequest("kind", f"must be user or join, not {kind!r}")
    user = _string(body, "user", p.user)
    name = _string(body, "name", "")
    uses = body.get("uses")
    if uses is not None and (isinstance(uses, bool) or not isinstance(uses, int) or uses < 1):
        raise InvalidRequest("uses", "must be a whole number of at least 1")
    if uses is not None and uses > 10_000:
        raise InvalidRequest("uses", "at most 10000")
    expires = _ttl_us(body)
    made = make_token("user" if kind == "user" else "join")
    cp = control_plane(request)
    await cp.execute(
        IssueToken(
            user=user,
            kind=kind,
            token_id=made.id,
            sha256=made.sha256,
            actor=p,
            name=name,
            expires_at_us=expires,
            uses=uses,
        )
    )
    settings = cp.settings
    return answer(
        {
            "token": made.text,
            **_token_doc(cp.state.identity.tokens[made.id]),
            "host_url": settings.url,
            "ca_fingerprint": _fingerprint(request),
        },
        status=201,
    )


def _fingerprint(request: Request) -> str | None:
    """The CA fingerprint clients pin (None without TLS): join commands carry it."""
    tls = getattr(request.app.ctx, "tls", None)
    return getattr(tls, "fingerprint", None) if tls is not None else None


@bp.post("/tokens/<token_id:str>/revoke")
@rule("user")
@api("Revoke a token", response=Revoked)
async def revoke_token(request: Request, token_id: str) -> HTTPResponse:
    """Revoke one of the caller's tokens (an admin: anyone's)."""
    await control_plane(request).execute(
        RevokeToken(token_id=token_id, actor=principal_of(request))
    )
    return answer({"id": token_id, "revoked": True})


# -- nodes --------------------------------------------------------------------------------


@bp.post("/join")
@rule("join")
@api(
    "Exchange a join token for a node's agent credential",
    request=JoinRequest,
    response=Joined,
    status=201,
)
async def join(request: Request) -> HTTPResponse:
    """Exchange a join token for node ``node``'s own agent credential (once per use)."""
    node = _string(json_object(request), "node")
    made = make_token("agent")
    await control_plane(request).execute(
        EnrollNode(node=node, token_id=made.id, sha256=made.sha256, actor=principal_of(request))
    )
    return answer({"token": made.text, "node": node, "id": made.id}, status=201)


@bp.post("/nodes/<name:str>/revoke")
@rule("admin")
@api("Revoke a node's credential", response=NodeRevoked)
async def revoke_node(request: Request, name: str) -> HTTPResponse:
    """Disconnect a node's agent and refuse its credential (and name) from now on."""
    await control_plane(request).execute(RevokeNode(node=name, actor=principal_of(request)))
    return answer({"node": name, "revoked": True})


# -- SSH keys -----------------------------------------------------------------------------


def _parse_key(text: str) -> tuple[str, str, str, str]:
    """(type, the key line without its comment, SHA256 fingerprint, comment)."""
    import asyncssh

    line = text.strip()
    if not line or len(line) > MAX_KEY_LENGTH or "\n" in line or "\r" in line:
        raise InvalidRequest(
            "public_key", "one OpenSSH public key line (ssh-ed25519 AAAA… comment)"
        )
    try:
        key = asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise InvalidRequest("public_key", f"not an OpenSSH public key: {exc}") from None
    parts = line.split(None, 2)
    comment = parts[2] if len(parts) > 2 else ""
    algorithm = key.get_algorithm()
    exported = key.export_public_key("openssh").decode().split()
    return algorithm, f"{exported[0]} {exported[1]}", key.get_fingerprint("sha256"), comment


@bp.get("/keys")
@rule("user")
@api("The caller's SSH public keys", response=KeyList, query=_WHOSE)
async def list_keys(request: Request) -> HTTPResponse:
    """The caller's SSH public keys (an admin: ``user=U``'s, or ``all=1``)."""
    p = principal_of(request)
    user = request.args.get("user")
    every = request.args.get("all", "0").lower() in ("1", "true", "yes")
    if (every or (user is not None and user != p.user)) and not p.is_admin:
        raise Refused("user", "other users' keys: this needs an admin's token")
    wanted = None if every else (user or p.user)
    keys = control_plane(request).state.identity.keys.values()
    return answer({"keys": [_key_doc(k) for k in keys if wanted is None or k.user == wanted]})


@bp.post("/keys")
@rule("user")
@api("Register an SSH public key", request=KeyRequest, response=KeyAdded, status=201)
async def add_key(request: Request) -> HTTPResponse:
    """Register an SSH public key: ``{"public_key": "ssh-ed25519 AAAA… me@laptop"}``."""
    p = principal_of(request)
    body = json_object(request)
    user = _string(body, "user", p.user)
    key_type, public_key, fingerprint, comment = _parse_key(_string(body, "public_key"))
    key_id = new_id()[-12:]
    cp = control_plane(request)
    await cp.execute(
        AddKey(
            user=user,
            key_id=key_id,
            key_type=key_type,
            public_key=public_key,
            fingerprint=fingerprint,
            comment=comment[:200],
            actor=p,
        )
    )
    return answer({"key": _key_doc(cp.state.identity.keys[key_id])}, status=201)


@bp.delete("/keys/<key_id:str>")
@rule("user")
@api("Remove an SSH public key", response=KeyRemoved)
async def remove_key(request: Request, key_id: str) -> HTTPResponse:
    """Remove one of the caller's SSH keys (an admin: anyone's)."""
    cp = control_plane(request)
    if key_id not in cp.state.identity.keys:
        raise NotFound("key_id", f"no key {key_id!r}")
    await cp.execute(RemoveKey(key_id=key_id, actor=principal_of(request)))
    return answer({"id": key_id, "removed": True})


__all__ = ["Principal", "bp"]
