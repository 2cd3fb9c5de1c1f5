"""Users, tokens, enrolled nodes and SSH keys: who may change them, and what it records.

The routes have already authenticated the caller and applied the route's rule
(``control_plane/access.py``); these decisions check what depends on the state (the
user exists, the caller owns the token or key, the node name is free) and record the
change with the caller as its actor (``ControlPlane.execute`` stamps it).
"""

from __future__ import annotations

from control_plane.access import ADMIN, Principal, check_owner
from control_plane.commands.types import (
    AddKey,
    ChangeRole,
    Context,
    CreateUser,
    Decision,
    DisableUser,
    EnrollNode,
    IssueToken,
    RemoveKey,
    RevokeNode,
    RevokeToken,
)
from control_plane.errors import Conflict, InvalidRequest, NotFound, Refused
from events.config import node_name_problem
from events.types import (
    AnyEvent,
    NodeEnrolled,
    NodeRevoked,
    SshKeyAdded,
    SshKeyRemoved,
    TokenIssued,
    TokenRevoked,
    UserCreated,
    UserDisabled,
    UserRoleChanged,
)
from projections.cluster import ClusterState
from projections.identity import UserView

ROLES = ("admin", "user")
MAX_NAME = 64
# The most tokens one user may hold at once (not revoked, not expired): a runaway script
# cannot grow the identity state without bound.
MAX_TOKENS_PER_USER = 1000


