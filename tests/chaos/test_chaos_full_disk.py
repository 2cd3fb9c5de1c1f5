"""A full disk, then space again: the host's data dir, and a runner's state dir, each on a
small tmpfs filled to ENOSPC while a client submits and tasks run. While it is full a
submission may be refused (a 503, never a 500); once space returns, every acknowledged
task ends without restarting anything (normally; a task dispatched to the full runner may
instead be refused, failed without running), none runs twice, the log rebuilds the live
state, and the audit passes. (The product side of finding 7, what health and submit say
while the disk is full, has its own tests; these keep the invariants.)"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from support.chaos import (
    Ledger,
    Submitter,
    check_invariants,
    check_log_offline,
    process_logs,
    settle,
)
from support.cluster import Cluster, running_cluster
from support.small_disk import Filler

TmpfsFactory = Callable[[Path, int], Filler]


def test_the_host_data_dir_then_a_runner_state_dir_fill_up_then_free(
    tmp_path: Path, ledger: Ledger, tmpfs: TmpfsFactory
) -> None:
    data = tmp_path / "data"
    host_disk = tmpfs(data, 64)
    # The runner's state dir on a disk of its own: each fills alone.
    runner_disk = tmpfs(data / "runner-n1", 8)
    (tmp_path / "c").mkdir()
    with running_cluster(tmp_path / "c", agents=("n1",), data_dir=data) as cluster:
        first = Submitter(cluster.url, lambda: cluster.admin_token, ledger, 30, hold_s=0.3)
        first.start()
        first.wait_acked(10, timeout=60)
        # When the host's disk fills up while tasks run and the client submits
        host_disk.fill()
        # ...until the runner holds events the host could not take (in its outbox)
        cluster.wait(lambda: _outbox(cluster, "n1") > 0, 30, "events held back by the runner")
        while_host_full = first.finish(timeout=120)

        # When space returns, everything acknowledged ends, without a restart
        host_disk.free()
        seen = [while_host_full]

        def describe() -> str:
            return f"submitters: {seen}\n{process_logs(cluster.root)}"

        settled = settle(cluster.http, while_host_full.acked, timeout=60, describe=describe)
        ended = {settled[t]["state"] for t in while_host_full.acked}
        assert ended <= {"completed"}, f"{ended}\n{describe()}"
        cluster.wait(lambda: _outbox(cluster, "n1") == 0, 30, "the runner's outbox to drain")

        # When the runner's disk fills up while tasks start and run
        second = Submitter(cluster.url, lambda: cluster.admin_token, ledger, 30, hold_s=0.3)
        second.start()
        second.wait_acked(5, timeout=60)
        runner_disk.fill()
        while_runner_full = second.finish(timeout=120)
        seen.append(while_runner_full)
        # ...until the runner meets it: its outbox or a task's records could not be written
        cluster.wait(lambda: _runner_felt_it(cluster, "n1"), 30, "the runner to meet a full disk")
        # Then once space returns, everything acknowledged ends without a restart: normally,
        # or refused by the runner that could not record it (failed, and never run)
        runner_disk.free()
        acked = while_host_full.acked + while_runner_full.acked
        verdict = check_invariants(
            cluster,
            acked,
            ledger,
            timeout=60,
            allowed=frozenset({"completed", "failed"}),
            describe=describe,
        )
        ran_then_failed = [
            (t, task["message"])
            for t, task in verdict.tasks.items()
            if task["state"] == "failed" and verdict.runs[t]
        ]
        assert not ran_then_failed, f"tasks that ran were reported failed: {ran_then_failed[:5]}"
        # And a submission the full host could not record was refused as unavailable (503),
        # never with a server error
        assert set(while_host_full.refused) <= {503}, while_host_full.refusals
        cluster.stop_host()
    check_log_offline(cluster, verdict)


def _runner_felt_it(cluster: Cluster, node: str) -> bool:
    """Whether the runner met its full state dir: its log says so, or a task it could not
    record was refused before it ran."""
    log = cluster.root / f"agent-{node}.log"
    if "cannot be written" in log.read_text(errors="replace"):
        return True
    tasks = cluster.http.get("/api/tasks", params={"status": "failed", "limit": 1000}).json()
    return any("no room" in t["message"] for t in tasks["tasks"])


def _outbox(cluster: Cluster, node: str) -> int:
    """Events the runner holds that the host has not acknowledged."""
    db = sqlite3.connect(cluster.data_dir / f"runner-{node}" / "outbox.sqlite")
    try:
        return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
    finally:
        db.close()
