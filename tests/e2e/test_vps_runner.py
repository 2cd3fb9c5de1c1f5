"""A VPS end to end on the runner's side: the real host and a real agent process with the
Docker executor; a user submits a VPS and reaches it with plain ``ssh`` on the port the
agent reported (``vps.ready``), also after the agent is SIGKILLed and restarted.

The gateway's own tests go through ``ssh -J``; this one checks what the runner hands it.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.cluster import Cluster, running_cluster
from support.vps_image import VPS_SSHD_IMAGE, vps_images_or_skip
from support.vps_ssh import SshClient

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]


def test_a_submitted_vps_is_reached_by_ssh_again_after_its_runner_is_killed(
    tmp_path: Path,
) -> None:
    client = vps_images_or_skip()
    ssh = SshClient(tmp_path / "ssh")
    task_id = ""
    with running_cluster(tmp_path) as cluster:
        try:
            # Given a VPS submitted through the API
            body = {
                "task_type": "vps",
                "container": VPS_SSHD_IMAGE,
                "ssh_public_key": ssh.public_key,
                "targets": ["n1"],
            }
            r = cluster.http.post("/api/tasks", json=body)
            assert r.status_code == 201, r.text
            (task_id,) = r.json()["task_ids"]
            # Then the host learns where its sshd answers, and plain ssh works there
            task = ready(cluster, task_id)
            first = run(ssh, task, "echo one")
            assert first.stdout == "one\n", first.stderr
            # When the runner is SIGKILLed and started again
            cluster.stop_agent("n1", signal.SIGKILL)
            cluster.start_agent("n1")
            # Then the VPS ran on, was re-adopted, its port reported again: ssh works again
            cluster.wait(
                lambda: len(history(cluster, task_id, "vps.ready")) >= 2,
                60,
                "vps.ready reported again",
            )
            again = ready(cluster, task_id)
            assert again["state"] == "running"
            second = run(ssh, again, "echo two")
            assert second.stdout == "two\n", second.stderr
        finally:
            if task_id:
                for container in client.containers.list(
                    all=True, filters={"label": f"hakuriver.task_id={task_id}"}
                ):
                    if container.name == f"hakuriver-vps-{task_id}":
                        container.remove(force=True)


def history(cluster: Cluster, task_id: str, kind: str) -> list[dict[str, Any]]:
    r = cluster.http.get(f"/api/tasks/{task_id}/history")
    assert r.status_code == 200, r.text
    body = r.json()
    entries = body if isinstance(body, list) else body.get("events", [])
    return [e for e in entries if e.get("kind") == kind]


def ready(cluster: Cluster, task_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def check() -> bool:
        found.update(cluster.task(task_id))
        return bool(found.get("sshd")) and found.get("ssh_port") is not None

    cluster.wait(check, 60, f"task {task_id} reported ready with sshd")
    return found


def run(ssh: SshClient, task: dict[str, Any], command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ssh.argv(task["ssh_address"], task["ssh_port"], command),
        capture_output=True,
        text=True,
        timeout=30,
    )
