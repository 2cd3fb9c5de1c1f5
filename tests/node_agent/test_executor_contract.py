"""The executor contract (node_agent/executors/base.py), run against every backend.

Each test runs on the process executor and on the Docker executor (a real engine and the
locally imported busybox image: skipped without an engine, failed when
``HAKURIVER_REQUIRE_DOCKER=1``). Tasks are ``sh -c`` scripts, which mean the same on the
node and in busybox, working in ``shared_data`` (the working directory of both). What
only one backend does (shims, limits, container options, many containers at once) is
tested in its own file.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.docker_images import engine_or_skip
from support.waiting import async_wait_until

from events.ids import new_id
from events.types import TaskSpec
from node_agent.executors.base import (
    Executor,
    ExecutorError,
    NotWatched,
    Started,
    StartFailed,
    TaskRun,
)
from node_agent.executors.process import ProcessExecutor
from node_agent.executors.process_plan import HostFacilities
from node_agent.executors.procfs import group_stopped

pytestmark = pytest.mark.timeout(120)

# Ends on SIGTERM by itself, with the status a shell gives a SIGTERM (the same everywhere).
ENDS_ON_TERM = "trap 'exit 143' TERM; echo ready; while :; do sleep 0.02; done"
# Ignores SIGTERM: only the SIGKILL after the grace period ends it.
IGNORES_TERM = "trap '' TERM; echo ready; while :; do sleep 0.02; done"
# Appends a line to ``ticks`` every 10 ms: its length shows whether the task progresses.
TICKS = "trap 'exit 143' TERM; while :; do echo x >> ticks; sleep 0.01; done"


@dataclass
class Backend:
    """One executor kind, its task runs and how to look at what they did."""

    kind: str
    root: Path
    make_executor: Callable[[Path], Executor]
    container: str | None
    made: list[Executor] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    def executor(self) -> Executor:
        """A new executor on the same state directory (what a restarted agent makes)."""
        made = self.make_executor(self.state)
        self.made.append(made)
        return made

    def run(self, script: str, **placement: Any) -> TaskRun:
        """A task running ``sh -c script``, with a fresh id."""
        return self.task("sh", "-c", script, **placement)

    def task(self, command: str, *args: str, **placement: Any) -> TaskRun:
        """A task running an argument vector, with a fresh id."""
        return TaskRun(
            task_id=new_id(),
            spec=TaskSpec(command=command, args=args, container=self.container, batch_id="b"),
            cores=placement.pop("cores", 0),
            shared_dir=str(self.shared),
            local_temp_dir=str(self.root / "local"),
            **placement,
        )

    def output(self, run: TaskRun) -> str:
        path = self.shared / "task_outputs" / f"{run.task_id}.out"
        return path.read_text() if path.exists() else ""

    def errors(self, run: TaskRun) -> str:
        path = self.shared / "task_errors" / f"{run.task_id}.err"
        return path.read_text() if path.exists() else ""

    def ticks(self) -> int:
        path = self.shared / "shared_data" / "ticks"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def touch(self, name: str) -> None:
        """Create a file in the tasks' working directory (a gate a task waits for)."""
        (self.shared / "shared_data" / name).touch()

    def stopped(self, started: Started) -> bool:
        """Whether a paused task is really stopped (SIGSTOP is delivered asynchronously;
        a process in uninterruptible sleep stops only when it leaves it). ``docker pause``
        returns once the container's cgroup is frozen."""
        if started.pid is None:
            return True
        return group_stopped(started.pid)

    def signal_status(self, signum: int) -> int:
        """The exit code of a task a signal ended (base.Outcome: the backends differ)."""
        return -signum if self.kind == "process" else 128 + signum


