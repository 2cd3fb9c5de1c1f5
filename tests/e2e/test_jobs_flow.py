"""Jobs end to end: a real host and three (then four) runners with distinct names and
addresses on loopback, job files sent through the REST API, ranks run as real processes
(and in a real container where Docker is available).

The issue's scenarios: a 3-node job whose ranks see the right rank, count and address list;
setup finished on every node before any run started (the log's times and the ranks' own);
combined logs prefixed ``node-{idx} | ``; a failing rank fails the job and stops the
others; a 4-node job on 3 nodes waits, never partly placed, and starts when a fourth
runner joins.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cluster import Cluster
from support.waiting import wait_until

ADDRESSES = {"n1": "127.0.0.2", "n2": "127.0.0.3", "n3": "127.0.0.4", "n4": "127.0.0.5"}


@pytest.fixture(scope="module")
def jobs_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("jobs")
    cluster = Cluster(root)
    try:
        cluster.start_host()
        for name in ("n1", "n2", "n3"):
            with_address(cluster, name)
        yield cluster
    finally:
        cluster.close()


def with_address(cluster: Cluster, name: str) -> None:
    """Start runner ``name`` reporting its own loopback address, as a machine would."""
    cluster.start_agent(name, runner_address=ADDRESSES[name])


def submit(cluster: Cluster, text: str, **fields: Any) -> dict[str, Any]:
    answer = cluster.http.post("/api/jobs", json={"yaml": text, **fields})
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


def job(cluster: Cluster, job_id: str) -> dict[str, Any]:
    answer = cluster.http.get(f"/api/jobs/{job_id}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def wait_job(cluster: Cluster, job_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
    wanted = statuses or ("completed", "failed", "stopped")
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(job(cluster, job_id))
        return seen["status"] in wanted and (seen["phase"] == "ended" or statuses != ())

    wait_until(done, timeout)
    return seen


def logs(cluster: Cluster, job_id: str, **params: Any) -> str:
    answer = cluster.http.get(f"/api/jobs/{job_id}/logs", params=params)
    assert answer.status_code == 200, answer.text
    return answer.text


def job_events(cluster: Cluster, job_id: str) -> list[dict[str, Any]]:
    """The job's own events and its ranks' setup reports, from the log, in seq order."""
    answer = cluster.http.get("/api/events", params={"kind": ["job.*"], "limit": 10000})
    assert answer.status_code == 200, answer.text
    return [e for e in answer.json()["events"] if e["payload"].get("job_id") == job_id]


RANKS_FILE = """
name: ranks
num_nodes: 3
setup: |
  echo "setup of $SKYPILOT_SETUP_NODE_RANK"
  sleep 0.$((SKYPILOT_SETUP_NODE_RANK * 3))
  date +%s%N > "{out}/setup-$NODE_RANK"
run: |
  date +%s%N > "{out}/run-$NODE_RANK"
  echo "rank $NODE_RANK of $NUM_NODES job $HAKURIVER_JOB_ID"
  echo "ips $(echo "$SKYPILOT_NODE_IPS" | tr '\\n' ',')"
  echo "gpus $SKYPILOT_NUM_GPUS_PER_NODE task $SKYPILOT_TASK_ID"
  echo "an error line" >&2
resources:
  cpus: 1
  image_id: NULL
