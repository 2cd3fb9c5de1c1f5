"""A host that has archived its ended tasks (control_plane/state_files.py) answers about
them as before, and after a kill -9 and a restart from the archived snapshot still does:
lists, filters, single tasks, task numbers, the history's state and the metrics."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from support.cluster import running_cluster

# A snapshot every few events: every finished task is archived within the test.
EXTRA = "[database]\nsnapshot_every_events = 5\n"


def _views(cluster: Any, ids: list[str]) -> dict[str, Any]:
    http = cluster.http
    numbers = [cluster.task(t)["number"] for t in ids]
    metrics = [
        line
        for line in http.get("/api/metrics").text.splitlines()
        if line.startswith("hakuriver_tasks{")
    ]
    return {
        "all": http.get("/api/tasks").json()["tasks"],
        "completed": http.get("/api/tasks", params={"state": "completed"}).json()["tasks"],
        "failed": http.get("/api/tasks", params={"state": "failed"}).json()["tasks"],
        "oldest_first": http.get("/api/tasks", params={"order": "asc"}).json()["tasks"],
        "each": [cluster.task(t) for t in ids],
        "by_number": [cluster.task(str(n)) for n in numbers],
        "state_all": http.get("/api/state", params={"tasks": "all"}).json()["tasks"],
        "metrics": metrics,
    }


def test_archived_tasks_read_the_same_before_and_after_a_restart(tmp_path: Path) -> None:
    with running_cluster(tmp_path, extra=EXTRA) as cluster:
        # A task still running, submitted before the ones that end: live and archived
        # tasks interleave in submission order
        gate = tmp_path / "gate"
        (running,) = cluster.submit("sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.1; done")
        cluster.wait_state(running, "running")
        ended = [t for i in range(6) for t in cluster.submit("sh", "-c", f"exit {i % 2}")]
        for t in ended:
            cluster.wait_state(t, "completed", "failed")
        ids = [running, *ended]
        segments = tmp_path / "hakuriver.duckdb.snapshots"
        cluster.wait(lambda: any(segments.glob("archive-*.snap")), 20, "an archive segment")
        before = _views(cluster, ids)
        assert [t["task_id"] for t in before["all"]] == ids[::-1]  # newest first
        assert [t["task_id"] for t in before["state_all"]] == ids  # submission order
        # When the host is killed and restarts from the snapshot naming the segments
        cluster.stop_host(signal.SIGKILL)
        cluster.start_host()
        after = _views(cluster, ids)
        rebuilt = cluster.logs("host").split("state rebuilt")[-1].split(")")[0]
        assert "(snapshot 0," not in rebuilt, rebuilt  # restored from the snapshot
    # Then every reader sees the archived tasks as before
    for key in before:
        assert after[key] == before[key], key
