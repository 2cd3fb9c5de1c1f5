"""A multi-node job through the whole path: a host and four runners started here.

Prints one ``name value`` line per figure:

- ``job_4_nodes_submit_to_all_running_s``: a 4-node job with a trivial run (`true`), from
  the submit request to every rank seen running (the median of 10, polling every 2 ms);
  ``job_4_nodes_submit_to_completed_s`` the same until the job's ``job.finished``;
- ``tasks_4_nodes_submit_to_all_running_s``: the floor it is compared to, measured in the
  same run: four plain tasks (one targeted at each runner, `sleep 0.2` so that they are
  seen running) submitted in one batch, until all four are seen running;
- ``job_vs_tasks_running_ratio``: the first over the floor (the price of the gang
  placement, the second commit and the ranks' control folders).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from support.cluster import Cluster

from projections.tasks import ENDED_STATES

NODES = ("n1", "n2", "n3", "n4")
SAMPLES = 10
_STARTED = frozenset({"running", "paused", *ENDED_STATES})


def report(name: str, value: float) -> None:
    """Print one figure."""
    print(f"{name} {value:.6g}", flush=True)


def _poll(check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.002)
    raise SystemExit("timed out")


def _job_sample(http: httpx.Client) -> tuple[float, float]:
    start = time.perf_counter()
    answer = http.post(
        "/api/jobs", json={"yaml": "num_nodes: 4\nresources: {image_id: NULL}\nrun: 'true'"}
    )
    if answer.status_code != 201:
        raise SystemExit(f"job refused: {answer.text}")
    job_id = answer.json()["job_id"]
    running: list[float] = []

    def all_started() -> bool:
        job = http.get(f"/api/jobs/{job_id}").json()
        if not running and all(r["started_at"] for r in job["ranks"]):
            running.append(time.perf_counter() - start)
        return job["phase"] == "ended"

    _poll(all_started)
    done = time.perf_counter() - start
    job = http.get(f"/api/jobs/{job_id}").json()
    if job["status"] != "completed":
        raise SystemExit(f"job ended {job['status']}: {job['message']}")
    return running[0], done


def _tasks_sample(http: httpx.Client) -> float:
    start = time.perf_counter()
    tasks = [
        {"command": "sleep", "args": ["0.2"], "container": "NULL", "targets": [n]} for n in NODES
    ]
    answer = http.post("/api/batches", json={"tasks": tasks})
    if answer.status_code != 201:
        raise SystemExit(f"batch refused: {answer.text}")
    ids = answer.json()["task_ids"]

    def all_started() -> bool:
        return all(http.get(f"/api/tasks/{t}").json()["state"] in _STARTED for t in ids)

    _poll(all_started)
    took = time.perf_counter() - start
    _poll(lambda: all(http.get(f"/api/tasks/{t}").json()["state"] in ENDED_STATES for t in ids))
    return took


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), heartbeat_interval=1.0, heartbeat_timeout=5.0)
        try:
            cluster.start_host()
            for index, name in enumerate(NODES, 2):
                cluster.start_agent(name, runner_address=f"127.0.0.{index}")
            http = cluster.http
            _job_sample(http)  # warm-up
            _tasks_sample(http)
            jobs = [_job_sample(http) for _ in range(SAMPLES)]
            floor = [_tasks_sample(http) for _ in range(SAMPLES)]
            running = statistics.median(j[0] for j in jobs)
            report("job_4_nodes_submit_to_all_running_s", running)
            report("job_4_nodes_submit_to_completed_s", statistics.median(j[1] for j in jobs))
            report("tasks_4_nodes_submit_to_all_running_s", statistics.median(floor))
            report("job_vs_tasks_running_ratio", running / statistics.median(floor))
        finally:
            cluster.close()


if __name__ == "__main__":
    main()
