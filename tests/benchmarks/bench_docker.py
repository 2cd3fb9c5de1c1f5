"""Container tasks against the bare engine, in the same run (needs a Docker engine).

Prints one ``name value`` line per figure:

- ``latency_docker_task_p50_ms``: one ``true`` in ``hakuriver/busybox:base`` through the
  cluster, submit → seen completed by a client polling every millisecond (20 samples);
  ``bare_docker_run_p50_ms``: ``docker run --rm`` of the same image and command;
  ``latency_docker_ratio`` is the first over the second (goal ≤ 1.2);
- ``throughput_100_docker_tasks_s``: 100 such tasks in one batch on one agent, until all
  completed; ``bare_docker_100_parallel_s``: 100 ``docker run --rm`` with 16 at a time;
  ``throughput_docker_ratio`` (goal ≤ 1.3);
- ``env_load_s``: a packaged tarball renamed into the shared folder → the image loaded on
  a watching agent (its ``env.synced``). All agents here share one engine, so the image
  is removed first, as on a machine that never had it.

Without an engine it prints a comment saying so and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_cluster import _wait_all, report
from support.cluster import Cluster
from support.docker_images import BUSYBOX_IMAGE, build_images, engine

from projections.tasks import ENDED_STATES as FINAL

ENV = "busybox"


def bare_run() -> None:
    subprocess.run(["docker", "run", "--rm", BUSYBOX_IMAGE, "true"], check=True)


def bench_latency(cluster: Cluster, samples: int = 20) -> float:
    http = cluster.http
    timings = []
    for i in range(samples + 3):
        start = time.perf_counter()
        r = http.post("/api/tasks", json={"command": "true", "container": ENV, "cores": 0})
        task_id = r.json()["task_ids"][0]
        while True:
            task = http.get(f"/api/tasks/{task_id}").json()
            if task["state"] in FINAL:
                break
            time.sleep(0.001)
        if task["state"] != "completed":
            raise SystemExit(f"docker task ended {task['state']}: {task['message']}")
        if i >= 3:  # warm-up
            timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


def bench_bare_latency(samples: int = 20) -> float:
    timings = []
    for i in range(samples + 3):
        start = time.perf_counter()
        bare_run()
        if i >= 3:
            timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


def bench_throughput(cluster: Cluster, n: int = 100) -> float:
    task = {"command": "true", "container": ENV, "cores": 0}
    before = sum(cluster.health()["tasks"].values())
    start = time.perf_counter()
    r = cluster.http.post("/api/batches", json={"tasks": [task] * n})
    assert r.status_code == 201, r.text
    _wait_all(cluster.http, before + n)
    return time.perf_counter() - start


def bench_bare_throughput(n: int = 100, parallel: int = 16) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda _: bare_run(), range(n)))
    return time.perf_counter() - start


def bench_env_load(cluster: Cluster, client: object) -> float:
    name = f"bench{uuid.uuid4().hex[:8]}"
    http = cluster.http
    r = http.post("/api/environments/containers", json={"image": BUSYBOX_IMAGE, "name": name})
    assert r.status_code == 201, r.text
    with http.stream("POST", f"/api/environments/{name}/tar", timeout=600) as answer:
        lines = list(answer.iter_lines())
    assert '"done"' in lines[-1], lines[-1]
    folder = cluster.shared / "hakuriver-containers"
    [tar] = folder.glob(f"{name}-*.tar")
    digest = tar.with_name(tar.name + ".sha256")
    aside = cluster.root / "aside"
    aside.mkdir(exist_ok=True)
    shutil.move(digest, aside / digest.name)
    shutil.move(tar, aside / tar.name)
    images = client.images  # type: ignore[attr-defined]
    images.remove(f"hakuriver/{name}:base", force=True)
    stamp = tar.name.removesuffix(".tar").rsplit("-", 1)[1]
    shutil.move(aside / digest.name, digest)  # the host's order: digest, then tarball
    start = time.perf_counter()
    shutil.move(aside / tar.name, tar)
    deadline = start + 300
    while time.perf_counter() < deadline:
        try:
            labels = images.get(f"hakuriver/{name}:base").labels or {}
            if labels.get("hakuriver.env_timestamp") == stamp:
                elapsed = time.perf_counter() - start
                break
        except Exception:
            pass
        time.sleep(0.005)
    else:
        raise SystemExit("the watching agent did not load the tarball")
    http.delete(f"/api/environments/containers/{name}")
    images.remove(f"hakuriver/{name}:base", force=True)
    return elapsed


def main() -> None:
    argparse.ArgumentParser().parse_known_args()
    client = engine()
    if client is None or shutil.which("docker") is None:
        print("# bench_docker: no Docker engine answers; skipped", flush=True)
        return
    build_images(client)
    with tempfile.TemporaryDirectory(prefix="hakuriver-bench-docker-") as tmp:
        cluster = Cluster(Path(tmp), heartbeat_interval=1.0, heartbeat_timeout=10.0)
        try:
            cluster.start_host()
            cluster.start_agent("d1")
            bare = bench_bare_latency()
            ours = bench_latency(cluster)
            report("latency_docker_task_p50_ms", ours)
            report("bare_docker_run_p50_ms", bare)
            report("latency_docker_ratio", ours / bare)
            bare_t = bench_bare_throughput()
            ours_t = bench_throughput(cluster)
            report("throughput_100_docker_tasks_s", ours_t)
            report("bare_docker_100_parallel_s", bare_t)
            report("throughput_docker_ratio", ours_t / bare_t)
            report("env_load_s", bench_env_load(cluster, client))
        finally:
            cluster.close()


if __name__ == "__main__":
    asyncio.run(asyncio.sleep(0))
    main()
