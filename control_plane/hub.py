"""The control plane's running core: the log, the folded state, and the loops around them.

``ControlPlane`` owns the ``EventStore`` and the in-memory ``ClusterState`` (kept
current by a store listener, so after a commit the state already includes it), the
links to the connected agents, and the scheduler, liveness and snapshot loops. It does
not know about HTTP.

One command boundary: every change goes through ``execute(command)``, the only place
that takes the gate, calls the command's pure decision (control_plane/commands/),
records its events and then sends its link messages, so the order (commit before
send) is written once. A *decision* (a placement, a kill, a node declared offline) is
made against the state and must not interleave with another change, or it could be
made on stale state: it holds the gate exclusively. *Facts* (what an agent reports,
what the host observed of its own work) conflict with nothing and hold it shared, so
they still commit together in one group. Routes and the agent link read the state
only through the queries at the end of the class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple, Protocol

import msgspec

from control_plane.commands import (
    FACTS,
    AdvanceJobs,
    CheckLiveness,
    Command,
    Context,
    Decision,
    PlaceQueued,
    ReportFacts,
    Send,
    decide,
)
from control_plane.commands.jobs import JOBS_DIR
from control_plane.errors import StoreFailing
from control_plane.log_lines import event_lines
from control_plane.scheduler import Scheduler
from control_plane.settings import HostSettings
from control_plane.state_files import StateFiles
from control_plane.vps_shells import VpsShells
from events import link
from events.envelope import Recorded, new_event, now_us
from events.file_modes import private_dir
from events.ids import is_job_id, new_id
from events.store import Encoded, EventStore, StoreUnavailable, WriteFailure
from events.types import TaskFinished
from projections.cluster import ClusterState
from projections.jobs import JobView

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
        "job.setup_done",
        "job.stop_requested",
        "job.submitted",
    }
)


def _remove_orphan_job_folders(shared: Path, state: ClusterState) -> None:
    """Remove the job folders of submissions the log does not have: a host killed between
    unpacking a job's workdir and recording the job left them (nothing is served yet, so
    no submission is under way)."""
    root = shared / JOBS_DIR
    if not root.is_dir() or root.is_symlink():
        return
    for entry in os.scandir(root):
        if is_job_id(entry.name) and entry.name not in state.jobs and not entry.is_symlink():
            log.info("removing %s: no job %s in the log", entry.path, entry.name)
            shutil.rmtree(entry.path, ignore_errors=True)


class Link(Protocol):
    """A connected agent as the control plane sees it (agents.py's ``AgentSession``)."""

    async def send(self, message: link.Message) -> bool:
        """Send a message; False if the link is gone."""
        ...

    async def close(self, reason: str) -> None:
        """Close the link (the agent will reconnect and say hello again)."""
        ...

    async def alive(self, within_s: float) -> bool:
        """Whether the agent behind the link still answers, within ``within_s``."""
        ...


class LivenessStats(msgspec.Struct, kw_only=True):
    """How punctual the liveness monitor is: how late its checks ran (the event loop was
    busy), and the silence it did not count against nodes because of it."""

    period_s: float = 0.0
    checks: int = 0
    late_last_s: float = 0.0
    late_max_s: float = 0.0
    credited_s: float = 0.0


# Monitor lateness past this is a stall of the event loop: frames may have waited unread.
STALL_S = 0.05


class Outcome(NamedTuple):
    """What ``execute`` did: the decision, the seqs it recorded, which sends got out, and
    the link each went out on (None: its node was not connected)."""

    decision: Decision
    seqs: list[int]
    delivered: list[bool]
    links: tuple[Link | None, ...] = ()


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
    """The store, the state, the scheduler, the agents' links, and their loops."""

    def __init__(self, settings: HostSettings, store: EventStore, state: ClusterState) -> None:
        self.settings = settings
        self.store = store
        self._state = state
        self._scheduler = Scheduler(
            settings.scheduler.policy, reserve_after_s=settings.jobs.reserve_after
        )
        self._gate = Gate()
        self._links: dict[str, Link] = {}
        # The IP each node's (latest) agent link came from: where the SSH gateway may
        # connect for that node's VPS tasks (commands/vps.py).
        self._peers: dict[str, str] = {}
        # The ``vps shell`` sessions relayed through the agents' links (vps_shells.py).
        self.shells = VpsShells()
        # One hello at a time per node name (two racing runners must not both get in).
        self._attaching: dict[str, asyncio.Lock] = {}
        self.liveness = LivenessStats()
        # When each node was last heard from, on this process's monotonic clock.
        self._seen: dict[str, float] = {}
        self._started = time.monotonic()
        self._started_us = now_us()
        self._schedule = asyncio.Event()
        self._changed = asyncio.Event()
        self._snapshot_due = asyncio.Event()
        self._snapshot_seq = state.last_seq
        self._tasks: list[asyncio.Task[None]] = []
        store.add_listener(self._on_commit)
        # A log line per event of interest, the state already including its batch.
        store.add_listener(event_lines(lambda: self._state))
        # After the state's: a session the log ends (its user disabled, its task ended).
        store.add_listener(self.shells.on_commit)

    @classmethod
    async def open(cls, settings: HostSettings) -> ControlPlane:
        """Open the log and rebuild the state: newest snapshot plus the tail."""
        path = settings.db_path
        # The log, the admin's token and the TLS keys live here: the owner's alone. Others
        # may pass through to a shared directory inside it (tasks that run as their owners
        # work there); they can list nothing, and the files of the log are 0600. Modes are
        # changed once the log is ours: a host refused (the log is in use) changes nothing.
        data_dir = settings.path(".")
        traverse = settings.shared_dir.resolve().is_relative_to(data_dir.resolve())
        if not data_dir.exists():
            await asyncio.to_thread(private_dir, data_dir, traverse=traverse)
        in_data_dir = path.parent.resolve() == data_dir.resolve()
        store = await EventStore.open(path, folder_traverse=traverse if in_data_dir else False)
        await asyncio.to_thread(private_dir, data_dir, traverse=traverse)
        settings.shared_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("task_outputs", "task_errors"):
            (settings.shared_dir / sub).mkdir(exist_ok=True)
        state, after, tail = await StateFiles(store).rebuild()
        log.info("state rebuilt at seq %d (snapshot %d, tail %d)", state.last_seq, after, len(tail))
        await asyncio.to_thread(_remove_orphan_job_folders, settings.shared_dir, state)
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
        self.shells.stop_all("host stopping")
        for agent in list(self._links.values()):
            await agent.close(reason="control plane shutting down")
        with contextlib.suppress(Exception):
            await self.snapshot()
        await self.store.close()

    # -- the command boundary --------------------------------------------------------------

    async def execute(self, command: Command, *, encoded: Encoded | None = None) -> Outcome:
        """Decide ``command`` on the current state, record the decision, then send.

        The only place that takes the gate. A refusal (``DomainError``) records and
        sends nothing. Sends happen after the commit: a host crash can never leave a
        command out in the world that the log does not show. A log that cannot be
        written (a full disk) refuses with ``StoreFailing``: nothing recorded, nothing sent.
        ``encoded``: payloads of the command's events made ahead (``EventStore.append``).
        """
        if isinstance(command, ReportFacts) and self._frees_for_queued(command):
            # Its ends make room for queued work: placed in the same commit, a decision,
            # so the gate is held alone (docs/decisions.md, slot turnover, issue 19).
            command = msgspec.structs.replace(command, place=True)
        shared = isinstance(command, FACTS) and not getattr(command, "place", False)
        gate = self._gate.shared() if shared else self._gate.exclusive()
        async with gate:
            decision = decide(self._state, command, self._context())
            principal = getattr(command, "actor", None)
            events = decision.events
            if principal is not None and principal.token_kind != "agent" and events:
                # Every event a user's request causes names who asked (events.types.Actor).
                actor = principal.actor
                events = [msgspec.structs.replace(e, actor=actor) for e in events]
            batch = [new_event(e, source=decision.node) for e in decision.node_events]
            batch += [new_event(e, source=HOST_SOURCE) for e in events]
            batch += decision.facts
            batch += [new_event(e, source=HOST_SOURCE) for e in decision.after_facts]
            # Facts are agents' reports: made outside this process, each payload is checked
            # to read back before it is stored.
            check = bool(decision.facts)
            try:
                seqs = (
                    await self.store.append(batch, check_payloads=check, encoded=encoded)
                    if batch
                    else []
                )
            except StoreUnavailable as exc:
                raise StoreFailing(
                    "",
                    f"{exc}: the request was most likely not recorded (a write whose outcome"
                    " the host could not learn is adopted if it reached the disk: look"
                    " before sending it again); the host writes again once its data"
                    " directory has room",
                ) from exc
        delivered: list[bool] = []
        links: list[Link | None] = []
        for send in decision.sends:
            agent = self._links.get(send.node)
            links.append(agent)
            delivered.append(await agent.send(send.message) if agent is not None else False)
        for node, reason in decision.disconnect:
            agent = self._links.get(node)
            if agent is not None:
                await agent.close(reason)
        return Outcome(decision, seqs, delivered, tuple(links))

    def _frees_for_queued(self, command: ReportFacts) -> bool:
        """Whether an agent's batch ends a task while work is queued: then its commit
        places the queue's next tasks too (decided under the exclusive gate)."""
        return bool(self._state.pending) and any(
            isinstance(new.event, TaskFinished) for new in command.events
        )

    def _context(self) -> Context:
        return Context(
            settings=self.settings,
            connected=frozenset(self._links),
            now_us=now_us(),
            scheduler=self._scheduler,
            new_id=new_id,
            started_us=self._started_us,
            now_mono=time.monotonic(),
            link_peers=MappingProxyType(self._peers),
        )

    async def _send(self, send: Send) -> bool:
        agent = self._links.get(send.node)
        return await agent.send(send.message) if agent is not None else False

    async def send_to(self, node: str, message: link.Message) -> bool:
        """Send ``node``'s agent a message that records nothing (a shell's keystrokes, a
        resize, a hang-up: vps_shells.py); False if its agent is not connected. Anything
        that changes the cluster goes through ``execute`` instead."""
        return await self._send(Send(node, message))

    def link_of(self, node: str) -> Link | None:
        """The link ``node``'s agent is connected through now (None: not connected)."""
        return self._links.get(node)

    # -- agents' links ---------------------------------------------------------------------

    async def attach(self, node: str, agent: Link, peer: str = "") -> str | None:
        """``node``'s agent is connected through ``agent`` (from the IP ``peer``); or why not
        (None: attached).

        A name held by a live link is not taken over: if the previous link's agent still
        answers a ping, the new one is refused (a second runner under the same name, or
        an impostor with the node's credential) and nothing else happens. A previous link
        that does not answer in time is a connection its agent gave up on: it is closed
        and replaced.
        """
        async with self._attaching.setdefault(node, asyncio.Lock()):
            previous = self._links.get(node)
            if previous is not None and previous is not agent:
                if await previous.alive(self._probe_s()):
                    return (
                        f"node {node} is connected already and its agent answers;"
                        " is a second runner using this name?"
                    )
                await previous.close("replaced: this link stopped answering")
            self._links[node] = agent
            self._peers[node] = peer
            self.heard_from(node)
        return None

    def _probe_s(self) -> float:
        """How long a link's agent gets to answer a ping before its name is given to a new
        link: a few heartbeats, within the heartbeat timeout."""
        timing = self.settings.timing
        return min(max(2 * timing.heartbeat_interval, 1.0), timing.heartbeat_timeout)

    def detach(self, node: str, agent: Link) -> None:
        """``agent`` is gone; forget it unless a newer link already replaced it. The shells
        relayed through it end (their agent side went with it)."""
        self.shells.link_lost(node, agent)
        if self._links.get(node) is agent:
            del self._links[node]

    def heard_from(self, node: str) -> None:
        """Note that ``node``'s agent just said something."""
        self._seen[node] = time.monotonic()

    def _on_commit(self, recorded: list[Recorded]) -> None:
        self._state.apply_all(recorded)
        if any(r.kind in _RESCHEDULE for r in recorded):
            self._schedule.set()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if (
            self.settings.database.snapshot_every_events
            and self._state.last_seq - self._snapshot_seq
            >= self.settings.database.snapshot_every_events
        ):
            self._snapshot_due.set()

    async def changed(self, within_s: float) -> None:
        """Wait until the next commit, or ``within_s`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), within_s)

    # -- the loops -------------------------------------------------------------------------

    async def _scheduler_loop(self) -> None:
        while True:
            await self._schedule.wait()
            self._schedule.clear()
            try:
                if self._state.active_jobs and self._jobs_due():
                    # Jobs first: a failed rank's siblings are stopped (and their
                    # resources freed) before anything else is placed.
                    await self.execute(AdvanceJobs())
                if self._scheduler.would_place(self._state, now_us=now_us()):
                    # Decided again under the gate; most passes (an end whose commit
                    # already placed into its room, a submission placed in its own
                    # commit) find nothing and need not wait for the exclusive gate.
                    await self.execute(PlaceQueued())
            except StoreFailing:
                # The store logs the outage once; the placement is tried again.
                await asyncio.sleep(0.5)  # a pause between attempts, not synchronisation
                self._schedule.set()
            except Exception:
                log.exception("scheduling pass failed; retrying")
                await asyncio.sleep(0.5)
                self._schedule.set()

    def _jobs_due(self) -> bool:
        """Whether a job has something to record (decided again under the gate): most
        passes have nothing to do, and need not wait for the exclusive gate."""
        return bool(decide(self._state, AdvanceJobs(), self._context()).events)

    async def _monitor_loop(self) -> None:
        timing = self.settings.timing
        period = min(timing.heartbeat_interval, timing.heartbeat_timeout / 4)
        self.liveness.period_s = period
        due = time.monotonic() + period
        while True:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            self.note_lateness(now - due)
            due = now + period
            try:
                await self.check_liveness()
            except StoreFailing:
                pass  # the store logs the outage; the next period decides again
            except Exception:
                log.exception("liveness check failed")

    def note_lateness(self, late_s: float) -> None:
        """Note how late a liveness check runs. Past ``STALL_S`` the event loop was stalled
        (a huge batch, a flood): agents' frames may be waiting unread, so the stall is not
        counted as any node's silence (every node's last-heard time moves forward by it)."""
        stats = self.liveness
        stats.checks += 1
        stats.late_last_s = late_s
        stats.late_max_s = max(stats.late_max_s, late_s)
        if late_s > STALL_S:
            stats.credited_s += late_s
            now = time.monotonic()
            for node, heard in self._seen.items():
                self._seen[node] = min(heard + late_s, now)
            self._started = min(self._started + late_s, now)

    async def check_liveness(self) -> list[str]:
        """Declare offline every online node silent past the timeout (its tasks become
        unknown), give up tasks unknown for longer than ``lost_after``; the nodes
        declared offline."""
        # Decided once outside the gate to skip the exclusive gate when nothing is due, and
        # again inside: waiting for the gate (behind a big batch, a commit) can outlast a
        # heartbeat, and a node heard from meanwhile is not late.
        check = CheckLiveness(heard_at=self._seen, never_heard_at=self._started)
        if not decide(self._state, check, self._context()).events:
            return []
        outcome = await self.execute(check)
        return [node for node, _ in outcome.decision.disconnect]

    # -- snapshots -------------------------------------------------------------------------

    async def _snapshot_loop(self) -> None:
        while True:
            await self._snapshot_due.wait()
            self._snapshot_due.clear()
            try:
                await self.snapshot()
            except OSError as exc:  # a full disk: derived data, the next one is due soon
                log.warning("snapshot failed: %s", exc)
            except Exception:
                log.exception("snapshot failed")

    async def snapshot(self) -> int:
        """Write a snapshot of the state at its current seq (nothing if already there)."""
        seq = self._state.last_seq
        if seq == 0 or seq == self._snapshot_seq:
            return seq
        await StateFiles(self.store).snapshot(self._state)
        self._snapshot_seq = seq
        return seq

    # -- queries (read-only: what the routes and the agent link may look at) ---------------

    @property
    def state(self) -> ClusterState:
        """The live fold, to read: only a commit changes it (through ``execute``)."""
        return self._state

    def explain_jobs(self, jobs: Sequence[JobView]) -> dict[str, str]:
        """Why each job waits (or how it was placed), as the scheduler sees it now: its
        policy and its reservation rule at this moment (``Scheduler.explain``)."""
        return self._scheduler.explain(self._state, jobs, now_us=now_us())

    @property
    def last_seq(self) -> int:
        """The seq of the newest event the state includes."""
        return self._state.last_seq

    @property
    def connected(self) -> list[str]:
        """The nodes whose agent is connected now."""
        return sorted(self._links)

    def is_connected(self, node: str) -> bool:
        """Whether ``node``'s agent is connected now."""
        return node in self._links

    @property
    def undecodable_events(self) -> int:
        """Stored events the log's reads met and could not decode (skipped, logged)."""
        return self.store.codec.undecodable_total

    @property
    def store_failure(self) -> WriteFailure | None:
        """Why the event log cannot be written now (a full disk), or None when it can."""
        return self.store.write_failure
