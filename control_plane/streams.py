"""Bounds on the event stream (``GET /api/events/stream``) and on jobs' log answers:
slots per client, and (event stream) a deadline on each write.

Each open stream costs the host a coroutine woken by every commit and a read of the log
per wake-up; thousands of them, opened by one client, starved the agents' links (issue
14). So a client (its address and user) holds at most ``per_client`` streams at once
and all clients at most ``total``; one more is answered 429. A subscriber that stops
reading is not buffered for: Sanic's writes wait for the socket to drain, and a write
that cannot complete within ``stall_s`` drops the subscriber (it resumes later with
``Last-Event-ID``).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from control_plane.errors import TooMany


class StreamSlots:
    """Open streams, counted per client."""

    def __init__(self, per_client: int, total: int, what: str = "event streams") -> None:
        self.per_client = per_client
        self.total = total
        self.what = what
        self.open: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, client: str) -> Iterator[None]:
        """One slot for ``client`` while the block runs (``TooMany`` when none is free)."""
        if self.open[client] >= self.per_client:
            raise TooMany(
                "",
                f"this client has {self.open[client]} {self.what} open, the most it may;"
                " close one first",
            )
        if sum(self.open.values()) >= self.total:
            raise TooMany("", f"{self.total} {self.what} are open, the most the host serves")
        self.open[client] += 1
        try:
            yield
        finally:
            self.open[client] -= 1
            if not self.open[client]:
                del self.open[client]
