"""Container tasks through the whole cluster, on a real Docker engine (marker ``docker``)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

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
        # One listing call (containers.list would inspect each one it lists: a container
        # removed in between raises NotFound).
        cluster.wait(lambda: not _containers_of(client, task_id), 20, "the container removed")


def test_a_sigkilled_agent_readopts_its_container_and_records_the_real_exit(
    tmp_path: Path,
) -> None:
    client = engine_or_skip()
    with running_cluster(tmp_path, agents=("d1",), heartbeat_timeout=30) as cluster:
        shared = cluster.shared / "shared_data"
        shared.mkdir(parents=True, exist_ok=True)
        script = "echo before; while [ ! -e /shared/gate ]; do sleep 0.05; done; echo after; exit 7"
        [task_id] = cluster.submit("sh", "-c", script, container="busybox", targets=["d1"])
        task = cluster.wait_state(task_id, "running", timeout=60)
        container = client.containers.get(task["container_id"])
        cluster.wait(lambda: cluster.output(task_id) == b"before\n", 20, "the first line")

        cluster.stop_agent("d1", signal.SIGKILL)
        container.reload()
        assert container.status == "running"  # the task outlives its agent
        cluster.start_agent("d1")
        (shared / "gate").write_text("go")
        task = cluster.wait_state(task_id, timeout=60)
        assert task["state"] == "failed" and task["exit_code"] == 7, task
        # The adopted stream resumed where the killed agent stopped: no repeat, no gap.
        assert cluster.output(task_id) == b"before\nafter\n"
        # And the adopted container goes once the host has the end (stopping the cluster
        # before that left it behind, exited, on the engine)
        cluster.wait(lambda: not _containers_of(client, task_id), 20, "the container removed")
    started = [row for row in cluster.events("task.started") if row[2] == f"task:{task_id}"]
    finished = [row for row in cluster.events("task.finished") if row[2] == f"task:{task_id}"]
    assert len(started) == 1 and len(finished) == 1


def test_a_container_removed_behind_the_agents_back_ends_the_task(tmp_path: Path) -> None:
    # The watcher must end the task either way the engine orders it: the exit seen before
    # the removal (137, SIGKILL), or the container already gone when it is inspected (the
    # reload's NotFound once killed the watcher: the task stayed running, its CPUs held).
    client = engine_or_skip()
    with running_cluster(tmp_path, agents=("d1",)) as cluster:
        [task_id] = cluster.submit("sleep", "600", container="busybox", targets=["d1"])
        task = cluster.wait_state(task_id, "running", timeout=60)
        client.containers.get(task["container_id"]).remove(force=True)
        task = cluster.wait_state(task_id, timeout=30)
        assert task["state"] == "failed", task
        assert task["exit_code"] == 137 or "removed outside HakuRiver" in task["message"], task
        node = cluster.node("d1")
        assert node is not None and node["free_cores"] == node["cores"], node


def test_additional_mounts_reach_a_container_task_once_and_a_mount_overrides_them(
    tmp_path: Path,
) -> None:
    """``[docker] additional_mounts`` in the one config file host and runner both read (as
    under ``hakuriver up``): the host gives them to container tasks without ``--mount``
    and records them in the spec; the runner used to add them again, and Docker refused
    the duplicate mount point."""
    engine_or_skip()
    data, other = tmp_path / "data", tmp_path / "other"
    data.mkdir()
    other.mkdir()
    (data / "marker").write_text("from additional_mounts\n")
    (other / "marker").write_text("from --mount\n")
    extra = f'[docker]\nadditional_mounts = ["{data}:/data:ro"]\n'
    (tmp_path / "c").mkdir()
    with running_cluster(tmp_path / "c", agents=("d1",), extra=extra) as cluster:
        [default] = cluster.submit("cat", "/data/marker", container="busybox")
        [own] = cluster.submit(
            "sh",
            "-c",
            "cat /data/marker; grep -c ' /data ' /proc/mounts",
            container="busybox",
            mounts=[f"{other}:/data:ro"],
        )
        for task_id in (default, own):
            task = cluster.wait_state(task_id, timeout=60)
            assert task["state"] == "completed", task
        assert cluster.output(default) == b"from additional_mounts\n"
        assert cluster.output(own) == b"from --mount\n1\n"  # the task's own, once
        [spec_mount] = cluster.task(default)["mounts"]
        assert spec_mount["host_path"] == str(data)  # what ran is in the log


def _containers_of(client: Any, task_id: str) -> list[Any]:
    """The engine's containers of a task, running or not."""
    return list(client.api.containers(all=True, filters={"label": f"hakuriver.task_id={task_id}"}))