"""


def test_a_three_node_job_runs_each_rank_with_its_rank_and_the_address_list(
    jobs_cluster: Cluster, tmp_path: Path
) -> None:
    out = tmp_path / "marks"
    out.mkdir()
    out.chmod(0o777)
    submitted = submit(jobs_cluster, RANKS_FILE.format(out=out))
    job_id = submitted["job_id"]
    assert len(job_id) == 8 and job_id.isalnum() and job_id.lower() == job_id
    assert [r["rank"] for r in submitted["ranks"]] == [0, 1, 2]
    done = wait_job(jobs_cluster, job_id)
    assert done["status"] == "completed", done
    nodes = done["nodes"]
    assert sorted(nodes) == ["n1", "n2", "n3"], "three distinct nodes"
    ips = ",".join(ADDRESSES[n] for n in nodes) + ","
    combined = logs(jobs_cluster, job_id)
    for rank in range(3):
        mine = [
            line.removeprefix(f"node-{rank} | ")
            for line in combined.splitlines()
            if line.startswith(f"node-{rank} | ")
        ]
        # stdout and stderr in one stream, in the order written, each line prefixed
        assert mine == [
            f"setup of {rank}",
            f"rank {rank} of 3 job {job_id}",
            f"ips {ips}",
            f"gpus 0 task {job_id}",
            "an error line",
        ], combined
    assert all(line.startswith("node-") for line in combined.splitlines())
    # one rank alone, unprefixed
    assert logs(jobs_cluster, job_id, rank=1).splitlines()[1] == f"rank 1 of 3 job {job_id}"
    # Setup finished everywhere before any run began: the ranks' own clocks...
    setups = [int((out / f"setup-{r}").read_text()) for r in range(3)]
    runs = [int((out / f"run-{r}").read_text()) for r in range(3)]
    assert max(setups) < min(runs)
    # ... and the log's: every rank's setup_done is recorded before the run phase, whose
    # time is before any rank's run began.
    events = job_events(jobs_cluster, job_id)
    kinds = [e["kind"] for e in events]
    assert kinds[:3] == ["job.submitted", "job.placed", "job.phase"], kinds
    assert kinds[-1] == "job.finished"
    (run_phase,) = [
        e for e in events if e["kind"] == "job.phase" and e["payload"]["phase"] == "run"
    ]
    setup_done = [e for e in events if e["kind"] == "job.setup_done"]
    assert sorted(e["payload"]["rank"] for e in setup_done) == [0, 1, 2]
    assert all(e["seq"] < run_phase["seq"] for e in setup_done)
    assert max(e["recorded_at_us"] for e in setup_done) <= run_phase["recorded_at_us"]
    assert run_phase["recorded_at_us"] * 1000 <= min(runs)
    ranks = {r["rank"]: r for r in done["ranks"]}
    assert all(ranks[r]["state"] == "completed" and ranks[r]["exit_code"] == 0 for r in ranks)


def test_a_failing_rank_fails_the_job_and_stops_the_others(jobs_cluster: Cluster) -> None:
    text = """
num_nodes: 3
resources: {image_id: NULL}
run: |
  if [ "$NODE_RANK" = 1 ]; then echo "rank 1 gives up"; exit 3; fi
  exec sleep 120
"""
    job_id = submit(jobs_cluster, text)["job_id"]
    done = wait_job(jobs_cluster, job_id)
    assert done["status"] == "failed" and done["failed_rank"] == 1, done
    assert "rank 1 failed (exit code 3)" in done["message"]
    ranks = {r["rank"]: r for r in done["ranks"]}
    assert ranks[1]["state"] == "failed" and ranks[1]["exit_code"] == 3
    for other in (0, 2):
        assert ranks[other]["state"] == "killed", ranks[other]
    for other in (0, 2):
        task = jobs_cluster.task(ranks[other]["task_id"])
        assert task["kill_requested_by"] == f"job {job_id}"
        assert task["job_id"] == job_id and task["rank"] == other


def test_a_four_node_job_on_three_nodes_waits_whole_and_starts_when_a_fourth_joins(
    jobs_cluster: Cluster,
) -> None:
    text = "num_nodes: 4\nresources: {image_id: NULL, cpus: 1}\nrun: echo rank $NODE_RANK"
    job_id = submit(jobs_cluster, text)["job_id"]
    # Other work still runs meanwhile (the waiting job blocks nobody).
    [small] = jobs_cluster.submit("true")
    assert jobs_cluster.wait_state(small)["state"] == "completed"
    waiting = job(jobs_cluster, job_id)
    assert waiting["status"] == "pending" and waiting["phase"] == "queued"
    assert all(r["state"] == "pending" and r["node"] is None for r in waiting["ranks"])
    assert "4" in waiting["why"] and "3" in waiting["why"], waiting["why"]
    try:
        with_address(jobs_cluster, "n4")
        done = wait_job(jobs_cluster, job_id)
        assert done["status"] == "completed", done
        assert sorted(done["nodes"]) == ["n1", "n2", "n3", "n4"]
    finally:
        jobs_cluster.stop_agent("n4")
        jobs_cluster.wait_node("n4", online=False)


def test_stop_all_stops_only_the_callers_jobs(jobs_cluster: Cluster) -> None:
    token = jobs_cluster.add_user(f"u{time.monotonic_ns() % 10**6}")
    text = "num_nodes: 1\nresources: {image_id: NULL}\nrun: exec sleep 120"
    with jobs_cluster.client_as(token) as user:
        mine = user.post("/api/jobs", json={"yaml": text})
        assert mine.status_code == 201, mine.text
        theirs = submit(jobs_cluster, text)["job_id"]
        refused = user.post("/api/jobs/stop", json={"all": True, "all_users": True})
        assert refused.status_code == 403, refused.text
        stopped = user.post("/api/jobs/stop", json={"all": True})
        assert stopped.status_code in (200, 202), stopped.text
        assert stopped.json()["stopped"] == [mine.json()["job_id"]]
    assert wait_job(jobs_cluster, mine.json()["job_id"])["status"] == "stopped"
    assert job(jobs_cluster, theirs)["status"] in ("pending", "running")
    jobs_cluster.http.post(f"/api/jobs/{theirs}/stop")
    assert wait_job(jobs_cluster, theirs)["status"] == "stopped"


def test_a_host_killed_while_ranks_wait_at_the_barrier_loses_nothing(tmp_path: Path) -> None:
    # A power cut of the host between the setups and the run: the ranks wait (their
    # runners keep them), the restarted host decides the run phase from the log, and the
    # runners' reconnection carries the go.
    gate = tmp_path / "gate"
    (tmp_path / "c").mkdir()
    cluster = Cluster(tmp_path / "c")
    try:
        cluster.start_host()
        for name in ("n1", "n2"):
            with_address(cluster, name)
        text = f"""
