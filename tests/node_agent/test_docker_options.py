"""The container a task asks for, built without an engine: GPUs, NUMA, limits, mounts.

No GPU is lent to this machine, so the GPU path is checked here at the request the
engine receives (the same ``DeviceRequest`` as ``docker run --gpus '"device=1,3"'``).
"""

from __future__ import annotations

from typing import Any

from events.types import Mount, TaskSpec
from node_agent.executors.base import TaskRun
from node_agent.executors.docker_options import container_options


def _options(**run: Any) -> dict[str, Any]:
    spec_fields = run.pop("spec", {})
    spec = TaskSpec(
        command="python", args=("train.py",), batch_id="b", container="gpu-env", **spec_fields
    )
    fields: dict[str, Any] = {"task_id": "t1", "spec": spec, "cores": 2}
    fields.update(run)
    return container_options(
        TaskRun(shared_dir="/srv/shared", local_temp_dir="/scratch", **fields), node="node3"
    )


def test_gpu_ids_become_one_device_request() -> None:
    options = _options(gpu_ids=(1, 3))
    [request] = options["device_requests"]
    assert request["DeviceIDs"] == ["1", "3"]
    assert request["Capabilities"] == [["gpu"]]
    assert request.get("Count") in (None, 0)  # the ids, not "all"


def test_no_gpus_no_device_request() -> None:
    assert "device_requests" not in _options()


def test_limits_numa_and_identity() -> None:
    options = _options(memory_bytes=2_000_000_000, numa_id=1, cpus=(8, 9))
    assert options["nano_cpus"] == 2_000_000_000
    assert options["mem_limit"] == options["memswap_limit"] == 2_000_000_000
    assert options["cpuset_cpus"] == "8,9" and options["cpuset_mems"] == "1"
    assert options["labels"] == {"hakuriver.task_id": "t1", "hakuriver.node": "node3"}
    assert options["command"] == ["python", "train.py"]
    assert options["privileged"] is False


def test_mounts_in_order_with_their_modes() -> None:
    options = _options(
        spec={
            "privileged": True,
            "mounts": (Mount(host_path="/data", container_path="/mnt/data", read_only=True),),
        }
    )
    mounts = [(m["Target"], m["Source"], m["ReadOnly"]) for m in options["mounts"]]
    assert mounts == [
        ("/shared", "/srv/shared/shared_data", False),
        ("/local_temp", "/scratch", False),
        ("/mnt/data", "/data", True),  # the spec's mounts only: the host chose them
    ]
    assert options["privileged"] is True


def test_a_workdir_and_a_rank_control_folder_are_mounted_and_it_starts_in_the_workdir() -> None:
    options = _options(
        spec={"workdir": "/srv/shared/jobs/j1/workdir", "env": {"HAKURIVER_JOB_CONTROL": "no"}},
        control_dir="/var/lib/runner/jobs/t1",
    )
    mounts = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in options["mounts"]}
    assert mounts["/hakuriver/workdir"] == ("/srv/shared/jobs/j1/workdir", False)
    assert mounts["/hakuriver/control"] == ("/var/lib/runner/jobs/t1", False)
    assert options["working_dir"] == "/hakuriver/workdir"
    # The rank finds its folder where it is mounted, whatever its own variables said
    assert options["environment"]["HAKURIVER_JOB_CONTROL"] == "/hakuriver/control"


def test_a_task_without_workdir_starts_in_shared_and_gets_no_control_folder() -> None:
    options = _options()
    assert options["working_dir"] == "/shared"
    assert {m["Target"] for m in options["mounts"]} == {"/shared", "/local_temp"}
    assert "HAKURIVER_JOB_CONTROL" not in options["environment"]