def user_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a user name (None if it can).

    Like a Unix login name, so that ``run_tasks_as = "owner"`` can map it to an account:
    a lowercase letter or ``_`` first, then lowercase letters, digits, ``_``, ``-``, ``.``.
    """
    if not name:
        return "a user name cannot be empty"
    if len(name) > MAX_NAME:
        return f"a user name has at most {MAX_NAME} characters"
    first, rest = name[0], name[1:]
    if not ((first.islower() and first.isascii()) or first == "_") or not all(
        (c.isascii() and (c.islower() or c.isdigit())) or c in "_-." for c in rest
    ):
        return (
            f"{name!r} is not a user name: a lowercase letter or '_' first, then lowercase"
            " letters, digits, '_', '-' or '.'"
        )
    return None


def _user(state: ClusterState, name: str, field: str = "name") -> UserView:
    user = state.identity.users.get(name)
    if user is None:
        raise NotFound(field, f"no user {name!r}")
    return user


def _role(role: str) -> None:
    if role not in ROLES:
        raise InvalidRequest("role", f"must be one of {', '.join(ROLES)}, not {role!r}")


def decide_create_user(state: ClusterState, command: CreateUser, ctx: Context) -> Decision:
    problem = user_name_problem(command.name)
    if problem:
        raise InvalidRequest("name", problem)
    _role(command.role)
    if command.name in state.identity.users:
        raise Conflict("name", f"user {command.name!r} already exists")
    return Decision(events=[UserCreated(name=command.name, role=command.role)])  # type: ignore[arg-type]


def _active_admins(state: ClusterState) -> list[str]:
    return [u.name for u in state.identity.users.values() if u.role == ADMIN and not u.disabled]


def decide_change_role(state: ClusterState, command: ChangeRole, ctx: Context) -> Decision:
    _role(command.role)
    user = _user(state, command.name)
    if user.role == command.role:
        return Decision()
    if user.role == ADMIN and _active_admins(state) == [user.name]:
        raise Conflict("role", f"{user.name} is the last admin: make another admin first")
    return Decision(events=[UserRoleChanged(name=user.name, role=command.role)])  # type: ignore[arg-type]


def decide_disable_user(state: ClusterState, command: DisableUser, ctx: Context) -> Decision:
    user = _user(state, command.name)
    if user.disabled:
        return Decision()
    if user.role == ADMIN and _active_admins(state) == [user.name]:
        raise Conflict("name", f"{user.name} is the last admin: make another admin first")
    return Decision(events=[UserDisabled(name=user.name)])


def decide_issue_token(state: ClusterState, command: IssueToken, ctx: Context) -> Decision:
    actor = command.actor
    if command.kind not in ("user", "join"):
        raise InvalidRequest("kind", f"must be user or join, not {command.kind!r}")
    if command.kind == "join" and not actor.is_admin:
        raise Refused("kind", "join tokens enrol nodes: this needs an admin's token")
    if command.user != actor.user and not actor.is_admin:
        raise Refused("user", "a token for another user needs an admin's token")
    user = _user(state, command.user, "user")
    if user.disabled:
        raise Conflict("user", f"user {user.name} is disabled")
    if command.expires_at_us is not None and command.expires_at_us <= ctx.now_us:
        raise InvalidRequest("ttl_s", "must be positive")
    if command.uses is not None and command.kind != "join":
        raise InvalidRequest("uses", "only join tokens have a number of uses")
    if len(command.name) > 128 or not command.name.isprintable():
        raise InvalidRequest("name", "a printable name of at most 128 characters")
    live = sum(
        1
        for t in state.identity.tokens.values()
        if t.user == user.name
        and not t.revoked
        and (t.expires_at_us is None or t.expires_at_us > ctx.now_us)
    )
    if live >= MAX_TOKENS_PER_USER:
        raise Conflict("user", f"{user.name} holds {live} live tokens: revoke some first")
    return Decision(
        events=[
            TokenIssued(
                token_id=command.token_id,
                user=user.name,
                token_kind=command.kind,  # type: ignore[arg-type]
                sha256=command.sha256,
                name=command.name,
                expires_at_us=command.expires_at_us,
                issued_by=actor.user,
                uses=(command.uses if command.uses is not None else 1)
                if command.kind == "join"
                else None,
            )
        ]
    )


def decide_revoke_token(state: ClusterState, command: RevokeToken, ctx: Context) -> Decision:
    token = state.identity.tokens.get(command.token_id)
    if token is None or not _may_see_token(command.actor, token.user):
        # Another user's token id is answered as unknown: ids are not a secret, but
        # whose they are is nobody else's business.
        raise NotFound("token_id", f"no token {command.token_id!r} of yours")
    if token.revoked:
        return Decision()
    events: list[AnyEvent] = [
        TokenRevoked(token_id=token.id, reason=f"revoked by {command.actor.user}")
    ]
    decision = Decision(events=events)
    if token.kind == "agent" and token.node:
        decision.disconnect.append((token.node, "its credential was revoked"))
    return decision


def _may_see_token(actor: Principal, owner: str) -> bool:
    return actor.is_admin or actor.user == owner


def decide_enroll(state: ClusterState, command: EnrollNode, ctx: Context) -> Decision:
    problem = node_name_problem(command.node)
    if problem:
        raise InvalidRequest("node", problem)
    join = state.identity.tokens.get(command.actor.token_id)
    if join is None or join.kind != "join" or (join.uses_left is not None and join.uses_left <= 0):
        raise Refused("Authorization", "joining needs a join token with uses left")
    current = state.identity.enrolled.get(command.node)
    if current is not None:
        token = state.identity.tokens.get(current)
        if token is not None and not token.revoked:
            raise Conflict(
                "node",
                f"node {command.node} is already enrolled: an admin must revoke it first"
                f" (hakuriver node revoke {command.node}), or choose another name",
            )
    return Decision(
        events=[
            TokenIssued(
                token_id=command.token_id,
                user=join.user,
                token_kind="agent",
                sha256=command.sha256,
                name=f"agent {command.node}",
                issued_by=command.actor.user,
                node=command.node,
            ),
            NodeEnrolled(node=command.node, token_id=command.token_id, join_token_id=join.id),
        ]
    )


def decide_revoke_node(state: ClusterState, command: RevokeNode, ctx: Context) -> Decision:
    enrolled = command.node in state.identity.enrolled
    if not enrolled and command.node not in state.nodes:
        raise NotFound("node", f"no node {command.node!r}")
    decision = Decision(
        events=[NodeRevoked(node=command.node, reason=f"revoked by {command.actor.user}")]
    )
    decision.disconnect.append((command.node, "revoked"))
    return decision


def decide_add_key(state: ClusterState, command: AddKey, ctx: Context) -> Decision:
    if command.user != command.actor.user and not command.actor.is_admin:
        raise Refused("user", "adding a key for another user needs an admin's token")
    _user(state, command.user, "user")
    for key in state.identity.keys.values():
        if key.user == command.user and key.fingerprint == command.fingerprint:
            raise Conflict("public_key", f"this key is already registered (id {key.id})")
    return Decision(
        events=[
            SshKeyAdded(
                key_id=command.key_id,
                user=command.user,
                key_type=command.key_type,
                public_key=command.public_key,
                fingerprint=command.fingerprint,
                comment=command.comment,
            )
        ]
    )


def decide_remove_key(state: ClusterState, command: RemoveKey, ctx: Context) -> Decision:
    key = state.identity.keys.get(command.key_id)
    if key is None or not _may_see_token(command.actor, key.user):
        raise NotFound("key_id", f"no key {command.key_id!r} of yours")
    check_owner(command.actor, key.user, f"key {key.id}")
    return Decision(events=[SshKeyRemoved(key_id=key.id, user=key.user)])
