"""A decision ``Context`` for pure tests of control_plane/commands (no server, no clock)."""

from __future__ import annotations

from control_plane.access import Principal
from control_plane.commands import Context
from control_plane.scheduler import Scheduler
from control_plane.settings import HostSettings
from events.ids import new_id


def context(
    *connected: str,
    now_us: int = 0,
    settings: HostSettings | None = None,
    now_mono: float = 0.0,
    link_peers: dict[str, str] | None = None,
) -> Context:
    """What a decision may know: default settings, these nodes connected (their links from
    ``link_peers``), a fixed clock."""
    return Context(
        settings=settings or HostSettings(),
        connected=frozenset(connected),
        now_us=now_us,
        scheduler=Scheduler(),
        new_id=new_id,
        now_mono=now_mono,
        link_peers=link_peers or {},
    )


def principal(user: str = "alice", role: str = "user") -> Principal:
    """An authenticated user, as the routes hand one to a command."""
    return Principal(user=user, role=role, token_id="t-" + user, token_kind="user")
