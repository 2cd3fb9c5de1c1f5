"""The zygote's spare shims and the end of a shim's connection (issue 19: one process
task's path on the node).

The zygote keeps ``SPARE_SHIMS`` shims forked ahead, each waiting for one connection, so
a start costs the agent a request and its answer instead of an accept and a fork; one
taken (or dead) is replaced, and none outlives its zygote unused. A zygote's shim holds
its connection until the task's exit is recorded, then closes it: the executor takes
that end as the task's end, without waiting for the shim's own exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support.waiting import async_wait_until, wait_until
from support.zygotes import stop_zygotes_under

from events.ids import new_id
from events.types import TaskSpec
from node_agent.executors import shim
from node_agent.executors.base import TaskRun
from node_agent.executors.process import ProcessExecutor
from node_agent.executors.process_plan import HostFacilities

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
    for task_id in ex.running():
        await ex.kill(task_id, grace_s=0.1)
    await ex.close()


def task(folder: Path, *argv: str) -> TaskRun:
    return TaskRun(
        task_id=new_id(),
        spec=TaskSpec(command=argv[0], args=argv[1:], batch_id="b"),
        cores=1,
        shared_dir=str(folder / "shared"),
        local_temp_dir=str(folder / "local"),
    )


def children(parent: int) -> set[int]:
    """The live processes whose parent is ``parent`` (the zygote's spares and shims)."""
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:  # after the command's ")": state, then the parent's pid
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[1]) == parent:
                found.add(int(name))
    return found


def kill_new_children(parent: int, killed: set[int]) -> None:
    """SIGKILL each live child of ``parent`` not in ``killed`` (a spare as soon as it is
    forked), adding it there."""
    for pid in children(parent) - killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        killed.add(pid)


def alive(pid: int) -> bool:
    return shim.proc_stat(pid) is not None


async def zygote_with_spares(executor: ProcessExecutor) -> tuple[int, set[int]]:
    """Start the executor's zygote; its pid and its spares, once all are forked and
    settled (the start's probe connection takes a spare, which leaves and is replaced)."""
    zygote = executor._zygote
    assert zygote._start()  # type: ignore[union-attr]
    pid = zygote._process.pid  # type: ignore[union-attr]
    seen: dict[frozenset[int], float] = {}

    def settled() -> bool:
        now = frozenset(children(pid))
        since = seen.setdefault(now, time.monotonic())
        return len(now) == shim.SPARE_SHIMS and time.monotonic() - since > 0.2

    await async_wait_until(settled)
    return pid, children(pid)


async def run_one(executor: ProcessExecutor, folder: Path, *argv: str) -> tuple[int, str]:
    """Run a task to its end; (its shim's pid, its final state)."""
    run = task(folder, *argv)
    await executor.start(run)
    shim_pid = executor._tasks[run.task_id].shim_pid
    outcome = await executor.wait(run.task_id)
    return shim_pid, outcome.state


async def test_a_start_is_served_by_a_shim_forked_before_it_was_asked(
    executor: ProcessExecutor, folder: Path
) -> None:
    # Given a zygote and its spares, forked before any task was asked for
    zygote, spares = await zygote_with_spares(executor)
    # When a task starts
    shim_pid, state = await run_one(executor, folder, "true")
    # Then one of those spares became its shim, and the zygote forked another in its place
    assert state == "completed"
    assert shim_pid in spares, (shim_pid, spares)
    await async_wait_until(lambda: len(children(zygote) - {shim_pid}) == shim.SPARE_SHIMS)
    assert children(zygote) - {shim_pid} - spares


async def test_a_spare_killed_while_waiting_is_replaced(
    executor: ProcessExecutor, folder: Path
) -> None:
    zygote, spares = await zygote_with_spares(executor)
    killed = min(spares)
    os.kill(killed, signal.SIGKILL)
    # The zygote follows its spares: the dead one is replaced, not waited on
    await async_wait_until(
        lambda: killed not in children(zygote) and len(children(zygote)) == shim.SPARE_SHIMS
    )
    for _ in range(3):
        assert (await run_one(executor, folder, "true"))[1] == "completed"


async def test_spares_leave_with_their_zygote_and_the_next_start_gets_a_new_one(
    executor: ProcessExecutor, folder: Path
) -> None:
    zygote, spares = await zygote_with_spares(executor)
    os.kill(zygote, signal.SIGKILL)
    # No spare outlives its zygote unused (they would hold the old socket for nothing)
    await async_wait_until(lambda: not any(alive(pid) for pid in spares))
    shim_pid, state = await run_one(executor, folder, "true")
    assert state == "completed" and shim_pid not in spares


