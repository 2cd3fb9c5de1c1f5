"""The process executor: command tasks as plain processes on the node.

Each task runs under a shim (``shim.py``) in a session of its own, so tasks outlive
the agent: the shim records the task's exit status in the executor's state
directory, and a restarted agent adopts the shims it finds there (``adopt``),
telling a live shim from a reused pid by its kernel start time.

The task itself runs in its own session and process group, pinned to its CPU set,
bound to its NUMA node's memory with ``numactl`` when one is targeted and numactl
exists (without it, pinning to the node's CPUs still gets node-local memory under the
kernel's default first-touch policy), and limited in memory (see ``process_plan``).
Kill is SIGTERM to the group (with SIGCONT, so a paused task can act on it), then
SIGKILL after the grace period; pause and resume are SIGSTOP and SIGCONT to the group.

A task run as its owner (``TaskRun.run_as``, node_agent/accounts.py) gets the account's
uid, gid and groups in its own process only (the shim drops privileges in the child it
forks, or ``setpriv`` does under systemd), its HOME, USER and LOGNAME, and starts in
``shared_data`` if the account can write there, else in its home, else in ``/tmp``.
A task with a ``workdir`` (a job's copied folder) starts there instead, once it resolved
inside the folders the task may use (``confine.py``).
Every task starts from a clean environment, not the runner's (``task_environment``), and
its output files and the shims' records are mode 0600 in a 0700 state directory.

Shims are spawned with ``subprocess`` (vfork) on a worker thread and watched through a
pidfd on the event loop, so neither the loop type (uvloop's spawn forks) nor asyncio's
child watchers are involved, and a shim the agent did not start is watched the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from node_agent.accounts import resolve_account, working_directory
from node_agent.cpus import parse_cpu_list
from node_agent.executors import shim
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
from node_agent.executors.confine import confine_workdir, resolve_mounts
from node_agent.executors.process_plan import (
    HostFacilities,
    LaunchSpec,
    decide_outcome,
    plan_launch,
    task_paths,
)
from node_agent.executors.procfs import group_stopped
from node_agent.executors.zygote import SHIM_PATH, NoZygote, Zygote
from node_agent.state_dir import private_directory

POLL_INTERVAL_S = 0.05  # only where pidfds are unavailable (Linux < 5.3)


@dataclass(eq=False)
class _Watched:
    """A task's shim as the executor follows it."""

    task_id: str
    shim_pid: int
    shim_start: int
    pid: int
    memory_limit: str
    child: subprocess.Popen[bytes] | None  # None when a previous agent started the shim
    cpus: tuple[int, ...] = ()
    # The zygote's connection to the shim, held until the shim closes it once the exit is
    # recorded (or dies): its end is the end of the task, seen before the shim's exit.
    conn: socket.socket | None = None
    outcome: asyncio.Task[Outcome] | None = None
    paused: bool = False
    exited: bool = False  # the shim is known to have exited

    def ended(self) -> bool:
        return self.exited or (self.outcome is not None and self.outcome.done())


