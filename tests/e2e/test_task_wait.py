"""``GET /api/tasks/<id>?wait=N``: a client waits for a task's end without polling
(issue 19), against a real host and agent."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import pytest
from support.cluster import Cluster, module_cluster_fixture

module_cluster, cluster = module_cluster_fixture()


def gated(gate: Path) -> list[str]:
    return ["-c", f"while [ ! -e '{gate}' ]; do sleep 0.02; done; exit 7"]


def test_a_wait_is_answered_at_the_tasks_end(cluster: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    (task_id,) = cluster.submit("sh", *gated(gate))
    cluster.wait(lambda: cluster.task(task_id)["state"] == "running", 20, "the task running")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # Given a client waiting on a running task
        waiting = pool.submit(cluster.http.get, f"/api/tasks/{task_id}", params={"wait": 30})
        # (it is still waiting while the task runs)
        with pytest.raises(concurrent.futures.TimeoutError):
            waiting.result(timeout=0.5)
        # When the task ends
        gate.touch()
        # Then the answer comes, with the task's end
        answer = waiting.result(timeout=20)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["state"], answer.json()["exit_code"]) == ("failed", 7)


def test_a_wait_that_runs_out_answers_the_task_as_it_is(cluster: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    (task_id,) = cluster.submit("sh", *gated(gate))
    cluster.wait(lambda: cluster.task(task_id)["state"] == "running", 20, "the task running")
    began = time.monotonic()
    answer = cluster.http.get(f"/api/tasks/{task_id}", params={"wait": 1})
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "running"
    assert time.monotonic() - began >= 0.9  # it waited the second it was given
    gate.touch()
    cluster.wait(lambda: cluster.task(task_id)["state"] == "failed", 20, "the task's end")
    # An ended task is answered at once, whatever the wait
    began = time.monotonic()
    assert cluster.http.get(f"/api/tasks/{task_id}", params={"wait": 60}).json()["state"] == (
        "failed"
    )
    assert time.monotonic() - began < 30


@pytest.mark.parametrize("value", ["61", "-1", "soon", "1.5"])
def test_a_wait_that_cannot_be_is_refused_naming_it(cluster: Cluster, value: str) -> None:
    (task_id,) = cluster.submit("true")
    answer = cluster.http.get(f"/api/tasks/{task_id}", params={"wait": value})
    assert answer.status_code == 400, answer.text
    assert "wait" in answer.text