async def test_a_peer_that_makes_its_spare_wait_has_it_replaced_at_once(
    executor: ProcessExecutor, folder: Path
) -> None:
    zygote, _ = await zygote_with_spares(executor)
    silent = shim.unix_socket(executor._zygote.address)  # type: ignore[union-attr]
    try:
        # The spare that took the silent peer waits for its request; a new one is forked
        # now, not once the peer's time is up (ZYGOTE_REQUEST_S)
        await async_wait_until(lambda: len(children(zygote)) == shim.SPARE_SHIMS + 1)
        started = asyncio.get_running_loop().time()
        for _ in range(3):
            assert (await run_one(executor, folder, "true"))[1] == "completed"
        assert asyncio.get_running_loop().time() - started < shim.ZYGOTE_REQUEST_S
    finally:
        silent.close()


class FakeZygote:
    """A "zygote" in this process that starts nothing: it answers a request as a shim
    would (a sleeping child in a session of its own standing for the shim and the task:
    never this process, which a kill of the task would signal), writes the records it is
    told to, and keeps or closes the connection when told."""

    def __init__(self, address: str, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.listener = shim.unix_socket(address, backlog=8)
        self.conn: socket.socket | None = None
        self.task_id = ""
        self.child = subprocess.Popen(["sleep", "60"], start_new_session=True)
        self.answered = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(10)
        header = conn.recv(shim.HEADER_BYTES, socket.MSG_WAITALL)
        body = conn.recv(int.from_bytes(header, "big"), socket.MSG_WAITALL)
        self.task_id, _ = shim.decode_request(header + body)
        me = self.child.pid
        start = shim.proc_stat(me)
        assert start is not None
        shim.write_record(
            str(self.state_dir / self.task_id) + shim.RUN,
            {"task_id": self.task_id, "shim_pid": me, "shim_start": start[1], "pid": me},
        )
        conn.sendall(f"{me}\n{me}\n".encode())
        self.conn = conn
        self.answered.set()

    def end(self, returncode: int | None) -> None:
        """Record the exit (unless None: a shim that died first), then close."""
        if returncode is not None:
            shim.write_record(
                str(self.state_dir / self.task_id) + shim.EXIT,
                {"returncode": returncode, "oom_kills": 0},
            )
        assert self.conn is not None
        self.conn.close()

    def close(self) -> None:
        self.listener.close()
        if self.conn is not None:
            self.conn.close()
        self.child.kill()
        self.child.wait()


@pytest.mark.parametrize(
    ("returncode", "state"), [(0, "completed"), (3, "failed"), (None, "failed")]
)
async def test_the_end_of_the_shims_connection_is_the_end_of_the_task(
    executor: ProcessExecutor, folder: Path, returncode: int | None, state: str
) -> None:
    # Given a shim that answered and still runs (a sleeping child stands for it, so its
    # exit, which the executor waited for before, does not come)
    fake = FakeZygote(executor._zygote.address, executor.state_dir)  # type: ignore[union-attr]
    try:
        run = task(folder, "true")
        await executor.start(run)
        assert fake.answered.wait(10)
        waiting = asyncio.ensure_future(executor.wait(run.task_id))
        await asyncio.sleep(0)
        assert not waiting.done()
        # When it records the exit and closes its connection (or closes it without a
        # record, as a shim killed with SIGKILL does)
        fake.end(returncode)
        # Then the outcome follows from the records, though the "shim" lives on
        outcome = await asyncio.wait_for(waiting, timeout=10)
        assert outcome.state == state, outcome
        if returncode is None:
            assert "without recording how" in (outcome.message or "")
        else:
            assert outcome.exit_code == returncode
    finally:
        fake.close()


async def test_a_shim_killed_while_its_task_runs_ends_the_wait(
    executor: ProcessExecutor, folder: Path
) -> None:
    run = task(folder, "sleep", "30")
    await executor.start(run)
    watched = executor._tasks[run.task_id]
    assert watched.conn is not None  # followed through its connection, not its pid
    os.kill(watched.shim_pid, signal.SIGKILL)
    outcome = await asyncio.wait_for(executor.wait(run.task_id), timeout=10)
    assert outcome.state == "failed" and "without recording how" in (outcome.message or "")
    os.killpg(watched.pid, signal.SIGKILL)  # the task itself, left behind by its shim


async def test_spares_that_keep_dying_at_once_leave_the_zygote_forking_per_request(
    executor: ProcessExecutor, folder: Path
) -> None:
    # Given spares that die as soon as they are forked (something in the way of their
    # start): here, killed as soon as seen
    zygote, _ = await zygote_with_spares(executor)
    killed: set[int] = set()

    def kill_new_spares() -> bool:
        for pid in children(zygote) - killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue  # gone on its own since the scan (a spare that served a probe)
            killed.add(pid)
        return len(killed) >= shim.SPARE_EARLY_DEATHS

    await async_wait_until(kill_new_spares, 30)
    # Then the zygote stops forking them (no loop of forks) and serves each request with
    # a child forked for it, as without spares (on a loaded machine a spare seen late
    # counts as a late death and the run of early ones starts again: killed until it ends)
    await async_wait_until(lambda: (kill_new_spares(), not children(zygote))[1], 30)
    await asyncio.sleep(0.2)
    assert not children(zygote)
    shim_pid, state = await run_one(executor, folder, "true")
    assert state == "completed" and shim_pid not in killed
    assert alive(zygote)


def zygote_process(
    tmp_path: Path, idle_s: float, setup: str = ""
) -> tuple[subprocess.Popen[bytes], str]:
    """A zygote serving in a process of its own (``shim.serve``, as the executor starts it),
    idle after ``idle_s``; ``setup``: Python run on the shim module first. It and its
    address."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    address = str(state / "zygote.sock")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import shim;"
        f" {setup or 'pass'}; sys.exit(shim.serve(sys.argv[2], idle_s={idle_s}))"
    )
    zygote = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", code, str(Path(shim.__file__).parent), address]
    )
    return zygote, address


def test_an_idle_zygote_leaves_and_its_spares_with_it(tmp_path: Path) -> None:
    zygote, address = zygote_process(tmp_path, 1.0)
    try:
        wait_until(lambda: len(children(zygote.pid)) == shim.SPARE_SHIMS, 20)
        spares = children(zygote.pid)
        # After a second without a request it exits, removing its socket, and no spare
        # stays behind holding it
        assert zygote.wait(20) == 0
        wait_until(lambda: not any(alive(pid) for pid in spares), 10)
        assert not os.path.exists(address)
    finally:
        if zygote.poll() is None:
            zygote.kill()
            zygote.wait()


async def test_a_task_adopted_with_its_exit_recorded_is_not_waited_on_while_its_shim_leaves(
    folder: Path,
) -> None:
    # Given the records of a task whose exit is recorded, and whose shim has not exited
    # yet (it closed its connection, the end was reported, then the agent restarted):
    # a sleeping child stands for the shim, and does not exit meanwhile
    executor = ProcessExecutor(folder / "state", facilities=HostFacilities())
    stand_in = await asyncio.create_subprocess_exec("sleep", "60", start_new_session=True)
    try:
        me = stand_in.pid
        start = shim.proc_stat(me)
        assert start is not None
        base = str(executor.state_dir / "t-left") + "."
        shim.write_record(
            base + "run", {"task_id": "t-left", "shim_pid": me, "shim_start": start[1], "pid": me}
        )
        shim.write_record(base + "exit", {"returncode": 0, "oom_kills": 0})
        # When a new executor adopts it
        [adopted] = await executor.adopt()
        assert adopted.ended
        # Then its outcome is the record's at once, and its records can be forgotten
        outcome = await asyncio.wait_for(executor.wait("t-left"), timeout=5)
        assert outcome.state == "completed"
        await executor.forget("t-left")
        assert not list(executor.state_dir.glob("t-left.*"))
    finally:
        await executor.close()
        stand_in.kill()
        await stand_in.wait()


def test_a_zygote_whose_spares_keep_dying_still_leaves_when_idle(tmp_path: Path) -> None:
    # Given a zygote (idle after 3 s) whose spares die as soon as they are forked, so it
    # keeps going back and forth between forking per request and trying spares again
    # (every 0.3 s here, every minute by default)
    zygote, address = zygote_process(tmp_path, 3.0, "shim.SPARES_AGAIN_S = 0.3")
    started = time.monotonic()
    try:
        killed: set[int] = set()

        def kill_spares_until_it_leaves() -> bool:
            kill_new_children(zygote.pid, killed)
            return zygote.poll() is not None

        # Then it still leaves, a few seconds after its start (no request ever came):
        # the idle clock is one across both ways of serving
        wait_until(kill_spares_until_it_leaves, 30)
        assert zygote.returncode == 0
        assert time.monotonic() - started < 20
        assert len(killed) >= shim.SPARE_EARLY_DEATHS  # it did go through failing spares
        assert not os.path.exists(address)
    finally:
        if zygote.poll() is None:
            zygote.kill()
            zygote.wait()


def test_a_zygote_that_gave_its_spares_up_keeps_them_again_after_a_while(
    tmp_path: Path,
) -> None:
    # Given a zygote whose spares die as soon as they are forked, until it gives them up
    # and forks per request (for SPARES_AGAIN_S: 1.5 s here, a minute by default)
    zygote, address = zygote_process(tmp_path, 60.0, "shim.SPARES_AGAIN_S = 1.5")
    try:
        killed: set[int] = set()

        def kill_spares_until_given_up() -> bool:
            kill_new_children(zygote.pid, killed)
            return len(killed) >= shim.SPARE_EARLY_DEATHS

        wait_until(kill_spares_until_given_up, 30)

        # Then (the passing trouble gone: nothing kills them now) it keeps spares again,
        # settled: the retry of spares, not a zygote that forks per request for good
        def settled_spares() -> bool:
            spares = children(zygote.pid) - killed
            return len(spares) == shim.SPARE_SHIMS and all(alive(pid) for pid in spares)

        wait_until(settled_spares, 30)
        assert zygote.poll() is None
    finally:
        zygote.kill()
        zygote.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
