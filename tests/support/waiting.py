"""Waiting on conditions with a deadline: the only synchronisation tests use."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

MAX_INTERVAL = 0.1


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds.

    The pause between polls starts at ``interval`` and grows to ``MAX_INTERVAL``: most
    conditions hold within milliseconds, and a long wait polling a real server every 10 ms
    costs both processes CPU the rest of the suite (two cores) needs.
    """
    deadline = time.monotonic() + timeout
    pause = interval
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(pause)
        pause = min(pause * 1.5, max(interval, MAX_INTERVAL))


async def async_wait_until(
    predicate: Callable[[], bool], deadline_s: float = 10.0, interval: float = 0.005
) -> None:
    """Async variant of ``wait_until``."""
    deadline = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {deadline_s}s")
        await asyncio.sleep(interval)
