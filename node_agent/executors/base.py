"""The executor protocol: how the agent starts, watches and controls a task.

Every backend (``process``, ``docker``) implements ``Executor``, and one contract
suite (tests/node_agent/test_executor_contract.py) runs against each. The agent
drives it like this:

1. ``start(run)`` launches the task and returns once it is running, with its pid or
   container id (the agent reports ``task.started``). Starting a task id the
   executor already knows returns the same ``Started`` again, also while the first
   start is still under way, and also for a task a previous agent started (it is
   taken over, not started twice): commands from the host may be repeated after a
   reconnect. A task that cannot start (no such command, bad working directory...)
   raises ``StartFailed`` with a message for the user, and leaves nothing behind.
2. ``wait(task_id)`` returns the task's ``Outcome`` when it ends (the agent reports
   ``task.finished``). Any number of callers may wait on the same task.
3. ``kill(task_id, grace_s)`` asks the task to stop (SIGTERM, after continuing it if
   paused), and forces it (SIGKILL) after at least ``grace_s`` seconds; its outcome is
   then ``killed``. ``pause``/``resume`` freeze and continue it, and are no-ops on a
   task already so. All three are no-ops on a task that has ended, and raise
   ``NotWatched`` for a task id the executor does not know.
4. Tasks outlive the agent. After a restart, ``adopt()`` finds the tasks a previous
   agent started that are still running, or that ended while no agent watched
   (their ``wait`` then returns at once), and resumes watching them; each comes with
   the CPU set it was pinned to, read back from the backend's own records, so the
   agent can count those CPUs as taken again.
5. ``forget(task_id)``, once the agent has durably recorded the outcome (put
   ``task.finished`` in its outbox), drops what the executor keeps about the task,
   so a later ``adopt`` does not report it again. It refuses (``ExecutorError``) a
   task still running, and does nothing for a task it does not know.
6. ``close()`` stops watching without touching the tasks (agent shutdown).

Where the backends differ, by nature, not by choice:

- A task a signal ended: the process executor knows (the kernel's wait status) and
  says ``-n`` for signal n; the Docker engine reports only the container's status,
  ``128 + n``, as a shell would, which a task's own ``exit 137`` cannot be told from.
  Tasks that exit by themselves get their own status on both.
- The grace period: ``docker stop`` counts whole seconds, so Docker rounds it up
  (0.4 s becomes 1 s); the process executor keeps fractions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from msgspec import Struct

from events.types import FinalState, TaskSpec

if TYPE_CHECKING:
    from node_agent.executors.vps import VpsEndpoint


class TaskRun(Struct, frozen=True, kw_only=True):
    """One task to run on this node, with the resources the scheduler placed it on."""

    task_id: str
    spec: TaskSpec
    cores: int
    memory_bytes: int | None = None
    gpu_ids: tuple[int, ...] = ()
    numa_id: int | None = None
    cpus: tuple[int, ...] = ()  # the CPU set to pin the task to; empty: no pinning
    shared_dir: str
    local_temp_dir: str
    # The account to run it as (``[runner] run_tasks_as = "owner"``: its owner's name);
    # None: the runner's own user. node_agent/accounts.py says how.
    run_as: str | None = None
    # A job rank's control folder on this node (node_agent/ranks.py), which the task
    # finds as ``events.jobs.CONTROL_ENV`` (a container: mounted at ``CONTAINER_CONTROL``).
    control_dir: str | None = None
    # The node's name, which the task finds as ``HAKURIVER_NODE`` ("": not set).
    node: str = ""


class Started(Struct, frozen=True, kw_only=True):
    """A running task: its process id or its container id."""

    task_id: str
    pid: int | None = None
    container_id: str | None = None


class Outcome(Struct, frozen=True, kw_only=True):
    """How a task ended.

    ``exit_code`` is the exit status, or when a signal ended it minus the signal number
    (``-9`` for SIGKILL; the Docker executor says ``137``, see the module docstring),
    or None when the executor lost track of the status.
    """

    state: FinalState
    exit_code: int | None = None
    message: str = ""


class Adopted(Struct, frozen=True, kw_only=True):
    """A task found after an agent restart, watched again from now on."""

    task_id: str
    pid: int | None = None
    container_id: str | None = None
    paused: bool = False
    ended: bool = False  # it ended while no agent watched: ``wait`` returns at once
    cpus: tuple[int, ...] = ()  # the CPU set it is pinned to; empty: unpinned (or unknown)
    vps: bool = False  # a VPS task (node_agent/executors/vps.py): the agent reports vps.ready


class ExecutorError(Exception):
    """An executor could not do what it was asked; the message says why."""


class StartFailed(ExecutorError):
    """A task could not be started (its outcome is ``failed`` and it never ran)."""


class NotWatched(ExecutorError):
    """The executor watches no task with this id (not started here, or forgotten)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task {task_id!r} on this executor")
        self.task_id = task_id


class Executor(Protocol):
    """A backend that runs tasks: plain processes, Docker containers..."""

    name: str

    async def start(self, run: TaskRun) -> Started:
        """Launch a task (idempotent by task id); raise ``StartFailed`` if it cannot run."""
        ...

    async def wait(self, task_id: str) -> Outcome:
        """The task's outcome, once it has ended."""
        ...

    async def kill(self, task_id: str, grace_s: float) -> None:
        """Ask the task to stop; force it after ``grace_s`` seconds."""
        ...

    async def pause(self, task_id: str) -> None:
        """Freeze the task's processes."""
        ...

    async def resume(self, task_id: str) -> None:
        """Continue a paused task."""
        ...

    async def adopt(self) -> list[Adopted]:
        """Find tasks a previous agent started and watch them again."""
        ...

    async def forget(self, task_id: str) -> None:
        """Drop an ended task's records once its outcome is safely reported."""
        ...

    async def close(self) -> None:
        """Stop watching; running tasks are left running."""
        ...


@runtime_checkable
class RunsVps(Protocol):
    """An executor that runs VPS tasks (the Docker executor; node_agent/executors/vps.py)."""

    async def vps_endpoint(self, task_id: str, timeout_s: float) -> VpsEndpoint:
        """Where the VPS's sshd answers, or why none does, waiting up to ``timeout_s``."""
        ...

    async def vps_restarted(self, task_id: str, generation: int) -> int | None:
        """The next generation once the container restarts; None once the task ended."""
        ...

    def vps_container(self, task_id: str) -> Any:
        """The container of a watched VPS task."""
        ...


class Starts:
    """Starts in flight, one per task id: a second ``start`` of a task awaits the first
    (the contract's idempotent start, shared by the executors)."""

    def __init__(self) -> None:
        self._by_task: dict[str, asyncio.Future[Started]] = {}

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._by_task

    async def once(self, task_id: str, start: Callable[[], Awaitable[Started]]) -> Started:
        """``start()``'s result, running it only if no start of ``task_id`` is in flight."""
        starting = self._by_task.get(task_id)
        if starting is None:
            starting = asyncio.ensure_future(start())
            self._by_task[task_id] = starting
            starting.add_done_callback(lambda _: self._by_task.pop(task_id, None))
        return await asyncio.shield(starting)
