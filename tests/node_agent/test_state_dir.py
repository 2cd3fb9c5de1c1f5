"""The runner's state directory (issue 14, findings 3 and 12): private to its user, and
held by one runner at a time (node_agent/state_dir.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.agent_link import MemoryConnector

from node_agent.agent import Agent
from node_agent.probes import MachineInfo
from node_agent.settings import RunnerSettings, RunnerSettingsError
from node_agent.state_dir import (
    LOCK_NAME,
    StateDirError,
    StateDirInUse,
    StateLock,
    private_directory,
)

pytestmark = pytest.mark.timeout(60)

HOLD = """
import sys
from pathlib import Path
from node_agent.state_dir import StateLock
lock = StateLock.take(Path(sys.argv[1]))
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def test_a_second_taker_is_refused_naming_the_holder(tmp_path: Path) -> None:
    held = StateLock.take(tmp_path / "state")
    try:
        with pytest.raises(StateDirInUse, match=rf"in use by another runner \(pid {os.getpid()}: "):
            StateLock.take(tmp_path / "state")
    finally:
        held.release()
    StateLock.take(tmp_path / "state").release()  # free again once released


def test_a_waiting_taker_gets_the_lock_once_its_holder_ends(tmp_path: Path) -> None:
    # Given another process holding the state dir
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "state")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline() == b"held\n"
        # When a taker waits for it while the holder ends (a crashed `up`'s runner stopping)
        got: list[StateLock] = []
        waiter = threading.Thread(
            target=lambda: got.append(StateLock.take(tmp_path / "state", wait_s=30))
        )
        waiter.start()
        holder.stdin.close()
        waiter.join(40)
        # Then it has the lock, and says so in the file
        assert got and got[0].held
        pid = int((tmp_path / "state" / LOCK_NAME).read_text().split()[0])
        assert pid == os.getpid()
        got[0].release()
    finally:
        holder.kill()
        holder.wait(10)


def test_a_state_dir_is_made_private_and_an_open_one_narrowed(tmp_path: Path) -> None:
    made = private_directory(tmp_path / "new" / "state")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    old.chmod(0o755)
    private_directory(old)
    assert stat.S_IMODE(old.stat().st_mode) == 0o700


def test_a_state_dir_that_is_a_symlink_or_anothers_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(StateDirError, match="not a directory"):
        private_directory(tmp_path / "link")
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        with pytest.raises(StateDirError, match="belongs to uid 65534"):
            StateLock.take(theirs)


async def test_two_agents_on_one_state_dir_cannot_both_run(tmp_path: Path) -> None:
    settings = RunnerSettings.from_mapping({}, data_dir=str(tmp_path), name="n1")
    machine = MachineInfo(cores=1, memory_bytes=1 << 30, numa=())

    def agent() -> Agent:
        return Agent(settings, machine=machine, connect=MemoryConnector())

    async with agent().started():
        with pytest.raises(StateDirInUse, match=r"runner state directory .*runner-n1"):
            async with agent().started():
                pass
        assert stat.S_IMODE(settings.state_dir.stat().st_mode) == 0o700
    # Once the first has stopped, a restarted agent takes the state dir
    async with agent().started() as restarted:
        assert restarted.outbox is not None


def test_pass_environment_takes_variable_names_only() -> None:
    settings = RunnerSettings.from_mapping({"runner": {"pass_environment": ["HTTP_PROXY"]}})
    assert settings.runner.pass_environment == ("HTTP_PROXY",)
    with pytest.raises(RunnerSettingsError, match=r"pass_environment\[0\]"):
        RunnerSettings.from_mapping({"runner": {"pass_environment": ["A=B"]}})
