"""A task's container as created: its name, image, labels, mounts and limits (pure).

Labels find a task's containers again after an agent restart: the task id, the node,
and the executor that made it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

from events.jobs import CONTAINER_CONTROL, CONTAINER_WORKDIR, CONTROL_ENV
from node_agent.accounts import Account
from node_agent.executors.base import TaskRun

LABEL_TASK = "hakuriver.task_id"
LABEL_NODE = "hakuriver.node"
# Which executor made the container: node names are not unique per engine (two users'
# `hakuriver up` on one machine both call their node after its hostname), and an
# executor must never adopt, follow or kill another one's containers.
LABEL_EXECUTOR = "hakuriver.executor"
# Where a container sees the node's local temp folder (the seeds' /local_temp).
CONTAINER_LOCAL_TEMP = "/local_temp"


def container_name(task_id: str) -> str:
    """The name of a task's container (one per task id and engine)."""
    return f"hakuriver-task-{task_id}"


def image_for(env: str) -> str:
    """The image of an environment: ``hakuriver/<env>:base`` (a full reference is kept)."""
    return env if ":" in env or "/" in env else f"hakuriver/{env}:base"


def executor_id(state_dir: Path) -> str:
    """This executor's id, kept in its state directory (made once: the first wins)."""
    path = state_dir / "executor-id"
    if not path.exists():
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_text(uuid.uuid4().hex + "\n")
        with contextlib.suppress(FileExistsError):  # another one made it meanwhile
            os.link(temp, path)
        temp.unlink()
    return path.read_text().strip()


def container_options(
    run: TaskRun, *, node: str, executor_id: str = "", account: Account | None = None
) -> dict[str, Any]:
    """The ``containers.create`` keyword arguments for a task (pure: no engine call).

    Its mounts are the seeds' two (``/shared``, ``/local_temp``) and those of its spec: the
    host put ``[docker] additional_mounts`` there at submission when the task named no
    ``--mount`` of its own, so what ran is in the log (the runner adds none). A task with
    a ``workdir`` gets it at ``CONTAINER_WORKDIR`` and starts there; a job's rank gets its
    control folder at ``CONTAINER_CONTROL`` (events/jobs.py), both read-write.

    Run as its owner's ``account`` (``[runner] run_tasks_as = "owner"``), the container's
    process is ``--user UID:GID`` with the account's other groups added (numbers: the
    image need not know the account), so files it writes in the mounts are the owner's.
    """
    from docker.types import DeviceRequest, Mount

    spec = run.spec
    shared = Path(run.shared_dir)
    mounts = [
        Mount("/shared", str(shared / "shared_data"), type="bind"),
        Mount(CONTAINER_LOCAL_TEMP, str(run.local_temp_dir), type="bind"),
    ]
    for m in spec.mounts:
        mounts.append(Mount(m.container_path, m.host_path, type="bind", read_only=m.read_only))
    # HakuRiver's variables over the user's, as a process task gets them; the local temp
    # folder as the container sees it (its /local_temp mount).
    environment = {
        **spec.env,
        "HAKURIVER_TASK_ID": run.task_id,
        "HAKURIVER_LOCAL_TEMP_DIR": CONTAINER_LOCAL_TEMP,
        "HAKURIVER_NODE": node,
    }
    working_dir = "/shared"
    if spec.workdir is not None:
        mounts.append(Mount(CONTAINER_WORKDIR, spec.workdir, type="bind"))
        working_dir = CONTAINER_WORKDIR
    if run.control_dir is not None:
        mounts.append(Mount(CONTAINER_CONTROL, run.control_dir, type="bind"))
        environment[CONTROL_ENV] = CONTAINER_CONTROL
    options: dict[str, Any] = {
        "command": [spec.command, *spec.args],
        "environment": environment,
        "labels": {
            LABEL_TASK: run.task_id,
            LABEL_NODE: node,
            **({LABEL_EXECUTOR: executor_id} if executor_id else {}),
        },
        "name": container_name(run.task_id),
        "mounts": mounts,
        "working_dir": working_dir,
        "privileged": spec.privileged,
        "detach": True,
    }
    if account is not None:
        options["user"] = f"{account.uid}:{account.gid}"
        others = [str(g) for g in account.groups if g != account.gid]
        if others:
            options["group_add"] = others
    if run.cores:
        options["nano_cpus"] = int(run.cores * 1e9)
    if run.memory_bytes:
        options["mem_limit"] = run.memory_bytes
        options["memswap_limit"] = run.memory_bytes
    if run.cpus and run.numa_id is not None:
        options["cpuset_cpus"] = ",".join(str(c) for c in run.cpus)
        options["cpuset_mems"] = str(run.numa_id)
    if run.gpu_ids:
        options["device_requests"] = [
            DeviceRequest(device_ids=[str(g) for g in run.gpu_ids], capabilities=[["gpu"]])
        ]
    return options
