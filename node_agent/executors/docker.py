"""The Docker executor: a task in a fresh container of its environment's image.

The container runs ``hakuriver/<env>:base`` with the task's argument vector (no
shell), its env vars, ``--cpus`` from its cores, ``--memory``, the CPU set and
memory node of a NUMA target, GPU device requests, the seeds' mounts
(``shared_dir/shared_data`` → ``/shared``, ``local_temp_dir`` → ``/local_temp``)
plus the task's own, and ``--privileged`` only when the task asks for it (the host
decides whether it may). A task run as its owner (``TaskRun.run_as``) runs as
``--user UID:GID`` of the owner's account on this node, with its groups. Labels carry
the task id and the node, so a restarted agent finds its containers again (``adopt``).

Output is streamed from the engine into ``shared_dir/task_outputs/<id>.out`` and
``task_errors/<id>.err`` as the task writes it; an adopted container's stream resumes
where the previous agent stopped, without repeating (``docker_follow``).

Where Docker departs from the contract in ``base.py``, it is by the engine's nature and
written there: an exit code of ``128 + n`` for a signal n, and a grace period in whole
seconds (``docker stop`` takes no fraction; it is rounded up, never down to nothing).

A VPS task (``task_type = "vps"``) is a container of its own shape (a persistent
``hakuriver-vps-<id>`` running sshd, restarted by the engine until killed), made by
node_agent/executors/vps.py; its watcher waits on through the engine's restarts, counting
each new start as a generation, so the agent reports ``vps.ready`` again with the new port.

An overloaded engine answers late, with a 5xx, or drops a connection: such a create,
start, wait, inspect or stop is asked again, idempotently (docker_engine.py); a task fails
only when the engine keeps refusing, with the engine's words as its message.

Every Docker SDK call blocks, so each runs in a worker thread: short calls (create,
start, inspect, pause, remove) in a pool of the executor's own, ``ENGINE_CALLS``
at a time; the calls that last as long as a container (its ``wait`` and the
output follower) in a daemon thread each. They once shared asyncio's default pool
(``cpus + 4`` threads): three per container then, so on a small node two running
containers held every thread and the next task's create waited for one to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from node_agent.accounts import resolve_account
from node_agent.cpus import parse_cpu_list
from node_agent.executors import docker_engine as engine
from node_agent.executors.base import (
    Adopted,
    ExecutorError,
    NotWatched,
    Outcome,
    Started,
    StartFailed,
    Starts,
    TaskRun,
)
from node_agent.executors.confine import confine_mounts, confine_workdir
from node_agent.executors.docker_follow import copy_output, hold
from node_agent.executors.docker_options import (
    LABEL_EXECUTOR,
    LABEL_NODE,
    LABEL_TASK,
    container_name,
    container_options,
    executor_id,
    image_for,
)
from node_agent.executors.vps import (
    LABEL_VPS,
    VpsEndpoint,
    is_vps,
    probe_endpoint,
    publish_ip,
    vps_options,
    vps_problem,
    write_keys,
)
from node_agent.state_dir import private_directory

T = TypeVar("T")

# Short engine calls in flight at once (what `docker run` x16 in parallel puts on an engine).
ENGINE_CALLS = 16
# How long a VPS's watcher waits for an engine that went away (it restarts) to answer.
ENGINE_OUTAGE_S = 600.0
# How often a VPS's start time is read again, in case a restart went unseen.
RESTART_POLL_S = 2.0
# Connections the engine client keeps for reuse: the short calls, plus room for the
# followers of many containers (each holds one while it runs, and returns it after).
ENGINE_CONNECTIONS = 128


@dataclass(eq=False)
class _Box:
    task_id: str
    container: Any
    killed: bool = False
    stopped: bool = False  # the executor closed: stream threads write nothing more
    marks: dict[str, str] = field(default_factory=dict)  # stream -> last timestamp written
    outcome: asyncio.Task[Outcome] | None = None
    streams: list[asyncio.Task[None]] = field(default_factory=list)
    owner: tuple[int, int] | None = None  # uid, gid its output files are given to
    # A VPS (node_agent/executors/vps.py): the engine restarts its container until it is
    # killed; each start it makes counts a generation (the port may have changed).
    vps: bool = False
    started_at: str = ""
    generation: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def restarted(self, started_at: str) -> None:
        """The engine started the container again (its ``State.StartedAt``)."""
        if started_at and started_at != self.started_at:
            self.started_at = started_at
            self.generation += 1
            self.changed.set()


class DockerExecutor:
    """Runs tasks as Docker containers; see the module docstring."""

    name = "docker"

    def __init__(
        self,
        state_dir: Path | str,
        *,
        node: str,
        client: Any = None,
        runner_address: str = "127.0.0.1",
        install_sshd: bool = False,
    ) -> None:
        import docker

        self.state_dir = private_directory(state_dir)
        self.node = node
        # VPS tasks: their SSH port is published on this address; without sshd in the
        # image, the container installs it only with ``[vps] install_sshd``.
        self.runner_address = runner_address
        self.install_sshd = install_sshd
        self.executor_id = executor_id(self.state_dir)
        self.client = client or docker.from_env()
        self._boxes: dict[str, _Box] = {}
        self._starting = Starts()
        self._shared: dict[str, Path] = {}
        self._calls = ThreadPoolExecutor(ENGINE_CALLS, thread_name_prefix="hakuriver-docker")

    async def _call(self, function: Callable[[], T]) -> T:
        """A short engine call, in the executor's pool."""
        return await asyncio.get_running_loop().run_in_executor(self._calls, function)

    # -- the protocol --------------------------------------------------------------------

    async def start(self, run: TaskRun) -> Started:
        """Create and start the task's container (idempotent by task id)."""
        known = self._boxes.get(run.task_id)
        if known is not None:
            return Started(task_id=run.task_id, container_id=known.container.id)
        return await self._starting.once(run.task_id, lambda: self._start(run))

    async def _start(self, run: TaskRun) -> Started:
        try:
            container, existed, owner = await self._call(lambda: self._create(run))
        except StartFailed:
            if is_vps(run):
                self._drop_keys(run.task_id)
            raise
        box = _Box(task_id=run.task_id, container=container, owner=owner, vps=is_vps(run))
        if box.vps:
            box.started_at = container.attrs.get("State", {}).get("StartedAt", "")
        self._boxes[run.task_id] = box
        self._shared[run.task_id] = Path(run.shared_dir)
        # A container a previous agent started: its output is copied from the last mark on.
        self._follow(box, resume=existed)
        return Started(task_id=run.task_id, container_id=container.id)

    def _create(self, run: TaskRun) -> tuple[Any, bool, tuple[int, int] | None]:
        """The task's started container, whether a previous agent had started it, and
        the (uid, gid) it runs as when that is its owner's account."""
        import docker.errors

        spec = run.spec
        vps = is_vps(run)
        problem = vps_problem(run) if vps else None
        if problem is not None:
            raise StartFailed(problem)
        assert spec.container is not None
        shared = Path(run.shared_dir)
        for sub in ("shared_data", "task_outputs", "task_errors"):
            (shared / sub).mkdir(parents=True, exist_ok=True)
        Path(run.local_temp_dir).mkdir(parents=True, exist_ok=True)
        account = resolve_account(run.run_as) if run.run_as is not None else None
        owner = (account.uid, account.gid) if account is not None else None
        run = confine_workdir(confine_mounts(run))
        options = container_options(
            run, node=self.node, executor_id=self.executor_id, account=account
        )
        if vps:
            keys = self._keys_file(run.task_id)
            write_keys(keys, spec.ssh_public_key or "")
            options = vps_options(
                options,
                task_id=run.task_id,
                keys_file=keys,
                publish_on=publish_ip(self.runner_address),
                install_sshd=self.install_sshd,
            )
        image = image_for(spec.container)
        try:
            container, existed = engine.create(
                self.client,
                image,
                options,
                lambda: self._previous(run.task_id, options["name"]),
            )
        except docker.errors.ImageNotFound:
            raise StartFailed(
                f"environment {spec.container!r}: image {image} is not on this node"
                " (package it with `hakuriver docker create-tar` on the host)"
            ) from None
        if existed:
            return container, True, owner
        try:
            engine.start(container)
            if vps:
                engine.retrying(container.reload)  # its published port and start time
        except Exception as exc:
            with contextlib.suppress(Exception):
                container.remove(force=True)
            explanation = engine.describe(exc)
            if vps:
                self._drop_keys(run.task_id)
                if "/bin/sh" in explanation:
                    raise StartFailed(
                        f"image {image} has no /bin/sh: a VPS image needs a shell (and sshd,"
                        " or use `hakuriver vps shell`)"
                    ) from None
            raise StartFailed(f"docker could not start the task: {explanation}") from None
        return container, False, owner

    def _previous(self, task_id: str, name: str | None = None) -> Any | None:
        """This node's container of the task, made by an agent before this one (blocking)."""
        import docker.errors

        try:
            container = self.client.containers.get(name or container_name(task_id))
        except docker.errors.NotFound:
            return None
        labels = container.labels
        if labels.get(LABEL_TASK) != task_id or not self._ours(labels):
            return None
        return container

    def _ours(self, labels: dict[str, str]) -> bool:
        """Whether this executor made a container (one without an executor label predates
        the label: its node's name is all there is to go by)."""
        return (
            labels.get(LABEL_NODE) == self.node
            and labels.get(LABEL_EXECUTOR, self.executor_id) == self.executor_id
        )

    async def wait(self, task_id: str) -> Outcome:
        """The task's outcome once its container has exited."""
        box = self._known(task_id)
        if box.outcome is None:
            box.outcome = asyncio.ensure_future(self._outcome(box))
        return await asyncio.shield(box.outcome)

    async def _outcome(self, box: _Box) -> Outcome:
        import docker.errors

        lost = 0  # waits that failed transiently in a row (a dropped connection)
        while True:
            try:
                result = await hold(box.container.wait, f"hakuriver-wait-{box.task_id[-8:]}")
            except Exception as exc:
                if not box.vps or box.killed:
                    # A wait is idempotent: an exited container answers at once.
                    if engine.transient(exc) and lost < engine.ENGINE_TRIES - 1:
                        await asyncio.sleep(engine.pause(lost))
                        lost += 1
                        continue
                    raise
                # The engine went away (it restarts): it restarts the VPS when it is back.
                await self._engine_back(box)
                result = None
            for stream in box.streams:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await stream
            if box.vps and not box.killed and await self._vps_goes_on(box):
                continue
            if result is None:  # the engine came back with the VPS stopped: ask it again
                continue
            break
        code = int(result.get("StatusCode", -1))
        killed = box.killed or self._kill_marker(box.task_id).exists()
        if code == 0 and not killed:
            # Success needs no inspect (a child killed by the OOM killer while the task
            # itself exited 0 is still a completed task).
            return Outcome(state="completed", exit_code=0)
        try:
            await self._call(lambda: engine.retrying(box.container.reload))
        except docker.errors.NotFound:  # `docker rm -f` by someone else: its state is gone
            message = "the container was removed outside HakuRiver"
            return Outcome(state="killed" if killed else "failed", exit_code=code, message=message)
        state = box.container.attrs.get("State", {})
        if state.get("OOMKilled"):
            return Outcome(state="killed_oom", exit_code=code, message="out of memory")
        if killed:
            return Outcome(state="killed", exit_code=code)
        if code == 0:
            return Outcome(state="completed", exit_code=0)
        message = state.get("Error") or ""
        return Outcome(state="failed", exit_code=code, message=message)

    async def _vps_goes_on(self, box: _Box) -> bool:
        """Whether the engine restarts (or restarted) a VPS whose container exited: then it
        is the same task, still running, and its output is followed again."""
        import docker.errors

        pause = 0.05
        while True:
            try:
                await self._call(box.container.reload)
            except docker.errors.NotFound:
                return False
            state = box.container.attrs.get("State", {})
            if box.killed or self._kill_marker(box.task_id).exists():
                return False
            if state.get("Running") and not state.get("Restarting"):
                self._notice_start(box, state)
                return True
            if not state.get("Restarting"):
                return False  # stopped for good (`docker stop` outside HakuRiver)
            # Restarting: the engine's backoff (100 ms, doubling); nothing to wait on.
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _notice_start(self, box: _Box, state: dict[str, Any]) -> None:
        """A running VPS container's state: if the engine started it again, count the
        generation and follow its output again (its old stream ended with it)."""
        if state.get("StartedAt", "") == box.started_at:
            return
        box.restarted(state.get("StartedAt", ""))
        if all(stream.done() for stream in box.streams):
            box.streams = []
            if box.task_id in self._shared:
                self._follow(box, resume=True)

    async def _engine_back(self, box: _Box) -> None:
        """Wait (up to ``ENGINE_OUTAGE_S``) until the engine answers about a VPS again."""
        import docker.errors

        deadline = asyncio.get_running_loop().time() + ENGINE_OUTAGE_S
        pause = 0.1
        while True:
            try:
                await self._call(box.container.reload)
                return
            except docker.errors.NotFound:
                return
            except Exception:
                if asyncio.get_running_loop().time() >= deadline:
                    raise
            await asyncio.sleep(pause)  # the engine is down: nothing to wait on
            pause = min(pause * 2, 5.0)

    async def kill(self, task_id: str, grace_s: float) -> None:
        """``docker stop``: SIGTERM, SIGKILL after ``grace_s`` (rounded up to whole seconds)."""
        box = self._known(task_id)
        if self._ended(box):
            return
        box.killed = True
        self._kill_marker(task_id).touch(0o600)
        with contextlib.suppress(Exception):
            await self._call(lambda: box.container.unpause())
        # The engine counts whole seconds: 0.4 s must not become an immediate SIGKILL.
        await self._call(
            lambda: engine.retrying(lambda: box.container.stop(timeout=math.ceil(grace_s)))
        )

    async def pause(self, task_id: str) -> None:
        """``docker pause``."""
        await self._freeze(self._known(task_id), paused=True)

    async def resume(self, task_id: str) -> None:
        """``docker unpause``."""
        await self._freeze(self._known(task_id), paused=False)

    async def _freeze(self, box: _Box, *, paused: bool) -> None:
        """Pause or unpause; a no-op on an ended container or one already so.

        An overloaded engine's failure (no answer in time, a dropped connection, a 5xx)
        is asked again, after the container's state says the call did not take effect
        anyway (docker_engine: pausing twice is refused, not repeated)."""
        import docker.errors
        import requests.exceptions

        if self._ended(box):
            return
        call = box.container.pause if paused else box.container.unpause
        failure: BaseException | None = None
        for attempt in range(engine.ENGINE_TRIES):
            if attempt:
                await asyncio.sleep(engine.pause(attempt - 1))
            try:
                await self._call(call)
                return
            except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
                failure = exc  # the engine's answer, or none: anything else is a bug
            # The engine refuses a container that is not running, or already (un)paused,
            # and a lost answer may hide a call that took effect: its state tells.
            try:
                await self._call(lambda: engine.retrying(box.container.reload))
            except docker.errors.NotFound:
                return
            status = box.container.status
            if status not in ("running", "paused") or (status == "paused") == paused:
                return
            if not engine.transient(failure):
                break
        assert failure is not None
        raise ExecutorError(
            f"docker could not {'' if paused else 'un'}pause: {engine.describe(failure)}"
        ) from None

    async def adopt(self) -> list[Adopted]:
        """Find this node's task containers by label and watch them again."""
        import docker.errors

        labels = {"label": [LABEL_TASK, f"{LABEL_NODE}={self.node}"]}
        found = await self._call(lambda: _existing(self.client, labels))
        adopted = []
        for container in found:
            if not self._ours(container.labels):
                continue
            task_id = container.labels[LABEL_TASK]
            if task_id in self._boxes or task_id in self._starting:
                continue
            if container.status == "created":
                # Made, never started: an agent killed between the create and the start.
                # Its wait would end at once with 0 (a task "completed" that never ran);
                # removed, the task is the host's again (no `started` was reported: it
                # sends the task again to the agent that comes back without it).
                with contextlib.suppress(docker.errors.NotFound):
                    await self._call(functools.partial(container.remove, force=True))
                continue
            box = _Box(task_id=task_id, container=container)
            if container.labels.get(LABEL_VPS):
                box.vps = True
                box.started_at = container.attrs.get("State", {}).get("StartedAt", "")
            self._boxes[task_id] = box
            shared = self._shared_of(container)
            if shared is not None:
                self._shared[task_id] = shared
            status = container.status
            if shared is not None:
                # Also for an exited container: what it printed while no agent was
                # watching is copied now (from the last mark on), then the stream ends.
                self._follow(box, resume=True)
            adopted.append(
                Adopted(
                    task_id=task_id,
                    container_id=container.id,
                    paused=status == "paused",
                    ended=status in ("exited", "dead"),
                    cpus=parse_cpu_list(container.attrs.get("HostConfig", {}).get("CpusetCpus")),
                    vps=box.vps,
                )
            )
        return adopted

    async def forget(self, task_id: str) -> None:
        """Remove the ended task's container and records; refused while it runs."""
        import docker.errors

        box = self._boxes.get(task_id)
        if box is not None and not self._ended(box):
            with contextlib.suppress(docker.errors.NotFound):
                await self._call(box.container.reload)
                if box.container.status in ("running", "paused", "restarting"):
                    raise ExecutorError(
                        f"task {task_id!r} is still running; forget it once it ended"
                    )
        box = self._boxes.pop(task_id, None)
        if box is not None:
            with contextlib.suppress(Exception):
                await self._call(lambda: box.container.remove(force=True))
        for path in (self._kill_marker(task_id), self._position_file(task_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._drop_keys(task_id)
        self._shared.pop(task_id, None)

    async def close(self) -> None:
        """Stop streaming; containers keep running."""
        for box in self._boxes.values():
            box.stopped = True
            for stream in box.streams:
                stream.cancel()

    # -- VPS tasks -----------------------------------------------------------------------

    async def vps_endpoint(self, task_id: str, timeout_s: float) -> VpsEndpoint:
        """Where the VPS's sshd answers now, or why none does (waits up to ``timeout_s``
        of running time for it)."""
        import docker.errors

        box = self._known(task_id)
        generation = box.generation

        async def inspect() -> dict[str, Any]:
            try:
                await self._call(box.container.reload)
            except docker.errors.NotFound:
                raise NotWatched(task_id) from None
            attrs: dict[str, Any] = box.container.attrs
            return attrs

        async def stderr_tail() -> str:
            tail = await self._call(lambda: box.container.logs(stdout=False, tail=20))
            return bytes(tail).decode(errors="replace")

        return await probe_endpoint(
            task_id=task_id,
            address=self.runner_address,
            timeout_s=timeout_s,
            inspect=inspect,
            stderr_tail=stderr_tail,
            generation=generation,
        )

    async def vps_restarted(self, task_id: str, generation: int) -> int | None:
        """Wait until the VPS's container is started again after ``generation``: the new
        generation; None once the task has ended."""
        import docker.errors

        box = self._boxes.get(task_id)
        while box is not None and not self._ended(box) and box.generation == generation:
            box.changed.clear()
            waiting = asyncio.ensure_future(box.changed.wait())
            ending = (
                box.outcome
                if box.outcome is not None
                else asyncio.ensure_future(self.wait(task_id))
            )
            try:
                done, _ = await asyncio.wait(
                    {waiting, ending}, timeout=RESTART_POLL_S, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiting.cancel()
            if not done:
                # The watcher sees an exit only while its engine call waits: a restart
                # between two calls is seen here, by the start time.
                with contextlib.suppress(docker.errors.APIError):
                    await self._call(box.container.reload)
                    state = box.container.attrs.get("State", {})
                    if state.get("Running") and not state.get("Restarting"):
                        self._notice_start(box, state)
            box = self._boxes.get(task_id)
        if box is None or self._ended(box):
            return None
        return box.generation

    def vps_container(self, task_id: str) -> Any:
        """The container of a VPS task this executor watches (``NotWatched`` otherwise)."""
        box = self._known(task_id)
        if not box.vps:
            raise ExecutorError(f"task {task_id!r} is not a VPS")
        return box.container

    def _keys_file(self, task_id: str) -> Path:
        return self.state_dir / "vps-keys" / f"{task_id}.keys"

    def _drop_keys(self, task_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._keys_file(task_id).unlink()

    def running(self) -> list[str]:
        """Ids of the tasks whose container has not been seen to end."""
        return [t for t, b in self._boxes.items() if b.outcome is None or not b.outcome.done()]

    # -- helpers -------------------------------------------------------------------------

    def _known(self, task_id: str) -> _Box:
        box = self._boxes.get(task_id)
        if box is None:
            raise NotWatched(task_id)
        return box

    @staticmethod
    def _ended(box: _Box) -> bool:
        """Whether the container's end has been seen (its outcome is known)."""
        return box.outcome is not None and box.outcome.done()

    def _kill_marker(self, task_id: str) -> Path:
        return self.state_dir / f"{task_id}.kill"

    def _position_file(self, task_id: str) -> Path:
        return self.state_dir / f"{task_id}.logpos"

    @staticmethod
    def _shared_of(container: Any) -> Path | None:
        for mount in container.attrs.get("Mounts", []):
            if mount.get("Destination") == "/shared":
                return Path(mount["Source"]).parent
        return None

    def _follow(self, box: _Box, *, resume: bool) -> None:
        shared = self._shared[box.task_id]
        copy = functools.partial(
            copy_output,
            box.container,
            paths={
                "out": shared / "task_outputs" / f"{box.task_id}.out",
                "err": shared / "task_errors" / f"{box.task_id}.err",
            },
            position=self._position_file(box.task_id),
            marks=box.marks,
            resume=resume,
            stopped=lambda: box.stopped,
            owner=box.owner,
        )
        box.streams.append(asyncio.ensure_future(hold(copy, f"hakuriver-out-{box.task_id[-8:]}")))


def _existing(client: Any, filters: dict[str, Any]) -> list[Any]:
    """The containers matching ``filters``, skipping any removed while they are listed
    (``containers.list`` inspects each one it lists, and would raise for it)."""
    import docker.errors

    found = []
    for listed in client.api.containers(all=True, filters=filters):
        with contextlib.suppress(docker.errors.NotFound):
            found.append(client.containers.get(listed["Id"]))
    return found
