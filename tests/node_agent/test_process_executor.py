"""The process executor with real processes: what only it does (the contract that every
executor meets is in test_executor_contract.py): its environment, the end of a task's
leftovers, CPU, NUMA and memory limits, and shims that outlive a SIGKILLed agent.

Tasks run under ``HostFacilities()`` (no systemd, numactl or cgroup) unless a test says
otherwise, so the results do not depend on the machine running the tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from support.waiting import async_wait_until

from events.ids import new_id
from events.types import TaskSpec
from node_agent.executors import shim
from node_agent.executors.base import TaskRun
from node_agent.executors.process import ProcessExecutor
from node_agent.executors.process_plan import HostFacilities, prepare_cgroup_parent

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def task(tmp_path: Path, command: str, *args: str, **placement: object) -> TaskRun:
    """A task run with a fresh id, sharing ``tmp_path/shared``."""
    env = placement.pop("env", {})
    assert isinstance(env, dict)
    return TaskRun(
        task_id=new_id(),
        spec=TaskSpec(command=command, args=args, env=env, batch_id="b-1"),
        cores=1,
        shared_dir=str(tmp_path / "shared"),
        local_temp_dir=str(tmp_path / "local"),
        **placement,  # type: ignore[arg-type]
    )


def python(tmp_path: Path, code: str, **placement: object) -> TaskRun:
    """A task running a Python snippet."""
    return task(tmp_path, PY, "-c", code, **placement)


def out(run: TaskRun) -> str:
    return (Path(run.shared_dir) / "task_outputs" / f"{run.task_id}.out").read_text()


def err(run: TaskRun) -> str:
    return (Path(run.shared_dir) / "task_errors" / f"{run.task_id}.err").read_text()


def alive(pid: int) -> bool:
    return shim.proc_stat(pid) is not None


@pytest.fixture
async def executor(tmp_path: Path) -> AsyncIterator[ProcessExecutor]:
    ex = ProcessExecutor(tmp_path / "state", facilities=HostFacilities())
    yield ex
    for task_id in ex.running():
        await ex.kill(task_id, grace_s=0.1)
    await ex.close()


# -- environment and leftovers -----------------------------------------------------------


async def test_environment_and_working_directory(executor: ProcessExecutor, tmp_path: Path) -> None:
    code = (
        "import json, os; print(json.dumps({k: os.environ.get(k) for k in "
        "('FOO', 'HAKURIVER_TASK_ID', 'HAKURIVER_LOCAL_TEMP_DIR', 'CUDA_VISIBLE_DEVICES')}"
        " | {'cwd': os.getcwd()}))"
    )
    run = python(tmp_path, code, env={"FOO": "bar baz"}, gpu_ids=(1, 3))
    await executor.start(run)
    await executor.wait(run.task_id)
    seen = json.loads(out(run))
    assert seen == {
        "FOO": "bar baz",
        "HAKURIVER_TASK_ID": run.task_id,
        "HAKURIVER_LOCAL_TEMP_DIR": str(tmp_path / "local"),
        "CUDA_VISIBLE_DEVICES": "1,3",
        "cwd": str(tmp_path / "shared" / "shared_data"),
    }
    assert (tmp_path / "local").is_dir()


async def test_leftover_processes_end_with_the_task(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    # Given a task whose main process exits leaving a background child behind
    run = task(tmp_path, "sh", "-c", "sleep 30 & echo $!")
    await executor.start(run)
    # Then the task completes and the child does not outlive it
    assert (await executor.wait(run.task_id)).state == "completed"
    straggler = int(out(run))
    await async_wait_until(lambda: not alive(straggler), 5)


# -- CPU, NUMA and memory --------------------------------------------------------------


async def test_the_task_is_pinned_to_its_cpu_set(executor: ProcessExecutor, tmp_path: Path) -> None:
    cpu = max(os.sched_getaffinity(0))
    run = python(tmp_path, "import os; print(sorted(os.sched_getaffinity(0)))", cpus=(cpu,))
    await executor.start(run)
    assert (await executor.wait(run.task_id)).state == "completed"
    assert json.loads(out(run)) == [cpu]


async def test_a_numa_target_binds_memory_through_numactl(tmp_path: Path) -> None:
    # Given a numactl that records its arguments, then runs the command after "--"
    fake = tmp_path / "numactl"
    record = tmp_path / "numactl.args"
    fake.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n'
        'while [ "$1" != "--" ]; do shift; done; shift; exec "$@"\n'
    )
    fake.chmod(0o755)
    ex = ProcessExecutor(tmp_path / "state", facilities=HostFacilities(numactl=str(fake)))
    run = task(tmp_path, "echo", "bound", numa_id=0, cpus=(0,))
    await ex.start(run)
    assert (await ex.wait(run.task_id)).state == "completed"
    assert out(run) == "bound\n"
    assert record.read_text().splitlines() == ["--membind=0", "--", "echo", "bound"]
    await ex.close()


async def test_memory_is_limited_by_an_rlimit_without_cgroups(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    run = python(tmp_path, "x = bytearray(512 * 2**20)", memory_bytes=128 * 2**20)
    await executor.start(run)
    outcome = await executor.wait(run.task_id)
    assert (outcome.state, outcome.exit_code) == ("failed", 1)
    assert "MemoryError" in err(run)
    assert (
        shim.read_record(str(tmp_path / "state" / run.task_id) + shim.RUN)["memory_limit"]
        == "rlimit"
    )


async def test_going_over_a_cgroup_memory_limit_is_killed_oom(tmp_path: Path) -> None:
    if prepare_cgroup_parent() is None:
        pytest.skip("needs a writable cgroup v2 hierarchy (root, cgroup2, memory delegated)")
    ex = ProcessExecutor(tmp_path / "state", facilities=HostFacilities.detect())
    run = python(tmp_path, "x = b'x' * (512 * 2**20)", memory_bytes=64 * 2**20)
    await ex.start(run)
    outcome = await asyncio.wait_for(ex.wait(run.task_id), 30)
    assert outcome.state == "killed_oom", outcome
    await ex.close()


# -- tasks outlive the agent -------------------------------------------------------------

AGENT_A = """
import asyncio, sys
import msgspec
from node_agent.executors.base import TaskRun
from node_agent.executors.process import ProcessExecutor
from node_agent.executors.process_plan import HostFacilities

