"""What the REST API returns: tasks and nodes as JSON documents.

Times are RFC 3339 strings in UTC (``2026-11-21T10:00:00.123456Z``) or null, written
by the one formatter every document uses (``replay_tools.points.iso``).
These Structs are the API's contract (docs/api.md); add fields with defaults,
never rename one.
"""

from __future__ import annotations

from collections.abc import Mapping

from msgspec import Struct

from events.types import GpuInfo, GpuUsage, Mount, NumaNode
from projections.durations import durations
from projections.nodes import NodeView
from projections.tasks import TaskView
from replay_tools.points import iso


class TaskOut(Struct, kw_only=True):
    task_id: str
    number: int
    batch_id: str
    task_type: str
    state: str
    command: str
    args: list[str]
    env: dict[str, str]
    cores: int
    memory_bytes: int | None
    gpu_ids: list[int]
    numa_id: int | None
    container: str | None
    privileged: bool
    mounts: list[Mount]
    target: str | None
    node: str | None
    owner: str
    name: str | None
    submitted_at: str | None
    placed_at: str | None
    started_at: str | None
    finished_at: str | None
    exit_code: int | None
    message: str
    pid: int | None
    container_id: str | None
    kill_requested_by: str | None
    queue_wait_s: float | None  # submitted -> placed (projections/durations.py)
    start_delay_s: float | None = None  # placed -> started (defaulted: added to the contract later)
    run_time_s: float | None  # started -> finished
    # True when the caller is neither the owner nor an admin: the command, its arguments,
    # the environment's values and the mounts are left out (docs/security.md).
    redacted: bool = False
    # VPS tasks (vps.ready): where its sshd listens on its node, whether it runs one (None:
    # not reported yet), and the runner's word on it. Left out (None) when redacted.
    ssh_port: int | None = None
    ssh_address: str | None = None
    sshd: bool | None = None
    vps_message: str = ""
    # A job's rank: its job and rank (docs/jobs.md).
    job_id: str | None = None
    rank: int | None = None

    @classmethod
    def of(cls, task: TaskView, private: bool = True) -> TaskOut:
        """The task's document; ``private`` False leaves out what only its owner may see."""
        spec = task.spec
        took = durations(task)
        return cls(
            task_id=task.task_id,
            number=task.number,
            batch_id=spec.batch_id,
            task_type=spec.task_type,
            state=task.state,
            command=spec.command if private else "",
            args=list(spec.args) if private else [],
            env=dict(spec.env) if private else {},
            cores=task.cores if task.node else spec.cores,
            memory_bytes=spec.memory_bytes,
            gpu_ids=list(task.gpu_ids or spec.gpu_ids),
            numa_id=task.numa_id if task.node else spec.numa_id,
            container=spec.container,
            privileged=spec.privileged,
            mounts=list(spec.mounts) if private else [],
            target=spec.target,
            node=task.node,
            owner=spec.owner,
            name=spec.name,
            submitted_at=iso(task.submitted_at_us or None),  # 0: not known
            placed_at=iso(task.placed_at_us),
            started_at=iso(task.started_at_us),
            finished_at=iso(task.finished_at_us),
            exit_code=task.exit_code,
            message=task.message,
            pid=task.pid,
            container_id=task.container_id,
            kill_requested_by=task.kill_requested_by,
            queue_wait_s=took.queue_wait_s,
            start_delay_s=took.start_delay_s,
            run_time_s=took.run_time_s,
            redacted=not private,
            ssh_port=task.ssh_port if private else None,
            ssh_address=task.ssh_address if private else None,
            sshd=task.sshd,
            vps_message=task.vps_message if private else "",
            job_id=spec.job_id,
            rank=spec.rank,
        )


class NodeOut(Struct, kw_only=True):
    name: str
    address: str
    online: bool
    executors: list[str]
    cores: int
    free_cores: int
    memory_bytes: int
    free_memory_bytes: int
    numa: list[NumaNode]
    gpus: list[GpuInfo]
    free_gpus: list[int]
    cpu_percent: float
    memory_percent: float
    memory_used_bytes: int
    gpu_usage: list[GpuUsage]
    temperatures: dict[str, float]
    running_task_ids: list[str]
    running_task_numbers: list[int]
    task_ids: list[str]
    registered_at: str | None
    last_seen: str | None
    # Whether its process tasks may have --mount binds (a runner that can make mount
    # namespaces): what a submitter needs to know before naming it.
    process_mounts: bool = False

    @classmethod
    def of(cls, node: NodeView, tasks: Mapping[str, TaskView] | None = None) -> NodeOut:
        """The node's document; ``tasks`` (the state's) to give its running tasks' numbers."""
        known = tasks or {}
        return cls(
            name=node.name,
            address=node.address,
            online=node.online,
            executors=list(node.executors),
            process_mounts=node.process_mounts,
            cores=node.cores,
            free_cores=node.free_cores,
            memory_bytes=node.memory_bytes,
            free_memory_bytes=node.free_memory_bytes,
            numa=list(node.numa),
            gpus=list(node.gpus),
            free_gpus=node.free_gpus,
            cpu_percent=node.cpu_percent,
            memory_percent=node.memory_percent,
            memory_used_bytes=node.memory_used_bytes,
            gpu_usage=list(node.gpu_usage),
            temperatures=dict(node.temperatures),
            running_task_ids=list(node.running_task_ids),
            running_task_numbers=[
                known[task_id].number for task_id in node.running_task_ids if task_id in known
            ],
            task_ids=list(node.task_ids),
            registered_at=iso(node.registered_at_us or None),  # 0: not known
            last_seen=iso(node.last_seen_us or None),
        )
