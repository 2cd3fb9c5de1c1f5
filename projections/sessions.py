"""SSH sessions into VPS tasks that the log shows opened and not yet closed.

A session is opened (``ssh.session_opened``) and closed (``ssh.session_closed``) by the
host process that relays it (the SSH gateway, ``vps shell``): none survives that process.
A host killed with sessions open leaves their opens without a close; the fold keeps them
here so the next start can record each one's close (control_plane/commands/vps.py,
``CloseSessionsLeftOpen``) as a decision on the state alone.
"""

from __future__ import annotations

from msgspec import Struct

from events.types import SshVia


class SshSessionView(Struct, kw_only=True):
    """An SSH session the log shows open."""

    session_id: str
    task_id: str
    user: str
    via: SshVia = "gateway"
    opened_at_us: int = 0
