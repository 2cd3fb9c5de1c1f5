"""A network partition of one runner: the runner lives in a network namespace joined to the
host by a veth pair (the control plane listens on the pair's host end); its link is made
lossy and slow, then cut, then healed, for less and for more than the heartbeat timeout.
A second runner, outside, keeps working all along. After it: every acknowledged task ends
normally (none lost, none killed), none runs twice, the log rebuilds the live state, and
the audit passes."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.chaos import (
    Ledger,
    Submitter,
    check_invariants,
    check_log_offline,
    hold_fault,
    process_logs,
    wait_running_on,
)
from support.cluster import running_cluster
from support.logfile import recorded_events
from support.netns import NetworkNamespace


def _partition(
    root: Path,
    ledger: Ledger,
    namespace: NetworkNamespace,
    *,
    timeout: float,
    total: int,
    pace_s: float,
    lossy_s: float,
    short_cut_s: float,
    long_cut_s: float,
) -> None:
    assert short_cut_s < timeout < long_cut_s
    with running_cluster(
        root, agents=("inside",), address=namespace.host_address, heartbeat_timeout=timeout
    ) as cluster:
        cluster.start_agent("away", wrap=namespace.wrap)
        # One client per runner, so that the partitioned one has work throughout.
        away, home = (
            Submitter(
                cluster.url,
                lambda: cluster.admin_token,
                ledger,
                total,
                hold_s=1.0,
                pace_s=pace_s,
                fields={"targets": [node]},
            )
            for node in ("away", "inside")
        )
        away.start()
        home.start()
        wait_running_on(cluster, "away")

        # When its link loses packets and lags
        namespace.degrade(loss_pct=10, delay_ms=60)
        lossy = namespace.mode
        hold_fault(lossy_s)
        # When it is cut for less than the heartbeat timeout, then healed
        namespace.cut()
        hold_fault(short_cut_s)
        namespace.heal()
        cluster.wait_node("away", online=True, timeout=timeout + 30)
        # When it is cut for longer than the timeout: the host declares the node offline
        namespace.cut()
        cluster.wait_node("away", online=False, timeout=long_cut_s + 30)
        hold_fault(max(0.0, long_cut_s - timeout))
        namespace.heal()
        # Then once healed it comes back, re-adopts its tasks, and they all end normally
        cluster.wait_node("away", online=True, timeout=60)
        stats = [away.finish(timeout=120), home.finish(timeout=120)]
        acked = stats[0].acked + stats[1].acked

        def describe() -> str:
            return f"link: {lossy}; submitters: {stats}\n{process_logs(cluster.root)}"

        verdict = check_invariants(cluster, acked, ledger, timeout=120, describe=describe)
        assert any(t["node"] == "away" for t in verdict.tasks.values()), describe()
        cluster.stop_host()
    offline = [r.stream for r in recorded_events(cluster.db_file) if r.kind == "node.offline"]
    assert "node:away" in offline, "the long cut was noticed (node.offline)"
    assert "node:inside" not in offline, "the runner outside was never disturbed"
    check_log_offline(cluster, verdict)


def test_a_partition_of_one_runner_shorter_then_longer_than_the_timeout(
    tmp_path: Path, ledger: Ledger, network_namespace: NetworkNamespace
) -> None:
    _partition(
        tmp_path,
        ledger,
        network_namespace,
        timeout=3.0,
        total=30,
        pace_s=0.25,
        lossy_s=1.0,
        short_cut_s=1.0,
        long_cut_s=4.0,
    )


@pytest.mark.chaos_long
@pytest.mark.timeout(900)
def test_long_partitions_of_one_runner_under_load(
    tmp_path: Path, ledger: Ledger, network_namespace: NetworkNamespace
) -> None:
    _partition(
        tmp_path,
        ledger,
        network_namespace,
        timeout=5.0,
        total=300,
        pace_s=0.2,
        lossy_s=15.0,
        short_cut_s=3.0,
        long_cut_s=30.0,
    )
