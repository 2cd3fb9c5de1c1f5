"""A paused group, as /proc shows it, including a shell held in D by a stopped vfork child."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from support.waiting import wait_until

from node_agent.executors.procfs import group_states, group_stopped

pytestmark = pytest.mark.timeout(60)

# dash (sh on Debian) vforks for `sleep`: the parent waits in D until the child execs.
TICKS = "while :; do sleep 0.001; done"


def test_a_group_stopped_mid_vfork_counts_as_stopped() -> None:
    """Repeated until a stop lands between a vfork and its exec (the parent in D): the
    case where the old test (`the pid is T`) and the old adoption check said 'running'."""
    seen_d = False
    for _ in range(400):
        task = subprocess.Popen(["sh", "-c", TICKS], start_new_session=True)
        try:
            states, stopped = _stopped_states(task.pid)
            assert stopped, states
            seen_d = seen_d or "D" in states
        finally:
            os.killpg(task.pid, signal.SIGKILL)
            task.wait()
        if seen_d:
            break
    if not seen_d:
        pytest.skip("no stop landed inside a vfork in 400 tries (timing): D case not seen")


def _stopped_states(pgid: int) -> tuple[set[str], bool]:
    """SIGSTOP the group, wait until nothing in it runs; its states and whether it counts
    as stopped, then SIGCONT it."""
    os.killpg(pgid, signal.SIGSTOP)
    wait_until(lambda: "T" in group_states(pgid), timeout=10)
    wait_until(lambda: "R" not in group_states(pgid), timeout=10)
    states, stopped = group_states(pgid), group_stopped(pgid)
    os.killpg(pgid, signal.SIGCONT)
    wait_until(lambda: not group_stopped(pgid), timeout=10)
    return states, stopped


def test_a_running_group_is_not_stopped() -> None:
    task = subprocess.Popen(["sh", "-c", "sleep 30"], start_new_session=True)
    try:
        wait_until(lambda: group_states(task.pid) != set(), timeout=10)
        assert not group_stopped(task.pid)
        assert not group_stopped(2**22 + 12345)  # no such group
    finally:
        task.kill()
        task.wait()
