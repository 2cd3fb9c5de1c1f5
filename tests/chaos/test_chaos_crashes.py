"""Crashes under load: ``kill -9`` of the control plane (alone, and as ``hakuriver up``)
and of a runner, with a client submitting all along. After each: every acknowledged task
ends, none runs twice, the log rebuilds the live state, and the audit passes."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest
from support.chaos import (
    Ledger,
    Submitter,
    check_invariants,
    check_log_offline,
    process_logs,
    wait_running_on,
)
from support.cluster import Cluster, running_cluster
from support.logfile import recorded_events
from support.up import UpCluster


def _host_crash(root: Path, ledger: Ledger, *, total: int, kill_after: int, hold_s: float) -> None:
    with running_cluster(root, agents=("n1",)) as cluster:
        submitter = Submitter(
            cluster.url, lambda: cluster.admin_token, ledger, total, hold_s=hold_s
        )
        submitter.start()
        submitter.wait_acked(kill_after, timeout=120)
        # When the control plane is SIGKILLed while the client submits and tasks run
        cluster.stop_host(signal.SIGKILL)
        # and started again on the same log
        cluster.start_host()
        stats = submitter.finish(timeout=300)

        def describe() -> str:
            return f"submitter: {stats}\n{process_logs(cluster.root)}"

        # Then every acknowledged task ends, once, and the log agrees with the live state
        verdict = check_invariants(cluster, stats.acked, ledger, timeout=120, describe=describe)
        cluster.stop_host()
    check_log_offline(cluster, verdict)


def test_kill_9_of_the_host_during_a_run(tmp_path: Path, ledger: Ledger) -> None:
    _host_crash(tmp_path, ledger, total=40, kill_after=15, hold_s=0.2)


@pytest.mark.chaos_long
@pytest.mark.timeout(900)
def test_kill_9_of_the_host_during_a_1000_task_run(tmp_path: Path, ledger: Ledger) -> None:
    _host_crash(tmp_path, ledger, total=1000, kill_after=400, hold_s=0.1)


def _up_crash(root: Path, ledger: Ledger, *, total: int, kill_after: int, hold_s: float) -> None:
    up = UpCluster(root)
    try:
        up.start()
        submitter = Submitter(up.url, up.token, ledger, total, hold_s=hold_s)
        submitter.start()
        submitter.wait_acked(kill_after, timeout=120)
        # When `hakuriver up` is SIGKILLed mid-run (its runner, in a session of its own, lives)
        up.kill()
        # and the user starts it again on the same data dir
        up.start()
        stats = submitter.finish(timeout=300)

        def describe() -> str:
            return f"submitter: {stats}\nrunners: {[p.pid for p in up.runners()]}\n{up.logs()}"

        # Then no task runs twice, every acknowledged one ends as it should...
        verdict = check_invariants(up, stats.acked, ledger, timeout=120, describe=describe)
        # ...and one runner serves the data dir: the old one died with `up` or was adopted
        assert len(up.runners()) == 1, describe()
        up.stop()
        assert up.runners() == [], "Ctrl-C on `up` leaves no runner of its own behind"
        check_log_offline(up, verdict)
    finally:
        up.close()


def test_kill_9_of_hakuriver_up_during_a_run(tmp_path: Path, ledger: Ledger) -> None:
    _up_crash(tmp_path, ledger, total=40, kill_after=15, hold_s=0.2)


@pytest.mark.chaos_long
@pytest.mark.timeout(900)
def test_kill_9_of_hakuriver_up_during_a_1000_task_run(tmp_path: Path, ledger: Ledger) -> None:
    _up_crash(tmp_path, ledger, total=1000, kill_after=400, hold_s=0.1)


def test_kill_9_of_a_runner_shorter_then_longer_than_the_heartbeat_timeout(
    tmp_path: Path, ledger: Ledger
) -> None:
    timeout = 3.0
    with running_cluster(tmp_path, agents=("n1",), heartbeat_timeout=timeout) as cluster:
        submitter = Submitter(cluster.url, lambda: cluster.admin_token, ledger, 60, hold_s=1.0)
        submitter.start()
        wait_running_on(cluster, "n1")
        # When the runner is SIGKILLed and back within the timeout (a blip)
        killed = time.monotonic()
        cluster.stop_agent("n1", signal.SIGKILL)
        cluster.start_agent("n1", wait=False)
        _wait_linked(cluster, "n1")
        blip = time.monotonic() - killed
        wait_running_on(cluster, "n1")
        # When it is SIGKILLed again and stays away past the timeout
        cluster.stop_agent("n1", signal.SIGKILL)
        cluster.wait_node("n1", online=False, timeout=timeout + 10)
        cluster.start_agent("n1")
        stats = submitter.finish(timeout=120)

        def describe() -> str:
            return (
                f"submitter: {stats}; first restart took {blip:.1f}s\n{process_logs(cluster.root)}"
            )

        # Then its tasks were adopted, never run again nor killed, and all ended normally
        verdict = check_invariants(cluster, stats.acked, ledger, timeout=60, describe=describe)
        cluster.stop_host()
    offline = [r.stream for r in recorded_events(cluster.db_file) if r.kind == "node.offline"]
    assert "node:n1" in offline, "the long absence was noticed (node.offline)"
    check_log_offline(cluster, verdict)


def _wait_linked(cluster: Cluster, node: str) -> None:
    """Until the node's new agent process holds a link to the host (an established TCP
    connection to its port) and the host has it online. A reconnection within the timeout
    records no event, so the socket is the sign that the new process is the one linked."""
    agent = cluster.agents[node]

    def linked() -> bool:
        if agent.poll() is not None:
            raise AssertionError(f"the agent exited:\n{cluster.logs(f'agent-{node}')}")
        connections = psutil.Process(agent.pid).net_connections(kind="tcp")
        to_host = any(
            c.raddr and c.raddr.port == cluster.port and c.status == psutil.CONN_ESTABLISHED
            for c in connections
        )
        found = cluster.node(node)
        return to_host and bool(found and found["online"])

    cluster.wait(linked, 30, f"{node}'s new agent to link to the host")