@pytest.fixture(
    params=["process", pytest.param("docker", marks=pytest.mark.docker)],
)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    client: Any = None
    node = f"test-{new_id()}"  # unique: adopt lists every container with this node label
    if request.param == "process":

        def make(state: Path) -> Executor:
            return ProcessExecutor(state, facilities=HostFacilities())

        made = Backend("process", tmp_path, make, container=None)
    else:
        client = engine_or_skip()
        from node_agent.executors.docker import DockerExecutor

        def make(state: Path) -> Executor:
            return DockerExecutor(state, node=node, client=client)

        made = Backend("docker", tmp_path, make, container="busybox")
    made.shared.joinpath("shared_data").mkdir(parents=True)
    try:
        yield made
    finally:
        try:
            # Whatever a test left running is found the way a restarted agent finds it.
            for executor in made.made:
                await executor.close()
            cleaner = made.make_executor(made.state)
            for adopted in await cleaner.adopt():
                if not adopted.ended:
                    await cleaner.kill(adopted.task_id, grace_s=0)
                await asyncio.wait_for(cleaner.wait(adopted.task_id), 30)
                await cleaner.forget(adopted.task_id)
            await cleaner.close()
        finally:
            if client is not None:
                for container in client.containers.list(
                    all=True, sparse=True, filters={"label": f"hakuriver.node={node}"}
                ):
                    container.remove(force=True)


# -- start and outcome --------------------------------------------------------------------


async def test_exit_codes_map_to_completed_and_failed(backend: Backend) -> None:
    executor = backend.executor()
    ok, bad = backend.run("exit 0"), backend.run("exit 3")
    started = await executor.start(ok)
    await executor.start(bad)
    assert started.task_id == ok.task_id
    assert started.pid is not None or started.container_id is not None
    completed = await executor.wait(ok.task_id)
    assert (completed.state, completed.exit_code) == ("completed", 0)
    # Any number of callers may wait on the same task.
    failed, again = await asyncio.gather(executor.wait(bad.task_id), executor.wait(bad.task_id))
    assert (failed.state, failed.exit_code) == ("failed", 3)
    assert again == failed


async def test_output_goes_to_the_shared_dir_and_the_command_is_no_shell(
    backend: Backend,
) -> None:
    executor = backend.executor()
    tricky = ["$(whoami)", "a; echo injected", 'it\'s "quoted"', "`id`", "*"]
    run = backend.task("sh", "-c", 'printf "%s\\n" "$@"; echo to-err >&2', "sh", *tricky)
    await executor.start(run)
    assert (await executor.wait(run.task_id)).state == "completed"
    assert backend.output(run).splitlines() == tricky
    assert backend.errors(run) == "to-err\n"


async def test_starting_twice_runs_once(backend: Backend) -> None:
    executor = backend.executor()
    run = backend.run("echo once")
    first, second = await asyncio.gather(executor.start(run), executor.start(run))
    again = await executor.start(run)
    assert first == second == again
    assert (await executor.wait(run.task_id)).state == "completed"
    assert backend.output(run) == "once\n"


async def test_a_command_that_cannot_start_fails_and_leaves_nothing(backend: Backend) -> None:
    executor = backend.executor()
    run = backend.task("no-such-command-hakuriver")
    with pytest.raises(StartFailed, match="no-such-command-hakuriver"):
        await executor.start(run)
    with pytest.raises(NotWatched):
        await executor.wait(run.task_id)
    assert [p for p in backend.state.iterdir() if run.task_id in p.name] == []
    assert await backend.executor().adopt() == []


async def test_an_unknown_task_is_refused_and_forgetting_it_is_a_no_op(backend: Backend) -> None:
    executor = backend.executor()
    for control in (executor.pause, executor.resume, executor.wait):
        with pytest.raises(NotWatched):
            await control("nope")
    with pytest.raises(NotWatched):
        await executor.kill("nope", grace_s=1)
    await executor.forget("nope")


# -- kill, pause, resume ------------------------------------------------------------------


