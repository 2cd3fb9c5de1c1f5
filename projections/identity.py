"""Users, tokens, enrolled nodes and SSH keys, as folded from the identity events.

Pure bookkeeping like the rest of ``projections``: what ``user.*``, ``token.*``,
``node.enrolled``/``node.revoked`` and ``ssh_key.*`` events say, nothing about
whether a request may do something (that is ``control_plane/access.py``).
"""

from __future__ import annotations

from msgspec import Struct, field

from events.types import (
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


class UserView(Struct, kw_only=True):
    """A user account."""

    name: str
    role: str = "user"
    disabled: bool = False
    created_at_us: int = 0
    created_by: str = ""


class TokenView(Struct, kw_only=True):
    """An API token, without its secret (only the secret's SHA-256)."""

    id: str
    user: str
    kind: str
    sha256: str
    name: str = ""
    issued_at_us: int = 0
    expires_at_us: int | None = None
    issued_by: str = ""
    revoked: bool = False
    uses_left: int | None = None  # join tokens: how many more nodes may join with it
    node: str | None = None  # agent tokens: the node it is the credential of


class KeyView(Struct, kw_only=True):
    """An SSH public key a user registered."""

    id: str
    user: str
    key_type: str
    public_key: str
    fingerprint: str
    comment: str = ""
    added_at_us: int = 0


class Identity(Struct, kw_only=True):
    """Every user, token, enrolled node and key; part of the cluster state and its snapshot."""

    users: dict[str, UserView] = field(default_factory=dict)
    tokens: dict[str, TokenView] = field(default_factory=dict)
    keys: dict[str, KeyView] = field(default_factory=dict)
    # Enrolled node name -> the id of its agent credential.
    enrolled: dict[str, str] = field(default_factory=dict)
    revoked_nodes: list[str] = field(default_factory=list)
    # User -> {fingerprint: key id} of their registered keys: the SSH gateway finds a
    # presented key in one lookup, whatever the number of users and keys.
    keys_of: dict[str, dict[str, str]] = field(default_factory=dict)
    # User -> {fingerprint: key id} of the keys they removed (and did not add again): the
    # gateway refuses them even where a VPS task's spec still holds a copy.
    removed_keys: dict[str, dict[str, str]] = field(default_factory=dict)

    def key_of(self, user: str, fingerprint: str) -> KeyView | None:
        """``user``'s registered key with this fingerprint, if any."""
        key_id = self.keys_of.get(user, {}).get(fingerprint)
        return self.keys.get(key_id) if key_id is not None else None

    def key_removed(self, user: str, fingerprint: str) -> bool:
        """Whether ``user`` removed a key with this fingerprint (and did not add it again)."""
        return fingerprint in self.removed_keys.get(user, {})

    def apply(self, event: object, at: int) -> str | None:
        """Fold one identity event (recorded at ``at``); a reason if it makes no sense."""
        match event:
            case UserCreated() as e:
                if e.name in self.users:
                    return "user created twice"
                self.users[e.name] = UserView(
                    name=e.name,
                    role=e.role,
                    created_at_us=at,
                    created_by=e.actor.user if e.actor else "",
                )
            case UserRoleChanged() as e:
                user = self.users.get(e.name)
                if user is None:
                    return "role change for an unknown user"
                user.role = e.role
            case UserDisabled() as e:
                user = self.users.get(e.name)
                if user is None:
                    return "unknown user disabled"
                user.disabled = True
            case TokenIssued() as e:
                if e.token_id in self.tokens:
                    return "token id issued twice"
                self.tokens[e.token_id] = TokenView(
                    id=e.token_id,
                    user=e.user,
                    kind=e.token_kind,
                    sha256=e.sha256,
                    name=e.name,
                    issued_at_us=at,
                    expires_at_us=e.expires_at_us,
                    issued_by=e.issued_by,
                    uses_left=e.uses,
                    node=e.node,
                )
            case TokenRevoked() as e:
                token = self.tokens.get(e.token_id)
                if token is None:
                    return "unknown token revoked"
                token.revoked = True
            case NodeEnrolled() as e:
                self.enrolled[e.node] = e.token_id
                # A name an admin revoked may be enrolled again (a rebuilt machine): its
                # new credential works, the old one stays revoked.
                if e.node in self.revoked_nodes:
                    self.revoked_nodes.remove(e.node)
                join = self.tokens.get(e.join_token_id)
                if join is not None and join.uses_left is not None:
                    join.uses_left = max(0, join.uses_left - 1)
            case NodeRevoked() as e:
                if e.node not in self.revoked_nodes:
                    self.revoked_nodes.append(e.node)
                token = self.tokens.get(self.enrolled.get(e.node, ""))
                if token is not None:
                    token.revoked = True
            case SshKeyAdded() as e:
                self.keys[e.key_id] = KeyView(
                    id=e.key_id,
                    user=e.user,
                    key_type=e.key_type,
                    public_key=e.public_key,
                    fingerprint=e.fingerprint,
                    comment=e.comment,
                    added_at_us=at,
                )
                self.keys_of.setdefault(e.user, {})[e.fingerprint] = e.key_id
                _discard(self.removed_keys, e.user, e.fingerprint)
            case SshKeyRemoved() as e:
                removed = self.keys.pop(e.key_id, None)
                if removed is None:
                    return "unknown key removed"
                registered = self.keys_of.get(removed.user, {})
                if registered.get(removed.fingerprint) == removed.id:
                    _discard(self.keys_of, removed.user, removed.fingerprint)
                    self.removed_keys.setdefault(removed.user, {})[removed.fingerprint] = removed.id
        return None


def _discard(index: dict[str, dict[str, str]], user: str, fingerprint: str) -> None:
    """Drop ``fingerprint`` from ``user``'s entry (and the entry once empty)."""
    entry = index.get(user)
    if entry is not None:
        entry.pop(fingerprint, None)
        if not entry:
            del index[user]


IDENTITY_KINDS = frozenset(
    {
        "user.created",
        "user.role_changed",
        "user.disabled",
        "token.issued",
        "token.revoked",
        "node.enrolled",
        "node.revoked",
        "ssh_key.added",
        "ssh_key.removed",
    }
)
