"""A full state directory does not turn a task that ran into one that failed (issue 14).

The shim records a task in the runner's state directory twice: when it starts it
(``.run``) and when it ends (``.exit``). Found by the chaos suite: with that directory
full, tasks that ran and exited 0 were reported ``failed`` ("the task's shim failed: no
diagnostics"). Now the shim claims the blocks of both records before it starts the task,
refuses to start one it could not record, and retries an exit record until there is room.
Real processes on a real (small) tmpfs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.small_disk import Filler, small_disk
from support.waiting import async_wait_until
from support.zygotes import stop_zygotes_under

from events.ids import new_id
from events.types import TaskSpec
from node_agent.executors import shim
from node_agent.executors.base import StartFailed, TaskRun
from node_agent.executors.process import ProcessExecutor
from node_agent.executors.process_plan import HostFacilities

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[ProcessExecutor, Filler, Path]]:
    with small_disk(tmp_path / "disk", 4) as disk:
        executor = ProcessExecutor(disk / "state", facilities=HostFacilities())
        try:
            yield executor, Filler(disk), tmp_path
        finally:
            for task_id in executor.running():
                await executor.kill(task_id, grace_s=0.1)
            await executor.close()
            stop_zygotes_under(disk)


def task(folder: Path, script: str) -> TaskRun:
    return TaskRun(
        task_id=new_id(),
        spec=TaskSpec(command="sh", args=("-c", script), batch_id="b"),
        cores=1,
        shared_dir=str(folder / "shared"),
        local_temp_dir=str(folder / "local"),
    )


async def wait_for(path: Path, deadline_s: float = 10.0) -> None:
    await async_wait_until(path.exists, deadline_s)


async def test_a_task_ending_while_the_state_dir_is_full_completes_once_there_is_room(
    setup: tuple[ProcessExecutor, Filler, Path],
) -> None:
    executor, filler, folder = setup
    gate, ran = folder / "gate", folder / "ran"
    # Given a running task (its shim made its records' room before it started it)
    run = task(folder, f"echo once >> {ran}; while [ ! -e {gate} ]; do sleep 0.02; done")
    started = await executor.start(run)
    assert started.pid is not None
    await wait_for(ran)
    # When the state dir fills up and the task then exits 0
    filler.fill()
    gate.touch()
    await async_wait_until(lambda: shim.proc_stat(started.pid) is None, 10)
    # Then it ends completed, recorded in the room reserved for it, or (the room taken)
    # stays running until there is room again: never failed
    outcome = asyncio.ensure_future(executor.wait(run.task_id))
    try:
        ended = await asyncio.wait_for(asyncio.shield(outcome), 5)
    except TimeoutError:
        filler.free()
        ended = await asyncio.wait_for(outcome, 20)
    finally:
        filler.free()
    assert (ended.state, ended.exit_code) == ("completed", 0), ended
    assert ran.read_text() == "once\n"


async def test_a_task_is_not_started_when_its_records_have_no_room(
    setup: tuple[ProcessExecutor, Filler, Path],
) -> None:
    executor, filler, folder = setup
    # Given a state dir the runner can use (one task ran), then filled up
    first = task(folder, "true")
    await executor.start(first)
    assert (await executor.wait(first.task_id)).state == "completed"
    filler.fill()
    # When a task is started, it is refused saying why, and its command never ran
    ran = folder / "ran-anyway"
    with pytest.raises(StartFailed, match=r"no room|No space"):
        await executor.start(task(folder, f"touch {ran}"))
    assert not ran.exists()
    # And once there is room again, tasks start and complete
    filler.free()
    again = task(folder, "true")
    await executor.start(again)
    assert (await executor.wait(again.task_id)).state == "completed"
