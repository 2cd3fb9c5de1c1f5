"""The shim zygote under attack (issue 14, finding 1), and the files a task leaves
(finding 12), with a real executor, a real zygote and a real unprivileged user.

Before: the zygote listened on an abstract socket any local user could reach and
``marshal.loads`` what a peer sent; ``nobody`` made root write ``uid=0(root)`` into a
file of its choosing, and a peer trickling a byte every few seconds stalled every start
for 30 s + 30 s. Now: a socket file in the 0700 state directory, the peer's uid checked,
a strict request format, and each connection served by a child of its own with a
deadline.

The state directory sits in a folder every user can enter (as ``/var/lib/hakuriver``
would be), so what keeps ``nobody`` out is the runner's doing, not pytest's private
temporary folder.
"""

from __future__ import annotations

import asyncio
import marshal
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.attacker import ZYGOTE_ATTACK, run_as_nobody
from support.waiting import async_wait_until, wait_until
from support.zygotes import stop_zygotes_under

from events.ids import new_id
from events.types import TaskSpec
from node_agent.executors import shim
from node_agent.executors.base import TaskRun
from node_agent.executors.process import ProcessExecutor
from node_agent.executors.process_plan import HostFacilities
from node_agent.executors.zygote import SHIM_PATH, Zygote
from node_agent.state_dir import StateDirError

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder every local user may enter and write (the attacker drops files here)."""
    folder = Path(tempfile.mkdtemp(prefix="hakuriver-zygote-"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        stop_zygotes_under(folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def executor(open_folder: Path) -> AsyncIterator[ProcessExecutor]:
    ex = ProcessExecutor(open_folder / "state", facilities=HostFacilities())
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


async def run_one(executor: ProcessExecutor, folder: Path, *argv: str) -> str:
    """Run a task to its end through the executor; its final state."""
    run = task(folder, *argv)
    await executor.start(run)
    outcome = await executor.wait(run.task_id)
    return outcome.state


def zygote_pid(state: Path) -> int | None:
    """The live zygote serving ``state``, if any."""
    address = Zygote(state).address
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--zygote" in argv and address.encode() in argv:
                return int(name)
    return None


def ask(address: str, data: bytes, *, half_close: bool = True) -> bytes:
    """Send ``data`` to the zygote as this (root) user; everything it answers."""
    with shim.unix_socket(address, timeout=20) as conn:
        try:
            conn.sendall(data)
            if half_close:
                conn.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read everything: its answer is still there to read
        answer = b""
        try:
            while chunk := conn.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass  # it closed with part of the request unread
        return answer


# -- another local user ------------------------------------------------------------------


async def test_another_local_user_cannot_reach_the_zygote(
    executor: ProcessExecutor, open_folder: Path
) -> None:
    # Given a runner (root here) whose zygote is up: it started one task
    assert await run_one(executor, open_folder, "true") == "completed"
    assert zygote_pid(executor.state_dir) is not None
    marker = open_folder / "owned"
    # When nobody finds it in /proc/net/unix and asks it to run `id` into a file
    target = Zygote(executor.state_dir).address
    results = await run_in_thread(ZYGOTE_ATTACK, str(marker), str(open_folder), target)
    # Then it found it, could not even connect, and nothing ran
    assert results["found"], results
    assert results["tries"], results
    for attempt, outcome in results["tries"].items():
        assert outcome == "connect: PermissionError", (attempt, results)
    assert not marker.exists()
    written = [name for name in os.listdir(open_folder) if name.startswith("x.")]
    assert not written, "the zygote wrote records where it was told"
    # And the state directory is the runner's alone
    found = executor.state_dir.stat()
    assert (found.st_uid, stat.S_IMODE(found.st_mode)) == (os.geteuid(), 0o700)


async def test_the_zygote_refuses_a_peer_of_another_uid_even_through_an_open_folder(
    executor: ProcessExecutor, open_folder: Path
) -> None:
    # Given a zygote whose folder and socket someone opened up afterwards
    assert await run_one(executor, open_folder, "true") == "completed"
    address = Zygote(executor.state_dir).address
    executor.state_dir.chmod(0o755)
    os.chmod(address, 0o777)
    marker = open_folder / "owned"
    # When nobody connects and sends a request in the right format
    results = await run_in_thread(ZYGOTE_ATTACK, str(marker), str(open_folder), address)
    # Then the zygote closed on it without a word (SO_PEERCRED), and nothing ran: the peer
    # reads nothing, or finds the connection gone while it still sends or reads
    tries = results["tries"]
    assert tries, results
    closed = ("answered: ", "answered: <ConnectionResetError>", "answered: <BrokenPipeError>")
    for attempt, outcome in tries.items():
        assert outcome in closed, (attempt, outcome)
    assert not marker.exists()
    # And it still serves its own user
    executor.state_dir.chmod(0o700)
    assert await run_one(executor, open_folder, "true") == "completed"


async def run_in_thread(script: str, *args: str) -> Any:
    return await asyncio.to_thread(run_as_nobody, script, *args)


# -- what the zygote accepts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "why"),
    [
        ((1 << 30).to_bytes(4, "big"), "announces 1073741824 bytes, over"),
        (b"\x00\x00\x00\x05hello", "not JSON"),
        (b"\x00\x00\x00\x10{}", "ended early"),
        (marshal.dumps(("/tmp", "x", {"argv": ["id"]})), "announces|ended early|not"),
    ],
    ids=["oversized", "not-json", "short", "marshal"],
)
async def test_a_malformed_or_oversized_request_is_refused_and_the_zygote_goes_on(
    executor: ProcessExecutor, open_folder: Path, request_bytes: bytes, why: str
) -> None:
    assert await run_one(executor, open_folder, "true") == "completed"
    before = sorted(p.name for p in executor.state_dir.iterdir())
    answer = ask(Zygote(executor.state_dir).address, request_bytes).decode()
    assert answer.startswith("!refused by the zygote:"), answer
    assert re.search(why, answer), answer
    assert sorted(p.name for p in executor.state_dir.iterdir()) == before
    assert await run_one(executor, open_folder, "true") == "completed"


async def test_a_slow_peer_does_not_hold_up_the_next_start(
    executor: ProcessExecutor, open_folder: Path
) -> None:
    # Given a zygote, and a peer of its own user that sends a byte every second
    assert await run_one(executor, open_folder, "true") == "completed"
    address = Zygote(executor.state_dir).address
    slow = shim.unix_socket(address)
    cut = threading.Event()
    answer: list[bytes] = []

    def trickle() -> None:
        slow.settimeout(1)
        try:
            slow.send((100).to_bytes(4, "big"))  # a request of 100 bytes, then one a second
            while not cut.is_set():
                slow.send(b"x")
                try:
                    data = slow.recv(4096)
                except TimeoutError:
                    continue
                answer.append(data)
                cut.set()
        except OSError:
            cut.set()

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        # When tasks start meanwhile, through the zygote
        client = Zygote(executor.state_dir)
        for _ in range(3):
            run = task(open_folder, "true")
            spec = executor._plan(run, str(open_folder)).to_builtins()
            got = await asyncio.wait_for(
                asyncio.to_thread(client.spawn, run.task_id, spec), timeout=4
            )
            # Then each is served at once (not after the slow peer's 30 s, as before)
            assert got is not None and got[0] > 0 and got[1].isdigit(), got
        # And the slow peer is cut off at the deadline, told why
        await async_wait_until(cut.is_set, deadline_s=shim.ZYGOTE_REQUEST_S + 5)
        assert b"did not arrive within" in b"".join(answer), answer
    finally:
        cut.set()
        slow.close()
        trickler.join(5)


# -- the zygote's own checks -------------------------------------------------------------


def test_the_zygote_will_not_serve_from_a_folder_others_can_enter(open_folder: Path) -> None:
    state = open_folder / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    done = subprocess.run(
        [sys.executable, "-I", "-S", SHIM_PATH, "--zygote", str(state / "zygote-x.sock")],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert b"must be a folder of uid" in done.stderr
    assert not (state / "zygote-x.sock").exists()


def test_a_socket_path_too_long_for_an_address_is_served_through_its_folder(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True, mode=0o700)
    deep.chmod(0o700)
    address = str(deep / "zygote-long.sock")
    assert len(address) > shim.SUN_PATH_MAX
    zygote = subprocess.Popen(
        [sys.executable, "-I", "-S", SHIM_PATH, "--zygote", address],
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: os.path.exists(address) or zygote.poll() is not None, timeout=20)
        assert zygote.poll() is None, zygote.stderr.read() if zygote.stderr else ""
        assert ask(address, b"\x00\x00\x00\x02{}").startswith(b"!refused by the zygote")
    finally:
        zygote.terminate()
        zygote.wait(10)


# -- the files a task leaves (finding 12) ------------------------------------------------


async def test_a_tasks_files_are_its_runners_alone(
    executor: ProcessExecutor, open_folder: Path
) -> None:
    run = task(open_folder, "sh", "-c", "echo out; echo err >&2")
    await executor.start(run)
    assert (await executor.wait(run.task_id)).state == "completed"
    shared = Path(run.shared_dir)
    outputs = [shared / "task_outputs" / f"{run.task_id}.out"]
    outputs.append(shared / "task_errors" / f"{run.task_id}.err")
    records = [executor.state_dir / f"{run.task_id}{suffix}" for suffix in (".run", ".exit")]
    for path in outputs + records:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert outputs[0].read_text() == "out\n"


async def test_a_symlink_planted_for_an_output_file_is_not_followed(
    executor: ProcessExecutor, open_folder: Path
) -> None:
    run = task(open_folder, "echo", "overwritten")
    victim = open_folder / "victim"
    victim.write_text("precious\n")
    outputs = Path(run.shared_dir) / "task_outputs"
    outputs.mkdir(parents=True)
    (outputs / f"{run.task_id}.out").symlink_to(victim)
    with pytest.raises(Exception, match="cannot open the output files"):
        await executor.start(run)
    assert victim.read_text() == "precious\n"


def test_a_state_directory_left_open_is_narrowed_and_anothers_refused(open_folder: Path) -> None:
    state = open_folder / "old"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    ProcessExecutor(state, facilities=HostFacilities(), use_zygote=False)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    theirs = open_folder / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(StateDirError, match="belongs to uid 65534"):
        ProcessExecutor(theirs, facilities=HostFacilities(), use_zygote=False)


async def test_a_peer_of_another_uid_costs_the_zygote_no_fork(
    executor: ProcessExecutor, open_folder: Path
) -> None:
    # Given a zygote with its spares waiting, its folder and socket opened up afterwards
    from test_zygote_spares import children, zygote_with_spares

    zygote, spares = await zygote_with_spares(executor)
    address = Zygote(executor.state_dir).address
    executor.state_dir.chmod(0o755)
    os.chmod(address, 0o777)
    # When nobody connects and sends requests (a local user in a loop would)
    results = await run_in_thread(
        ZYGOTE_ATTACK, str(open_folder / "owned"), str(open_folder), address
    )
    assert results["tries"], results
    # Then the same spares still wait: each connection was closed by the spare that took
    # it, which went on waiting; none was forked again for it
    assert children(zygote) == spares
    executor.state_dir.chmod(0o700)
    assert await run_one(executor, open_folder, "true") == "completed"
