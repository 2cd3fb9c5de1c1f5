"""Container tasks on a saturated machine, through the whole cluster (marker ``docker``).

Issue 19: under load two ``true`` containers ended ``failed``. Here every core spins in a
busy loop while a batch of ``true`` tasks runs, and the runner's engine (behind
tests/support/engine_proxy.py) also answers each container's first start with
containerd's 500 and drops its first wait, as an overloaded engine does: every task must
complete.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import Cluster
from support.docker_images import engine_or_skip
from support.engine_proxy import engine_proxy, first_times

from projections.tasks import ENDED_STATES

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

TASKS = 16


@pytest.fixture
def saturated() -> Iterator[None]:
    """A busy loop per core for the test's duration (stopped by their pids): every core is
    saturated, and the other tests running beside this one are slowed no more than that."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(len(os.sched_getaffinity(0)))
    ]
    try:
        yield
        assert all(hog.poll() is None for hog in hogs), "a busy loop ended early"
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_container_tasks_all_complete_on_a_saturated_machine(
    tmp_path: Path, saturated: None
) -> None:
    engine_or_skip()
    sockets = Path(tempfile.mkdtemp(prefix="hr-engine-"))  # a socket path is <= 107 bytes
    rules = first_times(
        {
            "start": ("error", "failed to create shim task: context deadline exceeded: unknown"),
            "wait": ("drop", ""),
        }
    )
    try:
        with engine_proxy(sockets / "engine.sock", rules) as proxy:
            cluster = Cluster(tmp_path)
            try:
                cluster.start_host()
                cluster.start_agent("d1", env={"DOCKER_HOST": proxy.url})
                task = {"command": "true", "container": "busybox", "cores": 0}
                r = cluster.http.post("/api/batches", json={"tasks": [task] * TASKS})
                assert r.status_code == 201, r.text
                ids = r.json()["task_ids"]
                assert len(ids) == TASKS

                def ended() -> bool:
                    states = cluster.http.get("/api/summary").json()["tasks"]
                    return sum(n for s, n in states.items() if s in ENDED_STATES) >= TASKS

                cluster.wait(ended, 90, "every task to end")
                tasks = [cluster.task(t) for t in ids]
                bad = [(t["state"], t["message"]) for t in tasks if t["state"] != "completed"]
                assert not bad, bad
                assert proxy.faults["error"] == TASKS and proxy.faults["drop"] == TASKS
            finally:
                cluster.close()
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
