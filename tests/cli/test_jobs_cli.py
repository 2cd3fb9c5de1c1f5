"""``hakuriver jobs`` and ``hakuriver volumes`` as a user types them, against a real cluster.

One control plane and two runners serve the module; the CLI runs as a subprocess. Jobs
run as plain processes (``image_id: NULL``). Long ranks wait for a gate file.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import REPO, Cluster, running_cluster
from support.waiting import wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("jobs-cli"), agents=("n1", "n2")) as started:
        yield started


def hakuriver(
    cluster: Cluster, *words: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.hakuriver", *words],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def job_file(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text("resources: {image_id: NULL}\n" + text)
    return path


def test_a_mistake_in_the_file_is_shown_before_anything_is_sent(
    cluster: Cluster, tmp_path: Path
) -> None:
    path = job_file(tmp_path, "num_nodes: zero\nrun: echo hi\n")
    done = hakuriver(cluster, "jobs", "submit", str(path))
    assert done.returncode == 2, done
    assert "num_nodes (line 2)" in done.stderr
    assert "Total: 0" in hakuriver(cluster, "jobs", "list").stdout


def test_all_users_needs_all(cluster: Cluster) -> None:
    done = hakuriver(cluster, "jobs", "stop", "--all-users")
    assert done.returncode == 2 and "--all-users goes with --all" in done.stderr


def test_volumes_create_and_list(cluster: Cluster) -> None:
    made = hakuriver(cluster, "volumes", "create", "cli-data")
    assert made.returncode == 0, made
    assert str(cluster.shared / "volumes" / "cli-data") in made.stdout
    again = hakuriver(cluster, "volumes", "create", "cli-data")
    assert again.returncode == 2 and "exists" in again.stderr
    listed = hakuriver(cluster, "volumes", "list")
    assert "cli-data" in listed.stdout and "admin" in listed.stdout


def test_submit_follows_the_prefixed_logs_and_exits_with_the_status(
    cluster: Cluster, tmp_path: Path
) -> None:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "greeting.txt").write_text("hello\n")
    path = job_file(
        tmp_path,
        'num_nodes: 2\nworkdir: project\nrun: echo "$NODE_RANK $(cat greeting.txt)"\n',
    )
    done = hakuriver(cluster, "jobs", "submit", str(path), cwd=Path("/"))
    assert done.returncode == 0, done
    job_id, *lines = done.stdout.splitlines()
    assert sorted(lines) == ["node-0 | 0 hello", "node-1 | 1 hello"]
    assert f"job {job_id} completed" in done.stderr
    status = hakuriver(cluster, "jobs", "status", job_id)
    assert status.returncode == 0 and "completed" in status.stdout and "n1" in status.stdout
    only = hakuriver(cluster, "jobs", "logs", job_id, "--rank", "1", "--no-follow")
    assert only.stdout == "1 hello\n"
    listed = hakuriver(cluster, "jobs", "list", "--details")
    assert job_id in listed.stdout and "Total:" in listed.stdout

    failing = job_file(tmp_path, "run: echo bye; exit 3\n", "fails.yaml")
    failed = hakuriver(cluster, "jobs", "submit", str(failing))
    assert failed.returncode == 1, failed
    assert "failed" in failed.stderr and "bye" in failed.stdout


def test_detach_then_ctrl_c_while_following_leaves_the_job_running(
    cluster: Cluster, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    path = job_file(
        tmp_path, f"run: |\n  echo waiting\n  while [ ! -e '{gate}' ]; do sleep 0.02; done\n"
    )
    submitted = hakuriver(cluster, "jobs", "submit", "--detach", str(path))
    assert submitted.returncode == 0, submitted
    job_id = submitted.stdout.strip()
    follower = subprocess.Popen(
        [sys.executable, "-m", "cli.hakuriver", "jobs", "logs", job_id],
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    assert follower.stdout.readline() == "waiting\n"
    follower.send_signal(signal.SIGINT)
    _, err = follower.communicate(timeout=30)
    assert follower.returncode == 130
    assert f"job {job_id} keeps running" in err
    assert cluster.http.get(f"/api/jobs/{job_id}").json()["status"] == "running"
    stopped = hakuriver(cluster, "jobs", "stop", job_id)
    assert stopped.returncode == 0 and f"{job_id}: stop requested" in stopped.stdout

    def ended() -> bool:
        return bool(cluster.http.get(f"/api/jobs/{job_id}").json()["status"] == "stopped")

    wait_until(ended, 30)


def test_list_details_asks_why_a_queued_job_waits(cluster: Cluster, tmp_path: Path) -> None:
    # Three nodes on a two-node cluster: it waits.
    path = job_file(tmp_path, "num_nodes: 3\nrun: 'true'\n")
    submitted = hakuriver(cluster, "jobs", "submit", "--detach", str(path))
    assert submitted.returncode == 0, submitted
    job_id = submitted.stdout.strip()
    try:
        plain = json.loads(hakuriver(cluster, "jobs", "list", "--json").stdout)
        detailed = json.loads(hakuriver(cluster, "jobs", "list", "--details", "--json").stdout)
        [mine] = [j for j in plain["jobs"] if j["job_id"] == job_id]
        [explained] = [j for j in detailed["jobs"] if j["job_id"] == job_id]
        assert mine["why"] == "" and "needs 3 nodes" in explained["why"]
        shown = hakuriver(cluster, "jobs", "list", "--details")
        assert "needs 3 nodes" in shown.stdout, shown
    finally:
        assert hakuriver(cluster, "jobs", "stop", job_id).returncode == 0


def test_logs_of_a_host_never_reached_fail_at_once(tmp_path: Path) -> None:
    # Nothing listens there: no waiting for a host that never answered.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "cli.hakuriver", "jobs", "logs", "abcd1234"],
        env={**env, "HAKURIVER_URL": "http://127.0.0.1:9", "HAKURIVER_TOKEN": "x"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1, done
    assert "cannot reach" in done.stderr and "retrying" not in done.stderr


def test_a_malformed_retry_budget_is_refused_before_submitting(
    cluster: Cluster, tmp_path: Path
) -> None:
    path = job_file(tmp_path, "run: echo never\n", "never.yaml")
    before = json.loads(hakuriver(cluster, "jobs", "list", "--json").stdout)["total"]
    done = subprocess.run(
        [sys.executable, "-m", "cli.hakuriver", "jobs", "submit", str(path)],
        env={**cluster.env(), "HAKURIVER_FOLLOW_RETRY_S": "soon"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done
    assert "HAKURIVER_FOLLOW_RETRY_S" in done.stderr
    assert json.loads(hakuriver(cluster, "jobs", "list", "--json").stdout)["total"] == before
