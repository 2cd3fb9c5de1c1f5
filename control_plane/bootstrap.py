"""The host's own identity chores: the first admin, and enrolling the local runner.

At the first start of a host whose log has no user, it makes the user ``admin`` and a
token for it, written to ``<data_dir>/admin.token`` (mode 0600), and logs the path,
never the secret. Order matters for a crash at any point: the token is written to
``admin.token.pending`` first, then recorded, then renamed; a start that finds a
pending file whose token the log knows (and an ``admin.token`` missing) finishes the
rename, and one whose token the log lacks while ``admin`` has none (a crash between the
user's commit and the token's) records it first: no crash can lock the admin out.

``enroll_local`` gives ``hakuriver up``'s runner its agent credential without a join
step: the host is that machine's admin.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from control_plane.access import HOST, Principal
from control_plane.commands import CreateUser, EnrollNode, IssueToken, RevokeToken
from control_plane.hub import ControlPlane
from events.credentials import (
    make_token,
    parse_token,
    read_secret,
    secret_digest,
    write_secret,
)

log = logging.getLogger("hakuriver.host")

ADMIN_USER = "admin"
ADMIN_TOKEN_FILE = "admin.token"
AGENT_TOKEN_FILE = "agent.token"


async def _issue_first_token(cp: ControlPlane, token_id: str, sha256: str) -> None:
    await cp.execute(
        IssueToken(
            user=ADMIN_USER,
            kind="user",
            token_id=token_id,
            sha256=sha256,
            actor=HOST,
            name="first admin (written at the first start)",
        )
    )


def admin_token_path(cp: ControlPlane) -> Path:
    """Where the first admin's token is written: ``<data_dir>/admin.token``."""
    return Path(cp.settings.data_dir).expanduser().resolve() / ADMIN_TOKEN_FILE


async def ensure_admin(cp: ControlPlane) -> Path | None:
    """Make the first admin if the log has no user; the token file's path if one was made."""
    path = admin_token_path(cp)
    pending = path.with_name(path.name + ".pending")
    identity = cp.state.identity
    if identity.users:
        text = read_secret(pending)
        credential = parse_token(text) if text else None
        if credential is not None and not path.exists():
            has_token = any(t.user == ADMIN_USER for t in identity.tokens.values())
            if credential.id not in identity.tokens and not has_token:
                # A crash between the user's commit and the token's: issue the pending one.
                await _issue_first_token(cp, credential.id, secret_digest(credential.secret))
            if credential.id in cp.state.identity.tokens:
                os.replace(pending, path)
                log.info("admin token written to %s (finished after a crash)", path)
                return path
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()
        return None
    made = make_token("user")
    write_secret(pending, made.text)
    await cp.execute(CreateUser(name=ADMIN_USER, role="admin", actor=HOST))
    await _issue_first_token(cp, made.id, made.sha256)
    os.replace(pending, path)
    log.info("first start: made user %r; its token is in %s (mode 0600)", ADMIN_USER, path)
    return path


async def enroll_local(cp: ControlPlane, node: str, state_dir: Path) -> Path:
    """Give the local runner ``node`` an agent credential in ``state_dir`` (if it has none).

    A credential already there that the log knows and has not revoked is kept. Otherwise
    the node's old credential (if any) is revoked and a new one recorded and written.
    """
    path = state_dir / AGENT_TOKEN_FILE
    identity = cp.state.identity
    text = read_secret(path)
    credential = parse_token(text) if text else None
    if credential is not None:
        known = identity.tokens.get(credential.id)
        if known is not None and not known.revoked and known.node == node:
            return path
    old = identity.enrolled.get(node)
    if old is not None and old in identity.tokens and not identity.tokens[old].revoked:
        await cp.execute(RevokeToken(token_id=old, actor=HOST))
    join = make_token("join")
    await cp.execute(
        IssueToken(
            user=ADMIN_USER if ADMIN_USER in identity.users else HOST.user,
            kind="join",
            token_id=join.id,
            sha256=join.sha256,
            actor=HOST,
            name=f"local runner {node}",
            uses=1,
        )
    )
    agent = make_token("agent")
    joiner = Principal(user=ADMIN_USER, role="admin", token_id=join.id, token_kind="join")
    await cp.execute(EnrollNode(node=node, token_id=agent.id, sha256=agent.sha256, actor=joiner))
    write_secret(path, agent.text)
    return path