async def main():
    executor = ProcessExecutor(sys.argv[1], facilities=HostFacilities())
    for encoded in sys.argv[2:]:
        started = await executor.start(msgspec.json.decode(encoded, type=TaskRun))
        print(started.task_id, started.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def crashed_agent(state: Path, *runs: TaskRun) -> dict[str, int]:
    """Start the runs from agent A, a real process, then SIGKILL A: {task id: pid}."""
    agent_a = await asyncio.create_subprocess_exec(
        PY,
        "-c",
        AGENT_A,
        str(state),
        *(msgspec.json.encode(run).decode() for run in runs),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert agent_a.stdout is not None
    lines = [(await agent_a.stdout.readline()).decode().split() for _ in runs]
    agent_a.kill()
    await agent_a.wait()
    return {task_id: int(pid) for task_id, pid in lines}


def wait_for_file(tmp_path: Path, go: Path, exit_code: int) -> TaskRun:
    """A task that prints once, then exits with ``exit_code`` once ``go`` exists.

    It gives up after a minute, so a failing test leaves no process behind for long.
    """
    return python(
        tmp_path,
        "import os, sys, time\nprint('started', flush=True)\ndeadline = time.time() + 60\n"
        f"while not os.path.exists({str(go)!r}) and time.time() < deadline: time.sleep(0.01)\n"
        f"sys.exit({exit_code})",
    )


async def test_a_new_executor_adopts_the_tasks_of_a_crashed_one(tmp_path: Path) -> None:
    # Given agent A running a long task and a short one
    go = tmp_path / "go"
    long = wait_for_file(tmp_path, go, exit_code=7)
    short = task(tmp_path, "sh", "-c", "exit 5")
    state = tmp_path / "state"
    # When A is SIGKILLed (its tasks are not), and the short task ends with no agent around
    pids = await crashed_agent(state, long, short)
    await async_wait_until(lambda: (state / (short.task_id + shim.EXIT)).exists(), 10)
    assert alive(pids[long.task_id])
    # Then executor B on the same state dir adopts both
    executor_b = ProcessExecutor(state, facilities=HostFacilities())
    adopted = {a.task_id: a for a in await executor_b.adopt()}
    assert set(adopted) == {long.task_id, short.task_id}
    assert adopted[long.task_id].pid == pids[long.task_id]
    assert not adopted[long.task_id].ended and adopted[short.task_id].ended
    assert await executor_b.adopt() == []  # already watched
    assert executor_b.running() == [long.task_id]
    # And reports the short one's exit code at once, the long one's when it ends
    finished = await asyncio.wait_for(executor_b.wait(short.task_id), 5)
    assert (finished.state, finished.exit_code) == ("failed", 5)
    go.touch()
    outcome = await asyncio.wait_for(executor_b.wait(long.task_id), 10)
    assert (outcome.state, outcome.exit_code) == ("failed", 7)
    await executor_b.close()


async def test_a_reused_shim_pid_is_not_mistaken_for_the_shim(tmp_path: Path) -> None:
    # Given a running record whose shim pid now belongs to another process
    stranger = await asyncio.create_subprocess_exec("sleep", "30", start_new_session=True)
    state = tmp_path / "state"
    state.mkdir()
    shim.write_record(
        str(state / "t-1") + shim.RUN,
        {
            "task_id": "t-1",
            "shim_pid": stranger.pid,
            "shim_start": 1,  # not the stranger's start time
            "pid": stranger.pid,
            "memory_limit": "none",
            "cgroup": "",
        },
    )
    try:
        # When it is adopted
        executor = ProcessExecutor(state, facilities=HostFacilities())
        [adopted] = await executor.adopt()
        # Then the task counts as ended, with its status unknown
        assert adopted.ended
        outcome = await asyncio.wait_for(executor.wait("t-1"), 5)
        assert outcome.state == "failed" and outcome.exit_code is None
        assert "without recording" in outcome.message
        # And killing it leaves the stranger alone
        await executor.kill("t-1", grace_s=0)
        await executor.pause("t-1")
        assert stranger.returncode is None and shim.proc_stat(stranger.pid) is not None
        assert shim.proc_stat(stranger.pid)[0] != "T"  # type: ignore[index]
        await executor.close()
    finally:
        stranger.kill()
        await stranger.wait()
