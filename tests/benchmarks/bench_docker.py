"""Container tasks against the bare engine, in the same run (needs a Docker engine).

Prints one ``name value`` line per figure, and the ratios they allow (ratios.py):

- ``latency_docker_task_p50_ms``: one ``true`` in ``hakuriver/busybox:base`` through the
  cluster, submit → seen completed by a client polling every millisecond (20 samples);
  ``bare_docker_run_p50_ms``: ``docker run --rm`` of the same image and command, each
  sample taken right after one of ours (interleaved: the machine's load moves both);
  ``latency_docker_ratio`` is the first over the second (goal <= 1.15);
- ``throughput_100_docker_tasks_s``: 100 such tasks in one batch on one agent, until all
  completed; ``bare_docker_100_parallel_s``: 100 ``docker run --rm`` with 16 at a time,
  the executor's own bound on engine calls in flight (``ENGINE_CALLS``): the same
  parallelism on both sides. Two rounds, alternating, each side's best kept;
  ``throughput_docker_ratio`` (goal <= 1.2). The bare floor pays a CLI process per
  container (``docker run`` is a Go binary: create, attach, start, wait, remove in five
  API calls), the executor none: it talks to the engine's API from one process;
- the pool prototype (issue 19, docs/decisions.md): ``docker_create_start_p50_ms`` (a
  fresh container through the API: create, start, wait, remove), ``docker_start_precreated
  _p50_ms`` (start and wait only: created beforehand) and ``docker_exec_waiting_p50_ms``
  (``exec`` of ``true`` into a running container that waits);
- ``env_load_s``: a packaged tarball renamed into the shared folder → the image loaded on
  a watching agent (its ``env.synced``). All agents here share one engine, so the image
  is removed first, as on a machine that never had it.

Without an engine it prints a comment saying so and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
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

from bench_cluster import _wait_all
from ratios import report, report_ratios
from support.cluster import Cluster
from support.docker_images import BUSYBOX_IMAGE, build_images, engine

from node_agent.executors.docker import ENGINE_CALLS
from projections.tasks import ENDED_STATES as FINAL

ENV = "busybox"


def bare_run() -> None:
    subprocess.run(["docker", "run", "--rm", BUSYBOX_IMAGE, "true"], check=True)


def one_task(cluster: Cluster) -> float:
    """Submit one ``true`` and poll until it ended: the milliseconds it took."""
    http = cluster.http
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
    return (time.perf_counter() - start) * 1000


def one_bare() -> float:
    start = time.perf_counter()
    bare_run()
    return (time.perf_counter() - start) * 1000


def bench_latency(cluster: Cluster, samples: int = 20) -> tuple[float, float]:
    """p50 of ours and of ``docker run --rm``, sampled alternately (3 warm-ups each)."""
    ours, bare = [], []
    for i in range(samples + 3):
        if i % 2:  # alternate which goes first
            t = one_task(cluster)
            r = one_bare()
        else:
            r = one_bare()
            t = one_task(cluster)
        if i >= 3:
            ours.append(t)
            bare.append(r)
    return statistics.median(ours), statistics.median(bare)


def bench_throughput(cluster: Cluster, n: int = 100) -> float:
    task = {"command": "true", "container": ENV, "cores": 0}
    before = sum(cluster.health()["tasks"].values())
    start = time.perf_counter()
    r = cluster.http.post("/api/batches", json={"tasks": [task] * n})
    assert r.status_code == 201, r.text
    _wait_all(cluster.http, before + n)
    return time.perf_counter() - start


def bench_bare_throughput(n: int = 100, parallel: int = ENGINE_CALLS) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda _: bare_run(), range(n)))
    return time.perf_counter() - start


def bench_pool_prototype(samples: int = 20) -> dict[str, float]:
    """What a pool of containers could save: p50 ms of each way to run ``true`` once
    through the engine's API, interleaved (docs/decisions.md, issue 19).

    ``create_start``: create, start, wait (what the executor does today); ``precreated``:
    start and wait of a container created beforehand; ``exec``: ``exec`` into a running
    container that waits; ``handoff``: a started container whose shell waits on a FIFO
    in a bind mount (a stand-in for a tiny init): resources set (``docker update``), renamed
    to the task's name, the command written to the FIFO, until its exit is seen. Also the
    memory one idle started container holds (its shim and its waiting process, KiB)."""
    import docker

    api = docker.APIClient(timeout=60)
    timings: dict[str, list[float]] = {
        "create_start": [],
        "precreated": [],
        "exec": [],
        "handoff": [],
    }
    waiting = api.create_container(BUSYBOX_IMAGE, ["sleep", "3600"])["Id"]
    api.start(waiting)
    fifos = Path(tempfile.mkdtemp(prefix="hakuriver-bench-pool-"))
    try:
        for i in range(samples + 3):
            t0 = time.perf_counter()
            fresh = api.create_container(BUSYBOX_IMAGE, ["true"])["Id"]
            api.start(fresh)
            api.wait(fresh)
            t1 = time.perf_counter()
            api.remove_container(fresh)
            pre = api.create_container(BUSYBOX_IMAGE, ["true"])["Id"]
            t2 = time.perf_counter()
            api.start(pre)
            api.wait(pre)
            t3 = time.perf_counter()
            api.remove_container(pre)
            t4 = time.perf_counter()
            ex = api.exec_create(waiting, ["true"])["Id"]
            api.exec_start(ex)
            code = api.exec_inspect(ex)["ExitCode"]
            t5 = time.perf_counter()
            assert code == 0, code
            control = fifos / str(i)
            control.mkdir()
            os.mkfifo(control / "cmd")
            pooled = api.create_container(
                BUSYBOX_IMAGE,
                ["sh", "-c", 'read line < /ctl/cmd; eval "exec $line"'],
                host_config=api.create_host_config(binds={str(control): {"bind": "/ctl"}}),
            )["Id"]
            api.start(pooled)  # the pool's work, before the task comes
            t6 = time.perf_counter()
            api.update_container(
                pooled, cpu_quota=100_000, cpu_period=100_000, mem_limit=2**29, memswap_limit=2**29
            )
            api.rename(pooled, f"hakuriver-bench-pool-{uuid.uuid4().hex[:8]}")
            (control / "cmd").write_text("true\n")
            api.wait(pooled)
            t7 = time.perf_counter()
            api.remove_container(pooled)
            if i >= 3:
                timings["create_start"].append((t1 - t0) * 1000)
                timings["precreated"].append((t3 - t2) * 1000)
                timings["exec"].append((t5 - t4) * 1000)
                timings["handoff"].append((t7 - t6) * 1000)
        figures = {k: statistics.median(v) for k, v in timings.items()}
        figures["idle_kib"] = _idle_container_kib(waiting)
        return figures
    finally:
        api.remove_container(waiting, force=True)
        shutil.rmtree(fifos, ignore_errors=True)


def _idle_container_kib(container_id: str) -> float:
    """Resident memory of an idle started container: its shim and its own processes."""
    import psutil

    pids = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if container_id in " ".join(p.info["cmdline"] or ())
    ]
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            total += process.memory_info().rss
            total += sum(c.memory_info().rss for c in process.children(recursive=True))
    return total / 1024


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
            ours, bare = bench_latency(cluster)
            report("latency_docker_task_p50_ms", ours)
            report("bare_docker_run_p50_ms", bare)
            rounds = []
            for _ in range(2):  # alternating, each side's best: a busy moment hits both
                rounds.append((bench_bare_throughput(), bench_throughput(cluster)))
            report("throughput_100_docker_tasks_s", min(r[1] for r in rounds))
            report("bare_docker_100_parallel_s", min(r[0] for r in rounds))
            pool = bench_pool_prototype()
            report("docker_create_start_p50_ms", pool["create_start"])
            report("docker_start_precreated_p50_ms", pool["precreated"])
            report("docker_exec_waiting_p50_ms", pool["exec"])
            report("docker_pool_handoff_p50_ms", pool["handoff"])
            report("docker_idle_container_kib", pool["idle_kib"])
            report("env_load_s", bench_env_load(cluster, client))
        finally:
            cluster.close()
    report_ratios()


if __name__ == "__main__":
    asyncio.run(asyncio.sleep(0))
    main()