num_nodes: 2
resources: {{image_id: NULL}}
setup: |
  while [ ! -e '{gate}' ]; do sleep 0.02; done
run: echo ran $NODE_RANK
"""
        job_id = submit(cluster, text)["job_id"]
        wait_job(cluster, job_id, "running")
        gate.touch()
        # One rank may report its setup before the kill, or both, or none: all are fine.
        cluster.stop_host(signal.SIGKILL)
        cluster.start_host()
        done = wait_job(cluster, job_id)
        assert done["status"] == "completed", done
        combined = logs(cluster, job_id)
        assert "node-0 | ran 0" in combined and "node-1 | ran 1" in combined
        kinds = [e["kind"] for e in job_events(cluster, job_id)]
        assert kinds.count("job.setup_done") == 2 and kinds.count("job.placed") == 1
    finally:
        cluster.close()


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_a_container_job_with_a_workdir_and_a_volume(jobs_cluster: Cluster) -> None:
    import gzip
    import io
    import tarfile

    from support.docker_images import engine_or_skip

    engine_or_skip()
    volume = f"vol{time.monotonic_ns() % 10**9}"
    made = jobs_cluster.http.post("/api/volumes", json={"name": volume})
    assert made.status_code == 201, made.text
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = b"from the workdir\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    text = f"""
name: boxed
num_nodes: 2
workdir: ./src
resources:
  image_id: docker:hakuriver/busybox:base
volumes:
  /data: {volume}
setup: echo "set up in $(pwd)"
run: |
  cat hello.txt
  echo "rank $NODE_RANK of $NUM_NODES" > /data/rank-$NODE_RANK
  test -w "$HAKURIVER_JOB_CONTROL" && echo "control at $HAKURIVER_JOB_CONTROL"
"""
    answer = jobs_cluster.http.post(
        "/api/jobs",
        data={"job": json.dumps({"yaml": text})},
        files={"workdir": ("w.tar.gz", gzip.compress(raw.getvalue()), "application/gzip")},
    )
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["job_id"]
    done = wait_job(jobs_cluster, job_id, timeout=90)
    assert done["status"] == "completed", (done, logs(jobs_cluster, job_id))
    combined = logs(jobs_cluster, job_id)
    for rank in (0, 1):
        assert f"node-{rank} | set up in /hakuriver/workdir" in combined, combined
        assert f"node-{rank} | from the workdir" in combined
        assert f"node-{rank} | control at /hakuriver/control" in combined
    folder = jobs_cluster.shared / "volumes" / volume
    assert sorted(p.name for p in folder.iterdir()) == ["rank-0", "rank-1"]
    assert (folder / "rank-1").read_text() == "rank 1 of 2\n"


def test_a_runner_killed_while_its_rank_waits_at_the_barrier_loses_nothing(
    jobs_cluster: Cluster, tmp_path: Path
) -> None:
    # A rank's runner dies (kill -9) while the rank runs its setup; its rank goes on
    # without it. The restarted runner adopts the rank, reports its setup, hears the go.
    gate = tmp_path / "gate"
    text = f"""
num_nodes: 3
resources: {{image_id: NULL}}
setup: |
  if [ "$NODE_RANK" = 1 ]; then while [ ! -e '{gate}' ]; do sleep 0.02; done; fi
run: echo ran $NODE_RANK
"""
    job_id = submit(jobs_cluster, text)["job_id"]
    running = wait_job(jobs_cluster, job_id, "running")
    node = running["nodes"][1]

    def others_set_up() -> bool:
        return (
            len([e for e in job_events(jobs_cluster, job_id) if e["kind"] == "job.setup_done"]) == 2
        )

    wait_until(others_set_up, 20)
    jobs_cluster.stop_agent(node, signal.SIGKILL)
    gate.touch()
    with_address(jobs_cluster, node)
    done = wait_job(jobs_cluster, job_id)
    assert done["status"] == "completed", done
    combined = logs(jobs_cluster, job_id)
    assert all(f"node-{r} | ran {r}" in combined for r in range(3)), combined
    reports = [e for e in job_events(jobs_cluster, job_id) if e["kind"] == "job.setup_done"]
    assert sorted(e["payload"]["rank"] for e in reports) == [0, 1, 2]
