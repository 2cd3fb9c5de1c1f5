"""A slow disk for one run: the host's data dir (the event log, the shared storage, the
runner's state dir under it) behind a FUSE passthrough that waits before every read,
write and fsync (support/slowfs.py; why not dm-delay or NFS: docs/chaos.md). Every commit
and every outbox write is slow; the heartbeats ride on the same log. After the run: every
acknowledged task ends normally, none runs twice, the log rebuilds the live state, and the
audit passes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support.chaos import (
    Ledger,
    Submitter,
    check_invariants,
    check_log_offline,
    process_logs,
)
from support.cluster import running_cluster
from support.mounts import SlowFs

DELAY_MS = 15.0


@pytest.mark.chaos_long
@pytest.mark.timeout(900)
def test_a_run_on_a_slow_disk(
    tmp_path: Path, ledger: Ledger, slow_disk: Callable[[Path, float], SlowFs]
) -> None:
    data = tmp_path / "data"
    disk = slow_disk(data, DELAY_MS)
    # The disk is slow indeed: one small write and its fsync take at least two delays.
    assert disk.measured_write_ms() >= 2 * DELAY_MS
    (tmp_path / "c").mkdir()
    with running_cluster(tmp_path / "c", agents=("n1", "n2"), data_dir=data) as cluster:
        submitter = Submitter(cluster.url, lambda: cluster.admin_token, ledger, 200, hold_s=0.2)
        submitter.start()
        stats = submitter.finish(timeout=600)

        def describe() -> str:
            return f"submitter: {stats}\n{process_logs(cluster.root)}"

        assert stats.acked, describe()
        verdict = check_invariants(cluster, stats.acked, ledger, timeout=300, describe=describe)
        cluster.stop_host()
    check_log_offline(cluster, verdict)
