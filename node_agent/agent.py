"""The node agent: one per machine, connected to the control plane by one link.

It runs tasks through an executor, reports what happens to them as events, and
keeps running them while the control plane is away. Every event goes into the
durable outbox first and leaves it only when the host acknowledges its commit,
so an agent crash or a host outage loses nothing (the host's store is idempotent
by event id, so a re-send is harmless). Heartbeats are samples, not history
worth keeping across an outage: they go straight to the link, never the outbox.

The link itself (hello, welcome, the loops that send batches and heartbeats and
apply commands, reconnection) is ``node_agent/session.py``; the frames travel over
a ``Transport`` (node_agent/transport.py), a websocket unless the agent is given
another connector.

Single-step mode: ``async with agent.started():`` runs the agent on the current event
loop (adopt, then stay connected) and ``await agent.run_until_idle()`` returns once it
has nothing left to do by itself (every handler done, every event sent, every frame
read; see node_agent/activity.py), like a worker's burst mode. Over an in-memory
transport a test plays the host and steps the real agent, without a subprocess.

Container tasks start on their environment's newest packaged image: ``ImageSync``
(node_agent/images.py) loads the tarball first when the local image is missing or
older, and pre-loads new tarballs in the background (``[docker] preload_tarballs``).

Tasks run as the runner's own user, or with ``[runner] run_tasks_as = "owner"`` as the
Unix account of their owner on this node (node_agent/accounts.py): the agent must then
be root, and it lists the node's accounts in each hello so the host places tasks only
where their owner has one.

Tasks are spawned by the default asyncio loop's machinery (the executor spawns
with vfork on a worker thread); the agent never runs on uvloop, whose fork-based
spawn costs tens of milliseconds in a large process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from events import link
from events.credentials import read_secret
from events.envelope import new_event
from events.log_lines import line_of
from events.types import (
    AnyEvent,
    TaskFinished,
    TaskPaused,
    TaskResumed,
    TaskStarted,
    VpsReady,
)
from node_agent.accounts import account_names
from node_agent.activity import Activity
from node_agent.cpus import CpuAllocator
from node_agent.executors.base import (
    Executor,
    ExecutorError,
    NotWatched,
    Outcome,
    RunsVps,
    StartFailed,
    TaskRun,
)
from node_agent.executors.process import ProcessExecutor
from node_agent.images import ImageSync
from node_agent.outbox import AsyncOutbox
from node_agent.probes import MachineInfo, probe_machine
from node_agent.ranks import Ranks
from node_agent.session import HostLink
from node_agent.settings import RunnerSettings, RunnerSettingsError
from node_agent.shells import ShellRelay
from node_agent.state_dir import StateLock
from node_agent.transport import Connector, websocket_connector

log = logging.getLogger("hakuriver.agent")
# A line per event of interest the runner reports (events/log_lines.py), node on each.
event_log = logging.getLogger("hakuriver.agent.events")

# Loading a multi-gigabyte tarball keeps one engine request open for minutes.
IMAGE_LOAD_TIMEOUT_S = 1800
# A task that ends this soon after it started has its start and its end reported together:
# one outbox write and one batch, one commit on the host, instead of two of each. A longer
# task's ``task.started`` leaves this much later (docs/decisions.md, issue 19).
START_COALESCE_S = 0.01


class Agent:
    """A node agent: executor + outbox + the link to the host."""

    def __init__(
        self,
        settings: RunnerSettings,
        *,
        executors: dict[str, Executor] | None = None,
        machine: MachineInfo | None = None,
        connect: Connector | None = None,
    ) -> None:
        self.settings = settings
        self._state_lock: StateLock | None = None
        self.node = settings.node_name
        self.state_dir = settings.state_dir
        # "process" always; "docker" added at start when an engine answers.
        self.executors: dict[str, Executor] = executors or {
            "process": ProcessExecutor(
                self.state_dir / "process",
                pass_environment=settings.runner.pass_environment,
                numactl=settings.paths.numactl_path or None,
            )
        }
        self._probe_docker = executors is None and settings.runner.docker
        self.by_task: dict[str, Executor] = {}
        # Environment tarball sync; made with the Docker executor.
        self.images: ImageSync | None = None
        self.machine = machine
        self.outbox: AsyncOutbox | None = None
        self.cpus: CpuAllocator | None = None
        # Tasks being watched: id -> pid (None while starting).
        self.running: dict[str, int | None] = {}
        self.paused: set[str] = set()
        # Final events not yet acknowledged: event id -> task id.
        self.unacked_final: dict[str, str] = {}
        # Ended tasks whose executor records are kept until the host acknowledges their
        # end (then forgotten): task id -> executor. The records are what makes the end's
        # outbox write safe without an fsync (docs/decisions.md, issue 19).
        self._forget_on_ack: dict[str, Executor] = {}
        # Starts not reported yet: held for START_COALESCE_S, to go with the task's end.
        self._unreported_start: dict[str, TaskStarted] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        # Kills that arrived while their task was still starting: id -> grace.
        self._kill_after_start: dict[str, float] = {}
        # In owner mode, this node's account names as last listed (None: too many).
        self.accounts: tuple[str, ...] | None = None
        self.activity = Activity()
        # Terminals in VPS containers (``hakuriver vps shell``), relayed over the link.
        self.shells = ShellRelay(self)
        # Job ranks: their control folders, setup reports and releases (node_agent/ranks.py).
        self.ranks = Ranks(self)
        trust = settings.pinned_trust()
        self.link = HostLink(
            self,
            connect
            or websocket_connector(
                settings.ws_url, ssl=trust.context if trust else None, token=self.credential
            ),
        )
        self.heartbeat_interval = settings.timing.heartbeat_interval
        self.start_coalesce_s = START_COALESCE_S
        self.kill_grace = settings.timing.kill_grace_period

    def credential(self) -> str | None:
        """This runner's agent credential (``runner --join`` wrote it), if it has one."""
        return read_secret(self.settings.agent_token_file)

    # -- lifecycle -------------------------------------------------------------------------

    def claim(self, wait_s: float = 0.0) -> None:
        """Hold this runner's state directory (node_agent/state_dir.py) until ``started``
        ends; ``StateDirInUse`` names the runner that holds it for ``wait_s`` seconds."""
        if self._state_lock is None or not self._state_lock.held:
            self._state_lock = StateLock.take(self.state_dir, wait_s=wait_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set: adopt tasks, then stay connected to the host."""
        async with self.started(stop):
            await stop.wait()

    @contextlib.asynccontextmanager
    async def started(self, stop: asyncio.Event | None = None) -> AsyncIterator[Agent]:
        """The agent running on this loop (tasks adopted, link kept up) until the block ends.

        Leaving the block stops watching and closes the outbox; tasks keep running.
        """
        stop = asyncio.Event() if stop is None else stop
        problem = self.settings.run_tasks_as_problem(os.geteuid())
        if problem is not None:
            raise RunnerSettingsError(problem)
        self.claim()  # one runner per state directory; made private (0700) on the way
        try:
            async with self._running(stop) as agent:
                yield agent
        finally:
            if self._state_lock is not None:
                self._state_lock.release()

    @contextlib.asynccontextmanager
    async def _running(self, stop: asyncio.Event) -> AsyncIterator[Agent]:
        for sub in ("shared_data", "task_outputs", "task_errors"):
            (self.settings.shared_dir / sub).mkdir(parents=True, exist_ok=True)
        self.settings.local_temp_dir.mkdir(parents=True, exist_ok=True)
        if self.machine is None:
            self.machine = await asyncio.to_thread(probe_machine)
        self.cpus = CpuAllocator(self.machine.cores, self.machine.numa)
        self.outbox = await AsyncOutbox.open(self.state_dir / "outbox.sqlite")
        preloader: asyncio.Task[None] | None = None
        linker: asyncio.Task[None] | None = None
        try:
            await self._load_unacked()
            await self._adopt()
            await self.ranks.restore()
            if self.images is not None and self.settings.docker.preload_tarballs:
                preloader = asyncio.create_task(self.images.watch(stop), name="env-preload")
            linker = self.activity.start(self.link.stay_connected(), name="agent-link")
            yield self
        finally:
            # The preloader ends by itself once ``stop`` is set; the rest is cancelled.
            with contextlib.suppress(Exception):
                await self.shells.close()
            stopping = [t for t in (linker, preloader) if t is not None]
            stopping += [*self._handlers, *self._watchers.values()]
            for task in stopping:
                task.cancel()
            await asyncio.gather(*stopping, return_exceptions=True)
            # Starts still held back for their end (START_COALESCE_S): their tasks outlive
            # this agent, so the starts are put now (the next agent sends them), or the host
            # would show those tasks assigning until they end.
            held = list(self._unreported_start.values())
            self._unreported_start.clear()
            if held:
                with contextlib.suppress(Exception):
                    await self.emit(*held)
            for executor in self.executors.values():
                await executor.close()
            await self.outbox.close()

    @property
    def runs_as_owners(self) -> bool:
        """Whether tasks run as their owners' accounts (``[runner] run_tasks_as``)."""
        return self.settings.runner.run_tasks_as == "owner"

    @property
    def process_mounts(self) -> bool:
        """Whether this node's process tasks can have ``--mount`` binds (process_plan.py)."""
        facilities = getattr(self.executors.get("process"), "facilities", None)
        if facilities is None:
            return False
        return facilities.mounts_refusal(owner_mode=self.runs_as_owners) is None

    async def list_accounts(self) -> None:
        """Read this node's account names again (owner mode; before each hello, so a
        reconnection tells the host about accounts added or removed meanwhile)."""
        if self.runs_as_owners:
            self.accounts = await asyncio.to_thread(account_names)

    async def run_until_idle(self, *, wait_for_tasks: bool = False, deadline_s: float = 30) -> None:
        """Let the started agent run until it has nothing left to do by itself.

        That is: no handler or outbox write under way, every event it may send sent,
        every frame the transport holds read; with ``wait_for_tasks``, also every task
        ended and reported. Raises ``TimeoutError`` (saying what is pending) otherwise.
        """

        def idle() -> bool:
            transport = self.link.transport
            if transport is not None and transport.unread():
                return False
            if self.link.connected.is_set() and self.link.wake_sender.is_set():
                return False
            return not (wait_for_tasks and self.running)

        try:
            async with asyncio.timeout(deadline_s):
                await self.activity.settle(idle)
        except TimeoutError:
            transport = self.link.transport
            raise TimeoutError(
                f"the agent is not idle after {deadline_s}s: {self.activity.busy} busy tasks,"
                f" {transport.unread() if transport else 0} unread frames,"
                f" connected={self.link.connected.is_set()}, running={sorted(self.running)}"
            ) from None

    async def _load_unacked(self) -> None:
        assert self.outbox is not None
        for new in await self.outbox.pending(limit=1_000_000):
            if isinstance(new.event, TaskFinished):
                self.unacked_final[new.id] = new.event.task_id

    async def _adopt(self) -> None:
        if self._probe_docker:
            found = await asyncio.to_thread(self._docker_executor)
            if found is not None:
                self.executors["docker"], self.images = found
        for executor in self.executors.values():
            await self._adopt_from(executor)
        # Shells an earlier agent of this node left running in its VPS tasks (killed, it
        # hung nothing up) are ended now.
        self.shells.reap_orphans()

    def _docker_executor(self) -> tuple[Executor, ImageSync] | None:
        """The Docker executor and the image sync beside it, when an engine answers."""
        try:
            import docker

            from node_agent.executors.docker import ENGINE_CONNECTIONS, DockerExecutor

            client = docker.from_env(timeout=10, max_pool_size=ENGINE_CONNECTIONS)
            client.ping()
            loader = docker.from_env(timeout=IMAGE_LOAD_TIMEOUT_S)
        except Exception as exc:
            log.info("no Docker engine (%s): container tasks will be refused", exc)
            return None
        executor = DockerExecutor(
            self.state_dir / "docker",
            node=self.node,
            client=client,
            runner_address=self.settings.network.runner_address,
            install_sshd=self.settings.vps.install_sshd,
        )
        images = ImageSync(loader, self.settings.tarball_dir, node=self.node, on_synced=self.emit)
        return executor, images

    async def _adopt_from(self, executor: Executor) -> None:
        assert self.cpus is not None
        reported = set(self.unacked_final.values())
        for found in await executor.adopt():
            if found.ended and found.task_id in reported:
                # Its end waits in the outbox (put by the previous agent, which kept the
                # records for the host's acknowledgement): nothing to watch or report.
                self._forget_on_ack[found.task_id] = executor
                continue
            self.by_task[found.task_id] = executor
            self.running[found.task_id] = found.pid
            # Still pinned there: a new task must not be given those CPUs.
            self.cpus.hold(found.task_id, found.cpus)
            if found.paused:
                self.paused.add(found.task_id)
            log.info(
                "adopted task %s (pid %s, cpus %s, ended=%s)",
                found.task_id,
                found.pid,
                found.cpus,
                found.ended,
            )
            self._watch(found.task_id)  # a rank is watched again by ``ranks.restore``
            if found.vps and not found.ended:
                self._report_vps(found.task_id)

    # -- events ----------------------------------------------------------------------------

    async def emit(self, *events: AnyEvent, durable: bool = True) -> None:
        """Put events in the outbox and wake the sender.

        ``durable=False`` skips the fsync (an agent crash still keeps them; a crash of the
        machine may not): only for events a record on disk makes again, kept until the
        host acknowledges them (a task's end: its executor's records, ``_forget_on_ack``).
        """
        assert self.outbox is not None
        batch = [new_event(e, source=self.node) for e in events]
        await self.outbox.put(batch, durable=durable)
        for new in batch:
            if isinstance(new.event, TaskFinished):
                self.unacked_final[new.id] = new.event.task_id
        self.link.wake_sender.set()
        for new in batch:
            # Said once it is queued for good: a line never tells of an event then lost;
            # a line that cannot be made must not fail an emit whose events are durable
            # (the caller would send them again, as new events).
            try:
                line = line_of(new.event)
                if line is not None and event_log.isEnabledFor(line.level):
                    extra = {"node": self.node, **line.context}
                    # Made directly: no walk up the stack for the caller (always here).
                    record = event_log.makeRecord(
                        event_log.name,
                        line.level,
                        __file__,
                        0,
                        line.message,
                        (),
                        None,
                        extra=extra,
                    )
                    event_log.handle(record)
            except Exception:
                log.exception("the log line of a %s event failed", type(new.event).__name__)

    async def acked(self, ids: tuple[str, ...]) -> None:
        """Drop events the host has committed (or refused for good) from the outbox; the
        records of the tasks whose end they were are forgotten now."""
        assert self.outbox is not None
        await self.outbox.ack(ids)
        for event_id in ids:
            task_id = self.unacked_final.pop(event_id, None)
            executor = self._forget_on_ack.pop(task_id, None) if task_id else None
            if task_id is not None and executor is not None:
                self.spawn(self._forget(task_id, executor), f"forget-{task_id}")
        self.link.wake_sender.set()

    async def _forget(self, task_id: str, executor: Executor) -> None:
        """Delete an ended task's records (its end is in the host's log)."""
        try:
            await executor.forget(task_id)
        except Exception as exc:  # its records stay; the next start of the agent adopts
            log.warning("forgetting task %s failed: %s", task_id, exc, extra={"task": task_id})

    # -- tasks -----------------------------------------------------------------------------

    def _known(self, task_id: str) -> bool:
        return task_id in self.running or task_id in self.unacked_final.values()

    async def start_task(self, command: link.Run) -> None:
        """Start a task (a repeated ``Run`` for a task already known is ignored)."""
        task_id = command.task_id
        if self._known(task_id):
            return
        self.running[task_id] = None
        vps = command.spec.task_type == "vps"  # always a container (the executor says why)
        kind = "process" if command.spec.container is None and not vps else "docker"
        executor = self.executors.get(kind)
        if executor is None:
            self.running.pop(task_id, None)
            await self.emit(
                TaskFinished(
                    task_id=task_id,
                    state="failed",
                    node=self.node,
                    message=(
                        f"node {self.node} has no Docker engine, and a VPS task needs one:"
                        " submit it with --target a node that has"
                        if vps
                        else f"node {self.node} has no Docker executor for container"
                        f" {command.spec.container!r}; submit with --container NULL"
                    ),
                )
            )
            return
        assert self.cpus is not None
        cpus = self.cpus.take(task_id, command.cores, command.numa_id)
        try:
            run = TaskRun(
                task_id=task_id,
                spec=command.spec,
                cores=command.cores,
                memory_bytes=command.memory_bytes,
                gpu_ids=command.gpu_ids,
                numa_id=command.numa_id,
                cpus=cpus,
                shared_dir=str(self.settings.shared_dir),
                local_temp_dir=str(self.settings.local_temp_dir),
                run_as=command.spec.owner if self.runs_as_owners else None,
                # A job's rank: its control folder, made now (events/jobs.py).
                control_dir=await self.ranks.prepare(command),
                node=self.node,
            )
            self.by_task[task_id] = executor
            if self.images is not None and command.spec.container is not None:
                # EnvSyncFailed is a StartFailed: no usable image, the task fails to start.
                await self.images.ensure(command.spec.container)
            started = await executor.start(run)
        except Exception as exc:
            # StartFailed says why; anything else (an engine timeout, an OSError) is named
            # too. Either way the task ends here: kept as running, it would hold its CPUs
            # and be reported running to the host for ever.
            if not isinstance(exc, StartFailed):
                log.exception("starting task %s failed", task_id, extra={"task": task_id})
            message = str(exc) if isinstance(exc, StartFailed) else f"the start failed: {exc!r}"
            self.running.pop(task_id, None)
            self.by_task.pop(task_id, None)
            self._kill_after_start.pop(task_id, None)
            self.cpus.release(task_id)
            await self.emit(
                TaskFinished(task_id=task_id, state="failed", node=self.node, message=message)
            )
            await self.ranks.forget(task_id)
            return
        self.running[task_id] = started.pid
        report = TaskStarted(
            task_id=task_id,
            node=self.node,
            pid=started.pid,
            container_id=started.container_id,
        )
        if vps or command.spec.job_id is not None:
            # Their readiness and setup reports must follow the start: reported at once.
            await self.emit(report)
            self._watch(task_id)
        else:
            # Watched first, reported a moment later: a task that ends meanwhile has its
            # start reported with its end (``_watch_task``), in one write and one batch.
            self._unreported_start[task_id] = report
            watcher = self._watch(task_id)
            await asyncio.wait({watcher}, timeout=self.start_coalesce_s)
            await self._report_start(task_id)
        self.ranks.watch(task_id)
        if vps:
            self._report_vps(task_id)
        grace = self._kill_after_start.pop(task_id, None)
        if grace is not None:
            await self.control(link.Kill(task_id=task_id, grace_s=grace))

    async def _report_start(self, task_id: str) -> None:
        """Report a start still held back (once: nothing if its end already took it)."""
        report = self._unreported_start.pop(task_id, None)
        if report is not None:
            await self.emit(report)

    def _watch(self, task_id: str) -> asyncio.Task[None]:
        watcher = self.activity.start(self._watch_task(task_id), name=f"watch-{task_id}")
        self._watchers[task_id] = watcher
        return watcher

    async def _watch_task(self, task_id: str) -> None:
        executor = self.by_task[task_id]
        recorded = True  # whether the executor's records say how the task ended
        try:
            try:
                outcome = await self.activity.outside(executor.wait(task_id))
            except Exception as exc:  # e.g. the engine went away: the task's end is unknowable
                recorded = False
                log.exception("watching task %s failed", task_id, extra={"task": task_id})
                outcome = Outcome(state="failed", message=f"lost track of the task: {exc!r}")
                # Reported as ended, it must not run on unwatched on resources given back.
                with contextlib.suppress(Exception):
                    await executor.kill(task_id, self.kill_grace)
            await self.ranks.ended(task_id)
            # The executor's records of the task (a shim's exit file, a stopped container)
            # say how it ended until they are forgotten: they are kept until the host has
            # acknowledged the end, so the end's outbox write needs no fsync (a crash of
            # the machine meanwhile leaves the records, and the next agent reports the end
            # from them). docs/decisions.md, issue 19.
            self._forget_on_ack[task_id] = executor
            if task_id in self.unacked_final.values():
                # Adopted with its end already in the outbox (a previous agent put it):
                # that one is sent; the records go once the host has it.
                self._unreported_start.pop(task_id, None)
            else:
                end = TaskFinished(
                    task_id=task_id,
                    state=outcome.state,
                    exit_code=outcome.exit_code,
                    message=outcome.message,
                    node=self.node,
                )
                start = self._unreported_start.pop(task_id, None)
                events = (start, end) if start is not None else (end,)
                await self.emit(*events, durable=not recorded)
            # A rank's control folder is no record of its end: dropped now.
            await self.ranks.forget(task_id)
        finally:
            self.by_task.pop(task_id, None)
            self.running.pop(task_id, None)
            self.paused.discard(task_id)
            if self.cpus is not None:
                self.cpus.release(task_id)
            self._watchers.pop(task_id, None)

    def _report_vps(self, task_id: str) -> None:
        """Report ``vps.ready`` for a VPS task, and again each time its container restarts."""
        self._spawn(self._vps_readiness(task_id), f"vps-ready-{task_id}")

    async def _vps_readiness(self, task_id: str) -> None:
        executor = self.by_task.get(task_id)
        if not isinstance(executor, RunsVps):
            return
        timeout = self.settings.vps.ready_timeout
        try:
            while True:
                # Waiting for a container's sshd is waiting on the outside world: the agent
                # is idle meanwhile (single-step mode).
                found = await self.activity.outside(executor.vps_endpoint(task_id, timeout))
                if found.stopped or task_id not in self.running:
                    return  # killed (or stopped) meanwhile: task.finished says it all
                await self.emit(
                    VpsReady(
                        task_id=task_id,
                        node=self.node,
                        address=found.address,
                        ssh_port=found.ssh_port,
                        sshd=found.sshd,
                        message=found.message,
                    )
                )
                later = await self.activity.outside(
                    executor.vps_restarted(task_id, found.generation)
                )
                if later is None:
                    return
        except NotWatched:  # it ended and was forgotten meanwhile
            return

    async def control(self, command: link.Kill | link.Pause | link.Resume) -> None:
        """Apply a kill, pause or resume to a running task (unknown tasks are ignored)."""
        task_id = command.task_id
        if task_id not in self.running:
            return
        if task_id not in self._watchers:
            if isinstance(command, link.Kill):  # still starting: kill once it has
                self._kill_after_start[task_id] = command.grace_s
            return
        if not isinstance(command, link.Kill):
            await self._report_start(task_id)  # a pause or resume follows the start
        try:
            match command:
                case link.Kill(grace_s=grace):
                    await self.by_task[task_id].kill(task_id, grace)
                case link.Pause():
                    if task_id not in self.paused:
                        await self.by_task[task_id].pause(task_id)
                        if task_id not in self.running:
                            return  # it ended meanwhile (a kill): its end was reported
                        self.paused.add(task_id)
                        await self.emit(TaskPaused(task_id=task_id))
                case link.Resume():
                    if task_id in self.paused:
                        await self.by_task[task_id].resume(task_id)
                        if task_id not in self.running:
                            return  # it ended meanwhile (a kill): its end was reported
                        self.paused.discard(task_id)
                        await self.emit(TaskResumed(task_id=task_id))
                        self.shells.reap_orphans(task_id)  # left while it was paused
        except NotWatched:
            return
        except ExecutorError as exc:
            log.warning(
                "%s on %s failed: %s", type(command).__name__, task_id, exc, extra={"task": task_id}
            )

    # -- the link --------------------------------------------------------------------------

    def handle(self, command: link.Run | link.Kill | link.Pause | link.Resume | link.JobGo) -> None:
        """Apply a command from the host in a task of its own (commands never block the link)."""
        work: Coroutine[Any, Any, None]
        match command:
            case link.Run():
                work = self.start_task(command)
            case link.JobGo(task_id=task_id):
                work = self.ranks.go(task_id)
            case _:
                work = self.control(command)
        self._spawn(work, type(command).__name__)

    def _spawn(self, work: Coroutine[Any, Any, None], what: str) -> None:
        self.spawn(work, what)

    def spawn(self, work: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """Run ``work`` as one of the agent's handlers (counted busy, logged if it fails,
        cancelled when the agent stops)."""

        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.exception("handling %s failed", what)

        task = self.activity.start(guarded(), name=f"handle-{what}")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        return task