class ProcessExecutor:
    """Runs tasks as processes under per-task shims; see the module docstring."""

    name = "process"

    def __init__(
        self,
        state_dir: Path | str,
        *,
        facilities: HostFacilities | None = None,
        use_zygote: bool = True,
        pass_environment: tuple[str, ...] = (),
        numactl: str | None = None,
    ) -> None:
        # Private: its records, the shims' logs and the zygote's socket are its user's alone.
        self.state_dir = private_directory(state_dir)
        # ``numactl``: ``[paths] numactl_path`` (None or "": numactl found on PATH).
        self.facilities = (
            HostFacilities.detect(numactl=numactl) if facilities is None else facilities
        )
        self.pass_environment = pass_environment
        self._tasks: dict[str, _Watched] = {}
        self._starting = Starts()
        self._zygote = Zygote(self.state_dir) if use_zygote else NoZygote()

    # -- the protocol --------------------------------------------------------------------

    async def start(self, run: TaskRun) -> Started:
        """Launch the task under a shim and return its pid (idempotent by task id)."""
        known = self._tasks.get(run.task_id)
        if known is not None:
            return Started(task_id=run.task_id, pid=known.pid)
        return await self._starting.once(run.task_id, lambda: self._start(run))

    async def wait(self, task_id: str) -> Outcome:
        """The task's outcome once it has ended."""
        watched = self._known(task_id)
        assert watched.outcome is not None
        return await asyncio.shield(watched.outcome)

    async def kill(self, task_id: str, grace_s: float) -> None:
        """SIGTERM (and SIGCONT) to the task's group; SIGKILL if it outlives ``grace_s``."""
        watched = self._known(task_id)
        if watched.ended():
            return
        assert watched.outcome is not None
        # The marker survives an agent restart, so the outcome still says "killed".
        await asyncio.to_thread(Path(self._base(task_id) + shim.KILL).touch, shim.PRIVATE_FILE)
        self._signal(watched, signal.SIGTERM)
        self._signal(watched, signal.SIGCONT)
        watched.paused = False
        try:
            await asyncio.wait_for(asyncio.shield(watched.outcome), timeout=grace_s)
        except TimeoutError:
            self._signal(watched, signal.SIGKILL)

    async def pause(self, task_id: str) -> None:
        """SIGSTOP to the task's process group."""
        watched = self._known(task_id)
        self._signal(watched, signal.SIGSTOP)
        watched.paused = not watched.ended()

    async def resume(self, task_id: str) -> None:
        """SIGCONT to the task's process group."""
        watched = self._known(task_id)
        self._signal(watched, signal.SIGCONT)
        watched.paused = False

    async def adopt(self) -> list[Adopted]:
        """Watch again the tasks a previous agent started (running, or ended unreported)."""
        found = await asyncio.to_thread(self._scan)
        adopted: list[Adopted] = []
        for watched, paused, ended in found:
            if watched.task_id in self._tasks or watched.task_id in self._starting:
                continue
            watched.paused = paused
            watched.exited = ended
            self._follow(watched)
            adopted.append(
                Adopted(
                    task_id=watched.task_id,
                    pid=watched.pid,
                    paused=paused,
                    ended=ended,
                    cpus=watched.cpus,
                )
            )
        return adopted

    async def forget(self, task_id: str) -> None:
        """Delete an ended task's state files; refused while it runs."""
        watched = self._tasks.get(task_id)
        if watched is not None and not (watched.outcome and watched.outcome.done()):
            raise ExecutorError(f"task {task_id!r} is still running; forget it once it ended")
        self._tasks.pop(task_id, None)
        await asyncio.to_thread(self._remove_files, task_id)

    async def close(self) -> None:
        """Stop watching; the tasks and their shims keep running."""
        followers = [w.outcome for w in self._tasks.values() if w.outcome and not w.outcome.done()]
        for follower in followers:
            follower.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        for watched in self._tasks.values():
            if watched.conn is not None:  # a follower cancelled before it ran
                watched.conn.close()
        self._tasks.clear()

    # -- also useful to the agent --------------------------------------------------------

    def running(self) -> list[str]:
        """Ids of the tasks started or adopted that have not ended yet."""
        return [task_id for task_id, w in self._tasks.items() if not w.ended()]

    def is_paused(self, task_id: str) -> bool:
        """Whether the task was paused (and not resumed) through this executor."""
        return self._known(task_id).paused

    # -- internals -----------------------------------------------------------------------

    def _base(self, task_id: str) -> str:
        return str(self.state_dir / task_id)

    def _known(self, task_id: str) -> _Watched:
        watched = self._tasks.get(task_id)
        if watched is None:
            raise NotWatched(task_id)
        return watched

    async def _start(self, run: TaskRun) -> Started:
        watched = await asyncio.to_thread(self._spawn, run)
        self._follow(watched)
        return Started(task_id=run.task_id, pid=watched.pid)

    def _spawn(self, run: TaskRun) -> _Watched:
        """Start the shim, hand it the spec, read its answer (blocking; on a worker thread)."""
        base = self._base(run.task_id)
        if os.path.exists(base + shim.RUN):  # a previous agent started it: adopt, don't rerun
            previous = self._load(run.task_id)
            if previous is not None:
                return previous
        paths = task_paths(run.shared_dir, run.task_id)
        try:
            for directory in (
                paths.cwd,
                os.path.dirname(paths.stdout),
                os.path.dirname(paths.stderr),
                run.local_temp_dir,
            ):
                os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise StartFailed(f"cannot prepare the task's directories: {exc}") from exc
        run = resolve_mounts(confine_workdir(run))
        launch = self._plan(run, paths.cwd)
        payload = launch.to_builtins()
        via_zygote = self._zygote.spawn(run.task_id, payload)
        if via_zygote is not None:
            shim_pid, answer, conn = via_zygote
            try:
                watched = self._started(run, shim_pid, answer, None)
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            watched.conn = conn
            return watched
        with open(os.open(base + shim.LOG, shim.CREATE, shim.PRIVATE_FILE), "wb") as log:
            child = subprocess.Popen(
                [sys.executable, "-I", "-S", SHIM_PATH, str(self.state_dir), run.task_id],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        assert child.stdin is not None and child.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            child.stdin.write(shim.encode_request(run.task_id, payload))
        with contextlib.suppress(BrokenPipeError):
            child.stdin.close()
        answer = child.stdout.readline().decode(errors="replace").strip()
        child.stdout.close()
        return self._started(run, child.pid, answer, child)

    def _plan(self, run: TaskRun, shared_data: str) -> LaunchSpec:
        """The launch spec, as the task's owner's account when it runs as one (blocking:
        the account is looked up now, and ``StartFailed`` names it when it is missing)."""
        passed = self.pass_environment
        if run.run_as is None:
            return plan_launch(run, self.facilities, os.environ, pass_environment=passed)
        account = resolve_account(run.run_as)
        cwd = working_directory(shared_data, account)  # plan_launch prefers a workdir
        return plan_launch(
            run, self.facilities, os.environ, account=account, cwd=cwd, pass_environment=passed
        )

    def _started(
        self,
        run: TaskRun,
        shim_pid: int,
        answer: str,
        child: subprocess.Popen[bytes] | None,
    ) -> _Watched:
        """The shim's answer: the task's pid, or why it could not start."""
        if not answer or answer.startswith("!"):
            if child is not None:
                child.wait()
            problem = answer[1:] or "the task's shim failed: " + self._log_tail(run.task_id)
            self._remove_files(run.task_id)
            raise StartFailed(problem)
        record = shim.read_record(self._base(run.task_id) + shim.RUN)
        return _Watched(
            task_id=run.task_id,
            shim_pid=shim_pid,
            shim_start=int(record["shim_start"]),
            pid=int(answer),
            memory_limit=record.get("memory_limit", "none"),
            child=child,
            cpus=parse_cpu_list(record.get("cpus")),
        )

    def _follow(self, watched: _Watched) -> None:
        self._tasks[watched.task_id] = watched
        watched.outcome = asyncio.create_task(
            self._outcome(watched), name=f"process-task-{watched.task_id}"
        )

    async def _outcome(self, watched: _Watched) -> Outcome:
        if not watched.exited:
            # Adopted already ended (its exit recorded, or its shim gone): nothing to wait
            # for. A shim whose end was reported may still be leaving (its connection
            # closed once the exit was recorded): waiting for it kept a restarted agent
            # from forgetting the records when the host acknowledged that end.
            await self._shim_exit(watched)
        watched.exited = True
        # Read on the loop, not on a worker thread: a record of a few bytes in the local
        # state directory reads in microseconds, where the hop to a thread and back costs
        # two wake-ups (milliseconds each on a busy machine) between a task's end and its
        # report.
        return self._read_outcome(watched)

    async def _shim_exit(self, watched: _Watched) -> None:
        """Return once the shim has recorded the task's exit and closed its connection
        (or died), or, without a connection, once it has exited (reaping it when it is
        our child)."""
        if watched.conn is not None:
            await self._connection_end(watched.conn)
            watched.conn = None
            return
        pidfd = self._open_pidfd(watched)
        if pidfd is None:
            while self._shim_alive(watched):  # noqa: ASYNC110 - nothing to wait on but time
                await asyncio.sleep(POLL_INTERVAL_S)
        elif pidfd >= 0:
            loop = asyncio.get_running_loop()
            exited: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not exited.done():
                    exited.set_result(None)

            loop.add_reader(pidfd, readable)
            try:
                await exited
            finally:
                loop.remove_reader(pidfd)
                os.close(pidfd)
        if watched.child is not None:
            watched.child.wait()  # it has exited: this only reaps it

    async def _connection_end(self, conn: socket.socket) -> None:
        """Wait for the end of the shim's connection, then close it. The shim writes
        nothing after its answer; whatever comes is read and dropped until the end."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            try:
                data = conn.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""  # reset: the shim is gone all the same
            if not data and not ended.done():
                ended.set_result(None)

        conn.setblocking(False)
        loop.add_reader(conn.fileno(), readable)
        try:
            await ended
        finally:
            loop.remove_reader(conn.fileno())
            conn.close()

    def _open_pidfd(self, watched: _Watched) -> int | None:
        """A pidfd on the shim; -1 if it is already gone; None without pidfd support."""
        try:
            pidfd = os.pidfd_open(watched.shim_pid)
        except ProcessLookupError:
            return -1
        except (AttributeError, OSError) as exc:
            if getattr(exc, "errno", None) == errno.ESRCH:
                return -1
            return None
        if watched.child is None and not self._shim_alive(watched):
            os.close(pidfd)  # the pid now names another process (or a zombie)
            return -1
        return pidfd

    def _shim_alive(self, watched: _Watched) -> bool:
        if watched.child is not None:
            return watched.child.poll() is None
        stat = shim.proc_stat(watched.shim_pid)
        return stat is not None and stat[1] == watched.shim_start

    def _read_outcome(self, watched: _Watched) -> Outcome:
        base = self._base(watched.task_id)
        try:
            record = shim.read_record(base + shim.EXIT)
            returncode = int(record["returncode"])
            oom_kills = int(record.get("oom_kills", "0"))
        except (OSError, KeyError, ValueError):
            return Outcome(
                state="failed",
                message="the task's shim ended without recording how the task ended: "
                + self._log_tail(watched.task_id),
            )
        return decide_outcome(
            returncode,
            oom_kills=oom_kills,
            killed_by_us=os.path.exists(base + shim.KILL),
            memory_limit=watched.memory_limit,
        )

    def _signal(self, watched: _Watched, signum: int) -> None:
        if watched.ended():
            return
        try:
            os.killpg(watched.pid, signum)
        except ProcessLookupError:
            pass  # the task is ending; its shim is about to record it
        except PermissionError as exc:
            raise ExecutorError(f"cannot signal task {watched.task_id!r}: {exc}") from exc

    def _load(self, task_id: str) -> _Watched | None:
        """A shim from its running record, or None when the record is unreadable."""
        try:
            record = shim.read_record(self._base(task_id) + shim.RUN)
            return _Watched(
                task_id=task_id,
                shim_pid=int(record["shim_pid"]),
                shim_start=int(record["shim_start"]),
                pid=int(record["pid"]),
                memory_limit=record.get("memory_limit", "none"),
                child=None,
                cpus=parse_cpu_list(record.get("cpus")),
            )
        except (OSError, KeyError, ValueError):
            return None

    def _scan(self) -> list[tuple[_Watched, bool, bool]]:
        """Every task in the state directory: (shim, paused, ended)."""
        found: list[tuple[_Watched, bool, bool]] = []
        for path in sorted(self.state_dir.glob("*" + shim.RUN)):
            watched = self._load(path.name.removesuffix(shim.RUN))
            if watched is None:
                continue
            ended = os.path.exists(self._base(watched.task_id) + shim.EXIT) or (
                not self._shim_alive(watched)
            )
            found.append((watched, not ended and group_stopped(watched.pid), ended))
        return found

    def _remove_files(self, task_id: str) -> None:
        base = self._base(task_id)
        for suffix in (shim.RUN, shim.EXIT, shim.KILL, shim.LOG):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(base + suffix)

    def _log_tail(self, task_id: str, size: int = 2000) -> str:
        try:
            with open(self._base(task_id) + shim.LOG, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - size))
                tail = log.read().decode(errors="replace").strip()
        except OSError:
            tail = ""
        return tail or "no diagnostics (see the agent's log)"
