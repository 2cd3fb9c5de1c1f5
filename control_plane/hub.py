"""The control plane's running core: the log, the folded state, and the loops around them.

``ControlPlane`` owns the ``EventStore`` and the in-memory ``ClusterState`` (kept
current by a store listener, so after ``record`` returns the state already
includes what was recorded). Routes and agent sessions call it; it does not know
about HTTP.

Decisions and facts. A *decision* (placing a task, a kill, a node declared
offline) is made against the state and must not interleave with another change,
or it could be made on stale state: decisions hold the gate exclusively. *Facts*
reported by agents (a task started, finished...) and submissions, which conflict
with nothing, hold it shared, so they still commit together in one group.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from control_plane.decide import run_command
from control_plane.monitor import decide_give_up, decide_offline, overdue
from control_plane.scheduler import Scheduler
from control_plane.settings import HostSettings
from events import link
from events.envelope import NewEvent, Recorded, new_event, now_us
from events.snapshot_files import CLUSTER as SNAPSHOT_NAME
from events.store import EventStore
from events.types import AnyEvent, TaskDispatched, TaskPlaced, TaskSubmitted
from projections.cluster import ClusterState
from projections.tasks import TaskView

if TYPE_CHECKING:
    from control_plane.agents import AgentSession

log = logging.getLogger("hakuriver.host")

HOST_SOURCE = "host"
# Kinds after which the scheduler may find something new to place.
_RESCHEDULE = frozenset(
    {
        "task.submitted",
        "task.finished",
        "task.lost",
        "node.registered",
        "node.online",
        "node.offline",
    }
)


class NodeNotOnline(Exception):
    """An agent reported facts for a node the host declared offline (it must say hello)."""


class Gate:
    """Shared holders run together; an exclusive holder runs alone (and goes first)."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            async with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            self._waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._exclusive and not self._shared)
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            async with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class ControlPlane:
    """The store, the state, the scheduler, the agents, and their loops."""

    def __init__(self, settings: HostSettings, store: EventStore, state: ClusterState) -> None:
        self.settings = settings
        self.store = store
        self.state = state
        self.scheduler = Scheduler(settings.scheduler.policy)
        self.gate = Gate()
        self.agents: dict[str, AgentSession] = {}
        # When each node was last heard from, on this process's monotonic clock.
        self.seen: dict[str, float] = {}
        self.started = time.monotonic()
        self.started_us = now_us()
        self._schedule = asyncio.Event()
        self._changed = asyncio.Event()
        self._snapshot_due = asyncio.Event()
        self._snapshot_seq = state.last_seq
        self._tasks: list[asyncio.Task[None]] = []
        store.add_listener(self._on_commit)

    @classmethod
    async def open(cls, settings: HostSettings) -> ControlPlane:
        """Open the log and rebuild the state: newest snapshot plus the tail."""
        path = settings.db_path
        path.parent.mkdir(parents=True, exist_ok=True)
        settings.shared_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("task_outputs", "task_errors"):
            (settings.shared_dir / sub).mkdir(exist_ok=True)
        store = await EventStore.open(path)
        snapshot = await store.latest_snapshot(SNAPSHOT_NAME)
        after = snapshot[0] if snapshot else 0
        tail = await store.read(after=after)
        state = await asyncio.to_thread(
            ClusterState.rebuild, snapshot[1] if snapshot else None, tail
        )
        log.info("state rebuilt at seq %d (snapshot %d, tail %d)", state.last_seq, after, len(tail))
        return cls(settings, store, state)

    def start(self) -> None:
        """Start the scheduler, liveness and snapshot loops."""
        for name, loop in (
            ("scheduler", self._scheduler_loop),
            ("monitor", self._monitor_loop),
            ("snapshots", self._snapshot_loop),
        ):
            self._tasks.append(asyncio.create_task(loop(), name=f"hakuriver-{name}"))
        self._schedule.set()

    async def close(self) -> None:
        """Stop the loops, close agent links, write a final snapshot, close the log."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for session in list(self.agents.values()):
            await session.close(reason="control plane shutting down")
        with contextlib.suppress(Exception):
            await self.snapshot()
        await self.store.close()

    # -- recording -------------------------------------------------------------------------

    async def record(self, events: Sequence[AnyEvent], source: str = HOST_SOURCE) -> list[int]:
        """Append events made here (the caller holds the gate as its decision needs)."""
        return await self.store.append([new_event(e, source=source) for e in events])

    async def record_facts(self, node: str, events: Sequence[NewEvent]) -> list[int]:
        """Append events reported by ``node``'s agent, under the shared gate.

        Refused (``NodeNotOnline``) once the node was declared offline: its tasks are
        ``unknown`` and only its next hello may bring them back; the agent's outbox
        keeps the events and sends them again after that hello.
        """
        async with self.gate.shared():
            view = self.state.nodes.get(node)
            if view is None or not view.online:
                raise NodeNotOnline(node)
            return await self.store.append(events)

    def _on_commit(self, recorded: list[Recorded]) -> None:
        self.state.apply_all(recorded)
        if any(r.kind in _RESCHEDULE for r in recorded):
            self._schedule.set()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if (
            self.settings.database.snapshot_every_events
            and self.state.last_seq - self._snapshot_seq
            >= self.settings.database.snapshot_every_events
        ):
            self._snapshot_due.set()

    async def changed(self, within_s: float) -> None:
        """Wait until the next commit, or ``within_s`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), within_s)

    # -- scheduling and dispatch -----------------------------------------------------------

    async def _scheduler_loop(self) -> None:
        while True:
            await self._schedule.wait()
            self._schedule.clear()
            try:
                await self.schedule_once()
            except Exception:
                log.exception("scheduling pass failed; retrying")
                await asyncio.sleep(0.5)
                self._schedule.set()

    async def submit(self, submitted: Sequence[TaskSubmitted]) -> None:
        """Record submissions, with the placement of those that fit now in the same commit.

        One durable commit instead of two (submission, then the scheduler's placement)
        is a quarter of a trivial task's latency on a disk where a commit costs 2-4 ms.
        """
        async with self.gate.exclusive():
            incoming = [TaskView(task_id=e.task_id, spec=e.spec) for e in submitted]
            placements = self.scheduler.plan(self.state, incoming)
            await self.record([*submitted, *placements, *self._dispatching(placements)])
        await self._dispatch_all(placements)

    async def schedule_once(self) -> int:
        """Place what fits now; send each placed task to its node. Returns how many."""
        async with self.gate.exclusive():
            if not self.state.pending:
                return 0
            placements = self.scheduler.plan(self.state)
            if not placements:
                return 0
            await self.record([*placements, *self._dispatching(placements)])
        await self._dispatch_all(placements)
        return len(placements)

    def _dispatching(self, placements: Sequence[TaskPlaced]) -> list[TaskDispatched]:
        """``task.dispatched`` for placements whose node's agent is connected.

        Recorded in the placement's commit, before the run command leaves: recorded
        after it, the node's ``task.started`` could commit first. If the send then
        fails, the agent's reconnection re-sends the command (see agents.py).
        """
        return [
            TaskDispatched(task_id=p.task_id, node=p.node)
            for p in placements
            if p.node in self.agents
        ]

    async def _dispatch_all(self, placements: Sequence[TaskPlaced]) -> None:
        for placed in placements:
            await self.dispatch(placed.task_id)

    async def dispatch(self, task_id: str) -> bool:
        """Send a placed task's run command to its node's agent, if it is connected."""
        task = self.state.tasks.get(task_id)
        if task is None or task.state != "assigning" or task.node is None:
            return False
        session = self.agents.get(task.node)
        if session is None:
            return False
        return await session.send(run_command(task))

    async def send_to_node(self, node: str | None, message: link.Message) -> bool:
        """Send a command to a node's agent; False when it is not connected."""
        session = self.agents.get(node or "")
        return await session.send(message) if session is not None else False

    # -- liveness --------------------------------------------------------------------------

    def heard_from(self, node: str) -> None:
        """Note that ``node``'s agent just said something."""
        self.seen[node] = time.monotonic()

    async def _monitor_loop(self) -> None:
        timing = self.settings.timing
        period = min(timing.heartbeat_interval, timing.heartbeat_timeout / 4)
        while True:
            await asyncio.sleep(period)
            try:
                await self.check_liveness()
            except Exception:
                log.exception("liveness check failed")

    async def check_liveness(self) -> list[str]:
        """Declare offline every online node silent past the timeout (its tasks become
        unknown), and give up tasks unknown for longer than ``lost_after``."""
        timeout = self.settings.timing.heartbeat_timeout
        if not overdue(
            self.state, self.seen, time.monotonic(), timeout, default_seen=self.started
        ) and not self._give_up(now_us()):
            return []
        async with self.gate.exclusive():
            # Decided again under the gate: waiting for it (behind a big batch, a commit)
            # can outlast a heartbeat, and a node heard from meanwhile is not late.
            now = time.monotonic()
            late = overdue(self.state, self.seen, now, timeout, default_seen=self.started)
            events: list[AnyEvent] = []
            for name in late:
                last = self.seen.get(name, self.started)
                events += decide_offline(
                    self.state, name, f"no heartbeat for {now - last:.1f}s (timeout {timeout}s)"
                )
            events += self._give_up(now_us())
            if events:
                await self.record(events)
        for name in late:
            session = self.agents.get(name)
            if session is not None:
                # Make it reconnect: its hello reconciles the tasks declared lost.
                await session.close(reason="declared offline")
        return late

    def _give_up(self, now: int) -> list[AnyEvent]:
        # The clock of an unknown task runs only while this host runs: a host that was
        # down for a weekend gives its agents a chance to come back before giving up.
        return decide_give_up(
            self.state, now, self.settings.timing.lost_after, not_before_us=self.started_us
        )

    # -- snapshots -------------------------------------------------------------------------

    async def _snapshot_loop(self) -> None:
        while True:
            await self._snapshot_due.wait()
            self._snapshot_due.clear()
            try:
                await self.snapshot()
            except Exception:
                log.exception("snapshot failed")

    async def snapshot(self) -> int:
        """Write a snapshot of the state at its current seq (nothing if already there)."""
        seq = self.state.last_seq
        if seq == 0 or seq == self._snapshot_seq:
            return seq
        data = self.state.snapshot()
        await self.store.save_snapshot(SNAPSHOT_NAME, seq, data)
        self._snapshot_seq = seq
        return seq

    # -- helpers for routes ----------------------------------------------------------------

    def task_matches(self, ident: str, limit: int = 4) -> list[str]:
        """The task ids ``ident`` names: itself when it is one, else those it is a prefix
        of (8+ characters), at most ``limit``. Ids are UUIDv7, whose first 8 digits
        change once a minute, so a short prefix often names several tasks."""
        if ident in self.state.tasks:
            return [ident]
        if len(ident) < 8:
            return []
        return list(itertools.islice((t for t in self.state.tasks if t.startswith(ident)), limit))
