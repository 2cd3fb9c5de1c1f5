"""What a runner exposes, on a real cluster (issue 14, findings 1 and 12): a slow peer of
the zygote must not hold up `task submit --wait`, and a task sees neither the runner's
environment nor another's output.

Before: a peer sending a byte every 5 s to the zygote stalled `task submit --wait -- true`
for 61 s; an `env` task printed every variable of the runner's; output files were 0644.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.cluster import REPO, running_cluster

from node_agent.executors import shim
from node_agent.executors.zygote import Zygote

pytestmark = pytest.mark.timeout(180)

RUNNER_SECRET = "HAKURIVER_TEST_RUNNER_SECRET"


def _cli(env: dict[str, str], *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.hakuriver", *argv],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Trickler(threading.Thread):
    """A peer of the zygote's own user that never finishes a request: it announces one,
    sends a byte a second, and connects again whenever it is cut off."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.stop = threading.Event()
        self.connected = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                where, folder = shim.unix_address(self.address)
                try:
                    conn.connect(where)
                except OSError:
                    return
                finally:
                    if folder is not None:
                        os.close(folder)
                self.connected.set()
                conn.settimeout(1)
                try:
                    conn.sendall((1000).to_bytes(4, "big"))
                    while not self.stop.is_set():
                        conn.sendall(b"x")
                        try:
                            if conn.recv(4096) is not None:
                                break  # answered (refused) or closed: connect again
                        except TimeoutError:
                            continue
                except OSError:
                    pass


def test_a_slow_zygote_peer_does_not_delay_task_submit_wait(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        env = cluster.env()
        # Given a runner whose zygote is up (it started a task)
        first = _cli(env, "task", "submit", "--wait", "--", "true", timeout=60)
        assert first.returncode == 0, first.stderr
        address = Zygote(tmp_path / "runner-n1" / "process").address
        assert os.path.exists(address)
        # And a peer that keeps it busy with requests that never finish
        trickler = Trickler(address)
        trickler.start()
        assert trickler.connected.wait(10), "the slow peer never reached the zygote"
        try:
            # When a task is submitted and waited for, it ends well within the bound
            # (before: 61 s, the zygote's 30 s twice)
            done = _cli(env, "task", "submit", "--wait", "--", "true", timeout=20)
            assert done.returncode == 0, done.stderr
        finally:
            trickler.stop.set()
            trickler.join(10)


def test_a_task_gets_a_clean_environment_and_private_output(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=()) as cluster:
        # Given a runner with a secret of its own in its environment
        cluster.start_agent("n1", env={RUNNER_SECRET: "the-runners-own"})
        # When a task prints its environment
        [task_id] = cluster.submit("env", env={"MINE": "1"})
        assert cluster.wait_state(task_id)["state"] == "completed"
        printed = cluster.output(task_id).decode()
        variables = dict(line.split("=", 1) for line in printed.splitlines() if "=" in line)
        # Then it sees its own and HakuRiver's variables, and none of the runner's
        assert RUNNER_SECRET not in variables, printed
        assert "HAKURIVER_CONFIG" not in variables and "PYTHONPATH" not in variables
        assert variables["MINE"] == "1" and variables["HAKURIVER_TASK_ID"] == task_id
        assert "PATH" in variables
        # And its output and the runner's state are not for other local users
        for path in (
            cluster.shared / "task_outputs" / f"{task_id}.out",
            cluster.shared / "task_errors" / f"{task_id}.err",
        ):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        for folder in (tmp_path / "runner-n1", tmp_path / "runner-n1" / "process"):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
