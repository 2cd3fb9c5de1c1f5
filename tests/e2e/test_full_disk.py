"""A full disk, for real: the host's event log and a runner's outbox on a small tmpfs.

What must hold while the disk is full: a submission is refused with 503 saying why (not
a 500), ``/api/health`` says ``degraded`` and why, the agent's link stays up (its
batches are refused as retryable and sent again, with a pause), nothing is logged with
a traceback, and the running task keeps its state and its cores. Once the space is
back: the task ends normally (its final report was kept, not lost), new work runs, the
log's chain and invariants hold, and the state rebuilt from the log equals the live one.

Before the fix (main at e7b299a): submissions answered 500, the link reconnected many
times a second with a traceback each time, health said ``ok``, and the task stayed
``running`` after the space came back, until the runner was restarted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from support.cluster import Cluster
from support.small_disk import Filler, small_disk

from control_plane.history import state_document
from replay_tools.audit import audit
from replay_tools.replay import state_at

pytestmark = pytest.mark.timeout(120)

DB = '[database]\ndb_file = "db/hakuriver.duckdb"\n'


def gated(gate: Path, then: str = "true") -> list[str]:
    return ["-c", f"while [ ! -e '{gate}' ]; do sleep 0.02; done; {then}"]


def submit(cluster: Cluster, *args: str) -> httpx.Response:
    body = {"command": "sh", "args": list(args), "container": "NULL"}
    return cluster.http.post("/api/tasks", json=body)


def summary(cluster: Cluster) -> dict[str, Any]:
    answer: dict[str, Any] = cluster.http.get("/api/summary").json()
    return answer


def check_the_log(cluster: Cluster, db: Path) -> None:
    """Audit live; then, the host stopped, the state rebuilt from the file equals the
    live state it served last."""
    report = cluster.http.get("/api/audit").json()
    assert report["ok"], report
    live = cluster.http.get("/api/state", params={"tasks": "all"}).json()
    cluster.stop_host()
    offline = audit(db)
    assert offline.ok, offline.to_dict()
    rebuilt = state_document(state_at(db, seq=live["seq"]), ended=True)
    assert msgspec.json.decode(msgspec.json.encode(rebuilt)) == live


def connections(cluster: Cluster, node: str) -> int:
    """How many times ``node``'s agent connected, by the host's log."""
    text = (cluster.root / "host.log").read_text(errors="replace")
    return text.count(f"agent {node} connected")


def test_a_full_disk_under_the_log_refuses_work_with_503_and_strands_nothing(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "db", 16) as disk:
        cluster = Cluster(tmp_path, extra=DB)
        try:
            cluster.start_host()
            cluster.start_agent("n1")
            gate = tmp_path / "gate"
            [task_id] = cluster.submit("sh", *gated(gate, "echo done"))
            cluster.wait_state(task_id, "running")
            cores_held = cluster.node("n1")["free_cores"]  # type: ignore[index]

            # When the log's disk is filled to the last byte
            filler = Filler(disk)
            filler.fill()

            # Then a submission is refused (a few may still fit in the WAL's last page)
            accepted: list[str] = []
            for _ in range(200):
                answer = submit(cluster, "-c", "true")
                if answer.status_code != 201:
                    break
                accepted += answer.json()["task_ids"]
            assert answer.status_code == 503, answer.text
            refusal = answer.json()
            assert refusal["error"] == "store_unavailable", refusal
            assert "no space left on device" in refusal["message"]
            assert answer.headers["Retry-After"] == "5"
            # And the public health says so, without naming a path
            health = cluster.http.get("/api/health")
            assert health.status_code == 200
            assert health.json()["status"] == "degraded", health.json()
            assert "no space left on device" in health.json()["reason"]
            assert str(tmp_path) not in health.text

            # When the task ends while the disk is still full. (The WAL's last page can
            # still hold a write smaller than the one refused, and the task's report is
            # small: heartbeats are written too, so once two more were refused the page
            # holds no more than a heartbeat's worth and the report cannot fit either.)
            refused = summary(cluster)["store_failure"]["failures"]
            cluster.wait(
                lambda: summary(cluster)["store_failure"]["failures"] >= refused + 2,
                30,
                "heartbeats to be refused too",
            )
            gate.touch()
            failures = summary(cluster)["store_failure"]["failures"]
            cluster.wait(
                lambda: summary(cluster)["store_failure"]["failures"] >= failures + 3,
                30,
                "the agent to send its report again",
            )
            # Then its report is refused for now, and kept: the task still runs, holds its
            # cores, and the agent is still on its first link
            task = cluster.task(task_id)
            assert task["state"] == "running", task
            assert cluster.node("n1")["free_cores"] == cores_held  # type: ignore[index]
            assert connections(cluster, "n1") == 1

            # When the space comes back
            filler.free()

            # Then the task ends normally, health recovers, and new work runs
            done = cluster.wait_state(task_id, timeout=30)
            assert done["state"] == "completed", done
            assert cluster.output(task_id) == b"done\n"
            cluster.wait(
                lambda: cluster.http.get("/api/health").json() == {"status": "ok"},
                20,
                "health to recover",
            )
            for accepted_id in accepted + cluster.submit("true"):
                assert cluster.wait_state(accepted_id)["state"] == "completed"
            assert connections(cluster, "n1") == 1
            log = (tmp_path / "host.log").read_text(errors="replace")
            assert "Traceback" not in log, log[-3000:]
            check_the_log(cluster, disk / "hakuriver.duckdb")
        finally:
            cluster.close()


def test_a_full_disk_under_the_runners_outbox_keeps_the_tasks_final_report(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "runner-n1"
    # The outbox's disk is small; the process executor's records (state_dir/process) are
    # on a roomy one of their own: what is tested here is the outbox.
    with small_disk(state_dir, 4) as disk, small_disk(state_dir / "process", 16):
        cluster = Cluster(tmp_path)
        try:
            cluster.start_host()
            cluster.start_agent("n1")
            gate = tmp_path / "gate"
            [task_id] = cluster.submit("sh", *gated(gate, "echo done"))
            cluster.wait_state(task_id, "running")

            # When the runner's state dir is full and the task ends
            filler = Filler(disk)
            filler.fill()
            gate.touch()
            cluster.wait(
                lambda: (
                    "outbox" in cluster.logs("agent-n1")
                    and "cannot be written" in cluster.logs("agent-n1")
                ),
                30,
                "the agent to find its outbox full",
            )
            # Then the runner keeps the task (still running on the host) and tries again
            assert cluster.task(task_id)["state"] == "running"
            assert cluster.node("n1")["online"]  # type: ignore[index]

            # When the space comes back, the task ends normally
            filler.free()
            done = cluster.wait_state(task_id, timeout=30)
            assert done["state"] == "completed", done
            assert cluster.output(task_id) == b"done\n"
            [after] = cluster.submit("true")
            assert cluster.wait_state(after)["state"] == "completed"
            assert connections(cluster, "n1") == 1
            assert "Traceback" not in cluster.logs("agent-n1")
            check_the_log(cluster, cluster.db_file)
        finally:
            cluster.close()
