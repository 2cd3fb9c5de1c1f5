"""How a zygote's shim answers the agent (issue 19: one task's latency).

A forked shim answers its pid and how the start went in ONE write, once the start is
recorded: each write wakes the agent, and on a busy machine the woken agent preempted
the shim in the middle of starting the task. Since nothing comes before that write, a
shim that closes the connection without a word may have started the task: the start
fails with the shim's log, and the zygote is not asked a second time (which would run
the task twice).
"""

from __future__ import annotations

import os
import select
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support.zygotes import stop_zygotes_under

from events.ids import new_id
from events.types import TaskSpec
from node_agent.executors import shim
from node_agent.executors.base import StartFailed, TaskRun
from node_agent.executors.process import ProcessExecutor
from node_agent.executors.process_plan import HostFacilities, task_paths

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    try:
        yield tmp_path
    finally:
        stop_zygotes_under(tmp_path)


@pytest.fixture
async def executor(folder: Path) -> AsyncIterator[ProcessExecutor]:
    ex = ProcessExecutor(folder / "state", facilities=HostFacilities())
    yield ex
    await ex.close()


def task(folder: Path, *argv: str) -> TaskRun:
    return TaskRun(
        task_id=new_id(),
        spec=TaskSpec(command=argv[0], args=argv[1:], batch_id="b"),
        cores=1,
        shared_dir=str(folder / "shared"),
        local_temp_dir=str(folder / "local"),
    )


def connect(address: str) -> socket.socket:
    conn: socket.socket = shim.unix_socket(address)
    return conn


async def test_a_zygote_shim_answers_its_pid_and_the_start_in_one_write(
    executor: ProcessExecutor, folder: Path
) -> None:
    zygote = executor._zygote
    assert zygote._start()  # type: ignore[union-attr]
    run = task(folder, "true")
    paths = task_paths(run.shared_dir, run.task_id)
    for directory in (paths.cwd, os.path.dirname(paths.stdout), os.path.dirname(paths.stderr)):
        os.makedirs(directory, exist_ok=True)
    spec = executor._plan(run, paths.cwd).to_builtins()
    with connect(zygote.address) as conn:  # type: ignore[union-attr]
        conn.sendall(shim.encode_request(run.task_id, spec))
        # The first bytes to arrive: read as soon as there are any
        ready, _, _ = select.select([conn], [], [], 20)
        assert ready
        first = conn.recv(4096).decode()
    # They are the whole answer: the shim's pid, then the task's (the start is recorded)
    lines = first.split("\n")
    assert len(lines) == 3 and lines[2] == "", first
    shim_pid, task_pid = lines[0], lines[1]
    assert shim_pid.isdigit() and task_pid.isdigit(), first
    record = shim.read_record(str(executor.state_dir / run.task_id) + shim.RUN)
    assert record["shim_pid"] == shim_pid and record["pid"] == task_pid


async def test_a_shim_that_closes_without_a_word_fails_the_start_once(
    executor: ProcessExecutor, folder: Path
) -> None:
    # Given a "zygote" that reads a whole request, then closes (a shim that died, or was
    # killed, before its answer: it may have started the task)
    address = executor._zygote.address  # type: ignore[union-attr]
    listener = shim.unix_socket(address, backlog=8)
    listener.settimeout(0.2)
    asked: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                header = conn.recv(shim.HEADER_BYTES, socket.MSG_WAITALL)
                size = int.from_bytes(header, "big")
                asked.append(conn.recv(size, socket.MSG_WAITALL))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        # When a task is started through it
        run = task(folder, "true")
        with pytest.raises(StartFailed) as failed:
            await executor.start(run)
    finally:
        stop.set()
        server.join(5)
        listener.close()
    # Then the start fails, naming the shim, and nobody was asked to start it again
    assert "the task's shim failed" in str(failed.value)
    assert len(asked) == 1 and run.task_id.encode() in asked[0]
    assert run.task_id not in executor.running()
