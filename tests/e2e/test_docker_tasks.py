"""Container tasks through the whole cluster, on a real Docker engine (marker ``docker``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cluster import running_cluster
from support.docker_images import engine_or_skip

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]


def test_a_container_task_runs_in_its_environment(tmp_path: Path) -> None:
    client = engine_or_skip()
    with running_cluster(tmp_path, agents=("d1",)) as cluster:
        node = cluster.node("d1")
        assert node is not None and "docker" in node["executors"]
        (cluster.shared / "shared_data").mkdir(parents=True, exist_ok=True)
        (cluster.shared / "shared_data" / "input.txt").write_text("from the host\n")
        r = cluster.http.post(
            "/api/tasks",
            json={
                "command": "sh",
                "args": ["-c", 'cat /shared/input.txt; echo "$MODE"; test -d /local_temp'],
                "container": "busybox",
                "env": {"MODE": "in a container"},
            },
        )
        assert r.status_code == 201, r.text
        [task_id] = r.json()["task_ids"]
        task = cluster.wait_state(task_id, timeout=60)
        assert task["state"] == "completed", task
        assert task["container_id"]
        assert cluster.output(task_id) == b"from the host\nin a container\n"
        # The container is removed once its end is reported.
        cluster.wait(
            lambda: (
                not client.containers.list(
                    all=True, filters={"label": f"hakuriver.task_id={task_id}"}
                )
            ),
            20,
            "the container to be removed",
        )
