"""``--mount`` on process tasks and ``[paths] numactl_path``, through a real host and
real runners: n1 may make mount namespaces (the test runs as root), n2 runs without
CAP_SYS_ADMIN in its bounding set, so its probe fails and the host refuses to send it a
process task with mounts, naming the field.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import Cluster, running_cluster

from node_agent.executors.process_plan import can_unshare_mounts

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not can_unshare_mounts(), reason="needs a root runner with namespaces"),
    # n2's runner is started under setpriv (util-linux) to take CAP_SYS_ADMIN away
    pytest.mark.skipif(
        shutil.which("setpriv") is None,
        reason="needs setpriv (util-linux) to start a runner without CAP_SYS_ADMIN",
    ),
]

NO_SYS_ADMIN = ("setpriv", "--bounding-set", "-sys_admin", "--")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("mounts")
    # A numactl that records its arguments, then runs the command after "--"
    fake = root / "bin" / "numactl"
    fake.parent.mkdir()
    fake.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {root}/numactl.args\n'
        'while [ "$1" != "--" ]; do shift; done; shift; exec "$@"\n'
    )
    fake.chmod(0o755)
    with running_cluster(root, agents=()) as made:
        text = made.config.read_text()
        made.config.write_text(text.replace("[paths]\n", f'[paths]\nnumactl_path = "{fake}"\n', 1))
        made.start_agent("n1")
        made.start_agent("n2", wrap=NO_SYS_ADMIN)
        yield made


def folders(cluster: Cluster, name: str) -> tuple[Path, Path]:
    source, target = cluster.root / f"{name}-source", cluster.root / f"{name}-target"
    source.mkdir()
    target.mkdir()
    (source / "data.txt").write_text("from the host\n")
    return source, target


def test_each_node_says_whether_it_can_bind(cluster: Cluster) -> None:
    assert (cluster.node("n1") or {}).get("process_mounts") is True
    assert (cluster.node("n2") or {}).get("process_mounts") is False


def test_a_process_task_sees_its_mount_and_the_node_does_not(cluster: Cluster) -> None:
    source, target = folders(cluster, "seen")
    script = f"cat {target}/data.txt; grep -c ' {target} ' /proc/self/mountinfo"
    [task_id] = cluster.submit("sh", "-c", script, mounts=[f"{source}:{target}"], targets=["n1"])
    assert cluster.wait_state(task_id)["state"] == "completed"
    assert cluster.output(task_id) == b"from the host\n1\n"
    # Outside the task: the folder is empty and nothing is mounted there, for the runner
    # either (its mount table is the node's)
    assert list(target.iterdir()) == []
    runner = cluster.agents["n1"].pid
    assert f" {target} " not in Path(f"/proc/{runner}/mountinfo").read_text()


def test_a_read_only_mount_refuses_a_write(cluster: Cluster) -> None:
    source, target = folders(cluster, "ro")
    [task_id] = cluster.submit(
        "sh", "-c", f"echo x > {target}/new", mounts=[f"{source}:{target}:ro"], targets=["n1"]
    )
    assert cluster.wait_state(task_id)["state"] == "failed"
    assert b"Read-only file system" in cluster.output(task_id, "stderr")
    assert not (source / "new").exists()


def test_a_node_that_cannot_bind_is_refused_naming_mounts(cluster: Cluster) -> None:
    source, target = folders(cluster, "refused")
    body = {
        "command": "true",
        "container": "NULL",
        "mounts": [f"{source}:{target}"],
        "targets": ["n2"],
    }
    answer = cluster.http.post("/api/tasks", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "mounts"
    assert "n2" in answer.json()["message"]
    # Left to the scheduler, the task goes to the node that can bind it
    del body["targets"]
    placed = cluster.http.post("/api/tasks", json=body)
    assert placed.status_code == 201, placed.text
    [task_id] = placed.json()["task_ids"]
    finished = cluster.wait_state(task_id)
    assert (finished["state"], finished["node"]) == ("completed", "n1")


def test_a_numa_bound_task_runs_under_the_configured_numactl(cluster: Cluster) -> None:
    [task_id] = cluster.submit("echo", "bound", targets=["n1:0"])
    assert cluster.wait_state(task_id)["state"] == "completed"
    assert cluster.output(task_id) == b"bound\n"
    recorded = (cluster.root / "numactl.args").read_text().splitlines()
    assert recorded[0] == "--membind=0"
    assert recorded[-3:] == ["--", "echo", "bound"]
