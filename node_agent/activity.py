"""Knowing when the agent has nothing left to do: the clock of its single-step mode.

Each of the agent's own tasks (the link, its loops, a task's watcher, a command's
handler) counts as busy from the moment it is created until it ends, except while it
awaits something only the outside world ends (``outside``): a frame from the host, a
task's exit, the time of the next heartbeat. ``settle`` returns once nothing is busy
and the agent's own conditions hold for a few turns of the loop in a row; that is how
``Agent.run_until_idle`` steps the real agent, as a worker's burst mode runs until its
queue is empty.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Turns of the event loop an idle state must last: a resolved future wakes its waiter a
# turn or two later (through a shield or a done callback), and that waiter may be busy.
SETTLE_TURNS = 8


class Activity:
    """Counts the agent's busy tasks; see the module docstring."""

    def __init__(self) -> None:
        self.busy = 0
        self._changed = asyncio.Event()

    def start(self, work: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Run ``work`` as a task, counted busy from now until it ends (however it ends)."""
        self.busy += 1
        task = asyncio.get_running_loop().create_task(work, name=name)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, _task: asyncio.Task[Any]) -> None:
        self.busy -= 1
        self._changed.set()

    async def outside(self, awaitable: Awaitable[T]) -> T:
        """Await what only the outside world ends; the calling task is idle meanwhile.

        Only for tasks made by ``start``.
        """
        self.busy -= 1
        self._changed.set()
        try:
            return await awaitable
        finally:
            self.busy += 1

    async def settle(self, idle: Callable[[], bool]) -> None:
        """Return once nothing is busy and ``idle()`` holds, for ``SETTLE_TURNS`` in a row."""
        calm = 0
        while calm < SETTLE_TURNS:
            if self.busy == 0 and idle():
                calm += 1
                await asyncio.sleep(0)
            else:
                calm = 0
                self._changed.clear()
                await self._changed.wait()
