"""The node agent: one per machine, connected to the control plane by one websocket.

It runs tasks through an executor, reports what happens to them as events, and
keeps running them while the control plane is away. Every event goes into the
durable outbox first and leaves it only when the host acknowledges its commit,
so an agent crash or a host outage loses nothing (the host's store is idempotent
by event id, so a re-send is harmless). Heartbeats are samples, not history
worth keeping across an outage: they go straight to the link, never the outbox.

The link (events/link.py): connect, ``Hello`` (machine, running tasks, tasks whose
final report is still in the outbox), ``Welcome``, then three loops: send outbox
batches (a few in flight, each acknowledged), send heartbeats, apply commands.
Lost link → reconnect with capped exponential backoff and say hello again.

Container tasks start on their environment's newest packaged image: ``ImageSync``
(node_agent/images.py) loads the tarball first when the local image is missing or
older, and pre-loads new tarballs in the background (``[docker] preload_tarballs``).

Tasks are spawned by the default asyncio loop's machinery (the executor spawns
with vfork on a worker thread); the agent never runs on uvloop, whose fork-based
spawn costs tens of milliseconds in a large process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from events import link
from events.envelope import new_event
from events.types import AnyEvent, TaskFinished, TaskPaused, TaskResumed, TaskStarted
from node_agent.cpus import CpuAllocator
from node_agent.executors.base import (
    Executor,
    ExecutorError,
    Outcome,
    StartFailed,
    TaskRun,
    UnknownTask,
)
from node_agent.executors.process import ProcessExecutor
from node_agent.images import ImageSync
from node_agent.outbox import AsyncOutbox
from node_agent.probes import MachineInfo, probe_machine, probe_usage
from node_agent.settings import RunnerSettings

log = logging.getLogger("hakuriver.agent")

AGENT_VERSION = "0.1.0"
MAX_IN_FLIGHT = 4
# Loading a multi-gigabyte tarball keeps one engine request open for minutes.
IMAGE_LOAD_TIMEOUT_S = 1800


class Agent:
    """A node agent: executor + outbox + the link to the host."""

    def __init__(
        self,
        settings: RunnerSettings,
        *,
        executors: dict[str, Executor] | None = None,
        machine: MachineInfo | None = None,
    ) -> None:
        self.settings = settings
        self.node = settings.node_name
        self.state_dir = settings.state_dir
        # "process" always; "docker" added at start when an engine answers.
        self.executors: dict[str, Executor] = executors or {
            "process": ProcessExecutor(self.state_dir / "process")
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
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Kills that arrived while their task was still starting: id -> grace.
        self._kill_after_start: dict[str, float] = {}
        self._wake_sender = asyncio.Event()
        self._connected = asyncio.Event()
        self.heartbeat_interval = settings.timing.heartbeat_interval
        self.kill_grace = settings.timing.kill_grace_period
        self.connections = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set: adopt tasks, then stay connected to the host."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("shared_data", "task_outputs", "task_errors"):
            (self.settings.shared_dir / sub).mkdir(parents=True, exist_ok=True)
        self.settings.local_temp_dir.mkdir(parents=True, exist_ok=True)
        if self.machine is None:
            self.machine = await asyncio.to_thread(probe_machine)
        self.cpus = CpuAllocator(self.machine.cores, self.machine.numa)
        self.outbox = await AsyncOutbox.open(self.state_dir / "outbox.sqlite")
        preloader: asyncio.Task[None] | None = None
        try:
            await self._load_unacked()
            await self._adopt()
            if self.images is not None and self.settings.docker.preload_tarballs:
                preloader = asyncio.create_task(self.images.watch(stop), name="env-preload")
            linker = asyncio.create_task(self._stay_connected(), name="agent-link")
            await stop.wait()
            linker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await linker
        finally:
            if preloader is not None:  # it ends by itself once ``stop`` is set
                preloader.cancel()
                await asyncio.gather(preloader, return_exceptions=True)
            for watcher in self._watchers.values():
                watcher.cancel()
            for executor in self.executors.values():
                await executor.close()
            await self.outbox.close()

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
            additional_mounts=tuple(self.settings.docker.additional_mounts),
        )
        images = ImageSync(loader, self.settings.tarball_dir, node=self.node, on_synced=self.emit)
        return executor, images

    async def _adopt_from(self, executor: Executor) -> None:
        for found in await executor.adopt():
            self.by_task[found.task_id] = executor
            self.running[found.task_id] = found.pid
            if found.paused:
                self.paused.add(found.task_id)
            log.info("adopted task %s (pid %s, ended=%s)", found.task_id, found.pid, found.ended)
            self._watch(found.task_id)

    # -- events ----------------------------------------------------------------------------

    async def emit(self, *events: AnyEvent) -> None:
        """Put events in the durable outbox and wake the sender."""
        assert self.outbox is not None
        batch = [new_event(e, source=self.node) for e in events]
        await self.outbox.put(batch)
        for new in batch:
            if isinstance(new.event, TaskFinished):
                self.unacked_final[new.id] = new.event.task_id
        self._wake_sender.set()

    # -- tasks -----------------------------------------------------------------------------

    def _known(self, task_id: str) -> bool:
        return task_id in self.running or task_id in self.unacked_final.values()

    async def start_task(self, command: link.Run) -> None:
        """Start a task (a repeated ``Run`` for a task already known is ignored)."""
        task_id = command.task_id
        if self._known(task_id):
            return
        self.running[task_id] = None
        kind = "process" if command.spec.container is None else "docker"
        executor = self.executors.get(kind)
        if executor is None:
            self.running.pop(task_id, None)
            await self.emit(
                TaskFinished(
                    task_id=task_id,
                    state="failed",
                    node=self.node,
                    message=(
                        f"node {self.node} has no Docker executor for container"
                        f" {command.spec.container!r}; submit with --container NULL"
                    ),
                )
            )
            return
        assert self.cpus is not None
        cpus = self.cpus.take(task_id, command.cores, command.numa_id)
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
        )
        try:
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
                log.exception("starting task %s failed", task_id)
            message = str(exc) if isinstance(exc, StartFailed) else f"the start failed: {exc!r}"
            self.running.pop(task_id, None)
            self.by_task.pop(task_id, None)
            self._kill_after_start.pop(task_id, None)
            self.cpus.release(task_id)
            await self.emit(
                TaskFinished(task_id=task_id, state="failed", node=self.node, message=message)
            )
            return
        self.running[task_id] = started.pid
        await self.emit(
            TaskStarted(
                task_id=task_id,
                node=self.node,
                pid=started.pid,
                container_id=started.container_id,
            )
        )
        self._watch(task_id)
        grace = self._kill_after_start.pop(task_id, None)
        if grace is not None:
            await self.control(link.Kill(task_id=task_id, grace_s=grace))

    def _watch(self, task_id: str) -> None:
        self._watchers[task_id] = asyncio.create_task(
            self._watch_task(task_id), name=f"watch-{task_id}"
        )

    async def _watch_task(self, task_id: str) -> None:
        executor = self.by_task[task_id]
        try:
            outcome = await executor.wait(task_id)
        except Exception as exc:  # e.g. the engine went away: the task's end is unknowable
            log.exception("watching task %s failed", task_id)
            outcome = Outcome(state="failed", message=f"lost track of the task: {exc!r}")
        await self.emit(
            TaskFinished(
                task_id=task_id,
                state=outcome.state,
                exit_code=outcome.exit_code,
                message=outcome.message,
                node=self.node,
            )
        )
        await executor.forget(task_id)
        self.by_task.pop(task_id, None)
        self.running.pop(task_id, None)
        self.paused.discard(task_id)
        if self.cpus is not None:
            self.cpus.release(task_id)
        self._watchers.pop(task_id, None)

    async def control(self, command: link.Kill | link.Pause | link.Resume) -> None:
        """Apply a kill, pause or resume to a running task (unknown tasks are ignored)."""
        task_id = command.task_id
        if task_id not in self.running:
            return
        if task_id not in self._watchers:
            if isinstance(command, link.Kill):  # still starting: kill once it has
                self._kill_after_start[task_id] = command.grace_s
            return
        try:
            match command:
                case link.Kill(grace_s=grace):
                    await self.by_task[task_id].kill(task_id, grace)
                case link.Pause():
                    if task_id not in self.paused:
                        await self.by_task[task_id].pause(task_id)
                        self.paused.add(task_id)
                        await self.emit(TaskPaused(task_id=task_id))
                case link.Resume():
                    if task_id in self.paused:
                        await self.by_task[task_id].resume(task_id)
                        self.paused.discard(task_id)
                        await self.emit(TaskResumed(task_id=task_id))
        except UnknownTask:
            return
        except ExecutorError as exc:
            log.warning("%s on %s failed: %s", type(command).__name__, task_id, exc)

    @property
    def executor_names(self) -> tuple[str, ...]:
        return tuple(self.executors)

    # -- the link --------------------------------------------------------------------------

    async def _stay_connected(self) -> None:
        delay = 0.05
        while True:
            try:
                async with connect(
                    self.settings.ws_url,
                    max_size=64 << 20,
                    open_timeout=5,
                    ping_interval=20,
                    ping_timeout=20,
                ) as ws:
                    delay = 0.05
                    await self._session(ws)
            except asyncio.CancelledError:
                raise
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidURI, TimeoutError) as exc:
                log.info(
                    "link to %s down (%s); retrying in %.1fs", self.settings.ws_url, exc, delay
                )
            except Exception:
                log.exception("link failed; retrying in %.1fs", delay)
            self._connected.clear()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.settings.timing.reconnect_max_delay)

    def _hello(self) -> link.Hello:
        machine = self.machine
        assert machine is not None
        return link.Hello(
            node=self.node,
            address=self.settings.network.runner_address,
            cores=machine.cores,
            memory_bytes=machine.memory_bytes,
            numa=machine.numa,
            gpus=machine.gpus,
            agent_version=AGENT_VERSION,
            executors=self.executor_names,
            running=tuple(
                link.AgentTask(task_id=t, pid=pid, paused=t in self.paused)
                for t, pid in self.running.items()
            ),
            reported=tuple(set(self.unacked_final.values())),
        )

    async def _session(self, ws: ClientConnection) -> None:
        await ws.send(link.encode(self._hello()))
        async with asyncio.timeout(10):
            frame = await ws.recv()
        if not isinstance(frame, bytes):
            raise ConnectionError("expected a binary welcome frame")
        welcome = link.decode_host_message(frame)
        if not isinstance(welcome, link.Welcome):
            raise ConnectionError(f"expected welcome, got {type(welcome).__name__}")
        self.heartbeat_interval = welcome.heartbeat_interval_s
        self.kill_grace = welcome.kill_grace_s
        self.connections += 1
        self._connected.set()
        log.info("connected to %s as %s", self.settings.ws_url, self.node)
        in_flight: dict[int, tuple[str, ...]] = {}
        loops = [
            asyncio.create_task(self._send_outbox(ws, in_flight)),
            asyncio.create_task(self._send_heartbeats(ws)),
            asyncio.create_task(self._receive(ws, in_flight)),
        ]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _send_outbox(
        self, ws: ClientConnection, in_flight: dict[int, tuple[str, ...]]
    ) -> None:
        assert self.outbox is not None
        after = 0
        number = 0
        while True:
            self._wake_sender.clear()
            if len(in_flight) < MAX_IN_FLIGHT:
                batch = await self.outbox.pending_batch(self.settings.runner.max_batch, after)
                if batch.ids:
                    number += 1
                    in_flight[number] = batch.ids
                    after = batch.last_pos
                    await ws.send(link.encode(link.EventBatch(batch=number, body=batch.body)))
                    continue
            await self._wake_sender.wait()

    async def _send_heartbeats(self, ws: ClientConnection) -> None:
        while True:
            usage = await asyncio.to_thread(probe_usage, tuple(self.running))
            beat = new_event(usage.heartbeat(self.node), source=self.node)
            await ws.send(link.encode(link.Heartbeat(event=beat)))
            await asyncio.sleep(self.heartbeat_interval)

    async def _receive(self, ws: ClientConnection, in_flight: dict[int, tuple[str, ...]]) -> None:
        assert self.outbox is not None
        async for frame in ws:
            if not isinstance(frame, bytes):
                continue
            try:
                message = link.decode_host_message(frame)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                log.warning("ignoring a frame from the host: %s", exc)
                continue
            match message:
                case link.Ack(batch=number):
                    ids = in_flight.pop(number, ())
                    await self._acked(ids)
                case link.Nack(batch=number, reason=reason):
                    # The host will never take these events; keeping them would block
                    # the outbox forever. They are logged, then dropped.
                    ids = in_flight.pop(number, ())
                    log.error("host refused %d events: %s", len(ids), reason)
                    await self._acked(ids)
                case link.Run():
                    self._spawn(self.start_task, message)
                case link.Kill() | link.Pause() | link.Resume():
                    self._spawn(self.control, message)
                case link.Welcome():
                    pass

    async def _acked(self, ids: tuple[str, ...]) -> None:
        assert self.outbox is not None
        await self.outbox.ack(ids)
        for event_id in ids:
            self.unacked_final.pop(event_id, None)
        self._wake_sender.set()

    def _spawn(self, handler: Callable[..., object], message: link.Message) -> None:
        async def guarded() -> None:
            try:
                await handler(message)  # type: ignore[misc]
            except Exception:
                log.exception("handling %s failed", type(message).__name__)

        task = asyncio.get_running_loop().create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