async def test_kill_escalates_to_sigkill_after_the_grace_period(backend: Backend) -> None:
    # Given a task that ignores SIGTERM
    executor = backend.executor()
    run = backend.run(IGNORES_TERM)
    await executor.start(run)
    await async_wait_until(lambda: backend.output(run) == "ready\n", 20)
    # When it is killed with a 1 s grace period
    began = time.monotonic()
    await executor.kill(run.task_id, grace_s=1.0)
    outcome = await asyncio.wait_for(executor.wait(run.task_id), 20)
    elapsed = time.monotonic() - began
    # Then SIGKILL ended it after the grace period, and the outcome is "killed"
    assert (outcome.state, outcome.exit_code) == ("killed", backend.signal_status(signal.SIGKILL))
    assert 1.0 <= elapsed < 1.0 + 15.0  # generous: the engine is slow on a loaded machine


async def test_a_fraction_of_a_second_of_grace_is_never_cut_to_nothing(
    backend: Backend,
) -> None:
    # Given a task that ignores SIGTERM
    executor = backend.executor()
    run = backend.run(IGNORES_TERM)
    await executor.start(run)
    await async_wait_until(lambda: backend.output(run) == "ready\n", 20)
    # When it is killed with 0.4 s of grace
    began = time.monotonic()
    await executor.kill(run.task_id, grace_s=0.4)
    outcome = await asyncio.wait_for(executor.wait(run.task_id), 20)
    # Then it had at least those 0.4 s before the SIGKILL
    assert time.monotonic() - began >= 0.4
    assert outcome.state == "killed"


async def test_a_task_that_ends_on_sigterm_is_killed_at_once(backend: Backend) -> None:
    executor = backend.executor()
    run = backend.run(ENDS_ON_TERM)
    await executor.start(run)
    await async_wait_until(lambda: backend.output(run) == "ready\n", 20)
    began = time.monotonic()
    await executor.kill(run.task_id, grace_s=30)
    outcome = await asyncio.wait_for(executor.wait(run.task_id), 20)
    assert time.monotonic() - began < 20  # well before the 30 s grace ran out
    # The task's own exit status is kept: the same on every backend.
    assert (outcome.state, outcome.exit_code) == ("killed", 143)


async def paused_for_good(backend: Backend, started: Started) -> int:
    """Wait until the task is stopped and its ticks stop moving; their count."""
    await async_wait_until(lambda: backend.stopped(started), 30)
    seen: list[int] = []

    def settled() -> bool:
        seen.append(backend.ticks())
        return len(seen) > 20 and seen[-1] == seen[-21]

    await async_wait_until(settled, 10)
    return seen[-1]


async def test_pause_stops_progress_resume_restarts_it_and_kill_reaches_a_paused_task(
    backend: Backend,
) -> None:
    # Given a task that ticks every 10 ms
    executor = backend.executor()
    run = backend.run(TICKS)
    started = await executor.start(run)
    await async_wait_until(lambda: backend.ticks() >= 3, 20)
    # When it is paused, its ticks stop for good
    await executor.pause(run.task_id)
    frozen = await paused_for_good(backend, started)
    with pytest.raises(AssertionError, match="condition not met"):
        await async_wait_until(lambda: backend.ticks() > frozen, 0.5)
    # And when it is resumed, they move on
    await executor.resume(run.task_id)
    await async_wait_until(lambda: backend.ticks() >= frozen + 3, 10)
    # And a kill reaches it while paused: its SIGTERM handler runs, no SIGKILL needed
    await executor.pause(run.task_id)
    await paused_for_good(backend, started)
    await executor.kill(run.task_id, grace_s=30)
    outcome = await asyncio.wait_for(executor.wait(run.task_id), 20)
    assert (outcome.state, outcome.exit_code) == ("killed", 143)


async def test_kill_pause_and_resume_leave_an_ended_task_as_it_ended(backend: Backend) -> None:
    executor = backend.executor()
    run = backend.run("exit 0")
    await executor.start(run)
    assert (await executor.wait(run.task_id)).state == "completed"
    await executor.pause(run.task_id)
    await executor.resume(run.task_id)
    await executor.kill(run.task_id, grace_s=0)
    assert (await executor.wait(run.task_id)).state == "completed"
    # Also for an agent that finds it after a restart.
    successor = backend.executor()
    [adopted] = await successor.adopt()
    assert adopted.ended
    outcome = await successor.wait(run.task_id)
    assert (outcome.state, outcome.exit_code) == ("completed", 0)


