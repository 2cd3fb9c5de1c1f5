"""Rich renderings of the identity documents: users, tokens, SSH keys, ``whoami``.

Like render.py, every function takes the JSON dicts the API returns and tolerates
missing keys. The API's times are microseconds since the epoch (``*_at_us``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cli.hakuriver.render import escaped

Doc = Mapping[str, Any]


def stamp_us(micros: int | None, *, never: str = "-") -> str:
    """Microseconds since the epoch as ``2026-12-02 13:04:46Z``; None as ``never``."""
    if micros is None:
        return never
    return datetime.fromtimestamp(micros / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def token_state(token: Doc, now_us: int | None = None) -> str:
    """``active``, ``revoked``, ``expired`` or ``used up``."""
    now = time.time_ns() // 1000 if now_us is None else now_us
    expires = token.get("expires_at_us")
    if token.get("revoked"):
        return "revoked"
    if expires is not None and expires <= now:
        return "expired"
    if token.get("uses_left") == 0:
        return "used up"
    return "active"


_STATE_STYLES = {"active": "green", "revoked": "red", "expired": "bright_black"}


@escaped
def user_table(users: Sequence[Doc]) -> Table:
    """``user list``: one row per user."""
    table = _table("USER", "ROLE", "STATE", "CREATED", "BY")
    for user in users:
        disabled = bool(user.get("disabled"))
        table.add_row(
            str(user.get("name", "?")),
            Text(str(user.get("role", "?")), style="bold" if user.get("role") == "admin" else ""),
            Text("disabled", style="red") if disabled else Text("active", style="green"),
            stamp_us(user.get("created_at_us")),
            str(user.get("created_by") or "-"),
        )
    return table


@escaped
def token_table(tokens: Sequence[Doc], now_us: int | None = None) -> Table:
    """``token list``: one row per token (never its secret: the host does not keep it)."""
    table = _table("ID", "USER", "KIND", "NAME", "STATE", "ISSUED", "EXPIRES", "BY", "USES", "NODE")
    for token in tokens:
        state = token_state(token, now_us)
        uses = token.get("uses_left")
        table.add_row(
            str(token.get("id", "?")),
            str(token.get("user") or "-"),
            str(token.get("kind", "?")),
            str(token.get("name") or "-"),
            Text(state, style=_STATE_STYLES.get(state, "yellow")),
            stamp_us(token.get("issued_at_us")),
            stamp_us(token.get("expires_at_us"), never="never"),
            str(token.get("issued_by") or "-"),
            "-" if uses is None else str(uses),
            str(token.get("node") or "-"),
        )
    return table


@escaped
def key_table(keys: Sequence[Doc]) -> Table:
    """``key list``: one row per SSH public key."""
    table = _table("ID", "USER", "TYPE", "FINGERPRINT", "COMMENT", "ADDED")
    for key in keys:
        table.add_row(
            str(key.get("id", "?")),
            str(key.get("user") or "-"),
            str(key.get("type") or "-"),
            str(key.get("fingerprint") or "-"),
            str(key.get("comment") or "-"),
            stamp_us(key.get("added_at_us")),
        )
    return table


@escaped
def whoami_panel(me: Doc) -> Panel:
    """``whoami``: the user, the role, and the token presented."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("user", str(me.get("user", "?")))
    grid.add_row("role", str(me.get("role", "?")))
    grid.add_row("token", f"{me.get('token_id') or '-'} ({me.get('token_kind') or '?'})")
    if me.get("node"):
        grid.add_row("node", str(me["node"]))
    grid.add_row("expires", stamp_us(me.get("expires_at_us"), never="never"))
    return Panel(grid, title="whoami", title_align="left", expand=False)


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=True)
    return table
