"""Benchmarks of the whole path: a control plane and agents started here, real processes.

Prints one ``name value`` line per figure:

- ``latency_process_task_p50_ms``: one trivial task (``true``), submit → seen completed by
  the client polling every millisecond, 50 samples (also p90 and the server-side figure,
  submitted_at → finished_at as recorded in the log);
- ``throughput_200_process_tasks_s``: 200 trivial tasks in one batch, one agent, until all
  are completed (tasks ask for no cores so the node's core count does not serialise them;
  ``..._1core_s`` is the same with the default one core each);
- ``throughput_1000_tasks_4_agents_s``: 1000 trivial tasks over four agents;
- ``agent_link_events_per_s``: events put in an agent's outbox, streamed over the link and
  durably acknowledged by the host;
- ``host_cpu_percent_20_agents``: control-plane CPU while 20 agents heartbeat at 1 Hz with
  1000 ``sleep`` tasks running in total (``--full`` only: it needs 20 agent processes).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import psutil
from support.cluster import Cluster

from projections.tasks import ENDED_STATES as FINAL


def report(name: str, value: float) -> None:
    """Print one figure."""
    print(f"{name} {value:.6g}", flush=True)


def _wait_all(http: httpx.Client, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = http.get("/api/summary").json()["tasks"]
        done = sum(n for state, n in tasks.items() if state in FINAL)
        if done >= count:
            bad = {s: n for s, n in tasks.items() if s in FINAL and s != "completed"}
            if bad:
                raise SystemExit(f"tasks did not complete: {bad}")
            return
        time.sleep(0.002)
    raise SystemExit(f"timed out waiting for {count} tasks")


def bench_latency(root: Path) -> None:
    cluster = Cluster(root, heartbeat_interval=1.0, heartbeat_timeout=5.0)
    try:
        cluster.start_host()
        cluster.start_agent("n1")
        http = cluster.http
        client_ms, server_ms = [], []
        for i in range(55):
            start = time.perf_counter()
            r = http.post("/api/tasks", json={"command": "true", "container": "NULL"})
            task_id = r.json()["task_ids"][0]
            while True:
                task = http.get(f"/api/tasks/{task_id}").json()
                if task["state"] in FINAL:
                    break
                time.sleep(0.001)
            elapsed = (time.perf_counter() - start) * 1000
            if task["state"] != "completed":
                raise SystemExit(f"latency task ended {task['state']}: {task['message']}")
            if i >= 5:  # warm-up
                client_ms.append(elapsed)
                server_ms.append(_span_ms(task["submitted_at"], task["finished_at"]))
        report("latency_process_task_p50_ms", statistics.median(client_ms))
        report("latency_process_task_p90_ms", statistics.quantiles(client_ms, n=10)[-1])
        report("latency_process_task_server_p50_ms", statistics.median(server_ms))
    finally:
        cluster.close()


def _span_ms(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds() * 1000


def bench_throughput(root: Path, name: str, n: int, agents: int, cores: int) -> None:
    cluster = Cluster(root, heartbeat_interval=1.0, heartbeat_timeout=10.0)
    try:
        cluster.start_host()
        for i in range(agents):
            cluster.start_agent(f"n{i + 1}")
        task = {"command": "true", "container": "NULL", "cores": cores}
        start = time.perf_counter()
        r = cluster.http.post("/api/batches", json={"tasks": [task] * n})
        assert r.status_code == 201, r.text
        _wait_all(cluster.http, n)
        report(name, time.perf_counter() - start)
    finally:
        cluster.close()


def bench_agent_link(root: Path, n: int = 200_000) -> None:
    """Fill a stopped agent's outbox, then time its drain into the host's log."""
    from events.envelope import new_event
    from events.types import TaskFinished
    from node_agent.outbox import Outbox

    cluster = Cluster(root, heartbeat_interval=1.0, heartbeat_timeout=30.0)
    try:
        cluster.start_host()
        outbox = Outbox(root / "runner-n1" / "outbox.sqlite")
        # Realistic agent reports for tasks the host does not know: recorded (and
        # flagged by the fold) like any fact; what is measured is the link and the log.
        chunk = 10_000
        for i in range(0, n, chunk):
            outbox.put(
                [
                    new_event(
                        TaskFinished(
                            task_id=f"bench-{j}", state="completed", exit_code=0, node="n1"
                        ),
                        source="n1",
                    )
                    for j in range(i, i + chunk)
                ]
            )
        outbox.close()
        before = cluster.health()["last_seq"]
        start = time.perf_counter()
        cluster.start_agent("n1", wait=False)
        deadline = time.monotonic() + 300
        while cluster.health()["last_seq"] - before < n:
            if time.monotonic() > deadline:
                raise SystemExit("agent link drain timed out")
            time.sleep(0.01)
        report("agent_link_events_per_s", n / (time.perf_counter() - start))
    finally:
        cluster.close()


def bench_host_cpu(root: Path, agents: int = 20, tasks: int = 1000, seconds: float = 10) -> None:
    cluster = Cluster(root, heartbeat_interval=1.0, heartbeat_timeout=10.0)
    try:
        cluster.start_host()
        for i in range(agents):
            cluster.start_agent(f"n{i + 1}", wait=False)
        cluster.wait(lambda: cluster.health()["nodes_online"] == agents, 120, "agents online")
        task = {"command": "sleep", "args": ["600"], "container": "NULL", "cores": 0}
        cluster.http.post("/api/batches", json={"tasks": [task] * tasks})
        cluster.wait(
            lambda: cluster.health()["tasks"].get("running", 0) == tasks, 300, "tasks running"
        )
        assert cluster.host is not None
        host = psutil.Process(cluster.host.pid)
        host.cpu_percent()
        time.sleep(seconds)
        report("host_cpu_percent_20_agents", host.cpu_percent())
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hakuriver-bench-") as tmp:
        root = Path(tmp)

        def fresh(name: str) -> Path:
            path = root / name
            path.mkdir()
            return path

        bench_latency(fresh("latency"))
        bench_throughput(fresh("t200"), "throughput_200_process_tasks_s", 200, 1, 0)
        bench_throughput(fresh("t200c"), "throughput_200_process_tasks_1core_s", 200, 1, 1)
        bench_throughput(fresh("t1000"), "throughput_1000_tasks_4_agents_s", 1000, 4, 0)
        bench_agent_link(fresh("link"))
        if args.full:
            bench_host_cpu(fresh("cpu"))


if __name__ == "__main__":
    asyncio.run(asyncio.sleep(0))  # the default loop policy, as the agents use
    main()