# -- forget and adoption ------------------------------------------------------------------


async def test_forget_drops_an_ended_task_only(backend: Backend) -> None:
    executor = backend.executor()
    run = backend.run(ENDS_ON_TERM)
    await executor.start(run)
    with pytest.raises(ExecutorError, match="still running"):
        await executor.forget(run.task_id)
    await executor.kill(run.task_id, grace_s=5)
    await executor.wait(run.task_id)
    await executor.forget(run.task_id)
    with pytest.raises(NotWatched):
        await executor.wait(run.task_id)
    # A restarted agent finds nothing of it any more.
    assert await backend.executor().adopt() == []
    await executor.forget(run.task_id)


async def test_a_new_executor_adopts_running_and_ended_tasks(backend: Backend) -> None:
    # Given an executor that ran one task to its end (unreported) and left one running
    cpu = 0
    executor = backend.executor()
    ended = backend.run("echo done; exit 5")
    running = backend.run(
        "echo before; while [ ! -e gate ]; do sleep 0.02; done; echo after; exit 7",
        cores=1,
        cpus=(cpu,),
        numa_id=0,
    )
    await executor.start(ended)
    await executor.start(running)
    await executor.wait(ended.task_id)
    await async_wait_until(lambda: backend.output(running) == "before\n", 20)
    # When it goes away and a new one adopts what it finds
    await executor.close()
    successor = backend.executor()
    adopted = {a.task_id: a for a in await successor.adopt()}
    # Then both tasks are found, each as it is, the running one with its CPU set
    assert set(adopted) == {ended.task_id, running.task_id}
    assert adopted[ended.task_id].ended and not adopted[running.task_id].ended
    assert adopted[running.task_id].cpus == (cpu,)
    assert await successor.adopt() == []  # already watched
    # And each outcome is reported: the ended one at once, the other when it ends
    outcome = await asyncio.wait_for(successor.wait(ended.task_id), 10)
    assert (outcome.state, outcome.exit_code) == ("failed", 5)
    backend.touch("gate")
    outcome = await asyncio.wait_for(successor.wait(running.task_id), 20)
    assert (outcome.state, outcome.exit_code) == ("failed", 7)
    # And what it printed meanwhile is all there, once
    assert backend.output(running) == "before\nafter\n"


async def test_a_paused_task_is_adopted_as_paused(backend: Backend) -> None:
    executor = backend.executor()
    run = backend.run(TICKS)
    started = await executor.start(run)
    await async_wait_until(lambda: backend.ticks() >= 3, 20)
    await executor.pause(run.task_id)
    frozen = await paused_for_good(backend, started)
    await executor.close()
    successor = backend.executor()
    [adopted] = await successor.adopt()
    assert adopted.paused and not adopted.ended
    await successor.resume(run.task_id)
    await async_wait_until(lambda: backend.ticks() >= frozen + 3, 10)
    await successor.kill(run.task_id, grace_s=30)
    assert (await asyncio.wait_for(successor.wait(run.task_id), 10)).state == "killed"


async def test_after_a_restart_start_takes_over_the_running_task(backend: Backend) -> None:
    # Given a task started by an executor that went away
    executor = backend.executor()
    run = backend.run("echo started; trap 'exit 143' TERM; while :; do sleep 0.02; done")
    first = await executor.start(run)
    await async_wait_until(lambda: backend.output(run) == "started\n", 20)
    await executor.close()
    # When the host sends the same run command to a new executor (before any adopt)
    successor = backend.executor()
    again = await successor.start(run)
    # Then it takes over the running task instead of starting it again
    assert again == first
    # And can kill it, with the outcome saying so
    await successor.kill(run.task_id, grace_s=30)
    outcome = await asyncio.wait_for(successor.wait(run.task_id), 10)
    assert (outcome.state, outcome.exit_code) == ("killed", 143)
    assert backend.output(run) == "started\n"
