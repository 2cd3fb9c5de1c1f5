"""NodeView: a node's resources, liveness and what is allocated on it."""

from __future__ import annotations

from msgspec import Struct, field

from events.types import GpuInfo, GpuUsage, NumaNode, TaskSpec


class NodeView(Struct, kw_only=True, gc=False):
    """A node as the scheduler and users see it."""

    name: str
    address: str = ""
    online: bool = True
    cores: int = 0
    memory_bytes: int = 0
    numa: tuple[NumaNode, ...] = ()
    gpus: tuple[GpuInfo, ...] = ()
    agent_version: str = ""
    executors: tuple[str, ...] = ()
    # ``[runner] run_tasks_as`` of its agent; in "owner" mode, its Unix accounts (None:
    # not listed, too many; then only the node itself can refuse an owner).
    run_tasks_as: str = "runner"
    accounts: frozenset[str] | None = None
    process_mounts: bool = False  # its process tasks can have --mount binds
    registered_at_us: int = 0
    last_seen_us: int = 0
    # From the latest heartbeat
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    memory_used_bytes: int = 0
    gpu_usage: tuple[GpuUsage, ...] = ()
    temperatures: dict[str, float] = field(default_factory=dict)
    running_task_ids: tuple[str, ...] = ()
    heartbeats: int = 0
    # The agent's outbox depth (None: its agent does not report it), and the latest
    # heartbeat's delay from the node's clock to the log's (transit, queueing and any
    # clock difference between the two machines), in microseconds.
    outbox_depth: int | None = None
    link_lag_us: int | None = None
    # Allocations by tasks placed here and not yet final or lost
    allocated_cores: int = 0
    allocated_memory_bytes: int = 0
    allocated_gpus: list[int] = field(default_factory=list)
    allocated_cores_by_numa: dict[int, int] = field(default_factory=dict)
    task_ids: list[str] = field(default_factory=list)

    @property
    def free_cores(self) -> int:
        """Cores not reserved by any task."""
        return self.cores - self.allocated_cores

    @property
    def free_memory_bytes(self) -> int:
        """Memory not reserved by any task."""
        return self.memory_bytes - self.allocated_memory_bytes

    @property
    def free_gpus(self) -> list[int]:
        """GPU ids not reserved by any task."""
        taken = set(self.allocated_gpus)
        return [gpu.id for gpu in self.gpus if gpu.id not in taken]

    def account_refusal(self, owner: str) -> str | None:
        """Why this node can never run ``owner``'s tasks (no such account); None if it can."""
        if self.run_tasks_as != "owner" or self.accounts is None or owner in self.accounts:
            return None
        return f"no account {owner!r} on node {self.name} (run_tasks_as = owner)"

    def cannot_run(self, spec: TaskSpec) -> str | None:
        """Why this node can never run ``spec`` whatever its load (no account for its
        owner, no binds for a process task's mounts, no engine for a container task);
        None if it could. Resources are the rooms' to say (control_plane/rooms.py)."""
        return (
            self.account_refusal(spec.owner)
            or self.mounts_refusal(spec)
            or self.container_refusal(spec)
        )

    def container_refusal(self, spec: TaskSpec) -> str | None:
        """Why this node can never run ``spec`` because it is a container task and the
        node's runner has no Docker executor (no engine there); None if it can. With
        Docker the default environment, a mixed cluster's nodes without an engine must
        not take the tasks that name no ``--container``."""
        if spec.container is None or "docker" in self.executors:
            return None
        return (
            f"node {self.name} has no Docker engine (executors: "
            f"{', '.join(self.executors) or 'none'}): a container task cannot run there"
        )

    def mounts_refusal(self, spec: TaskSpec) -> str | None:
        """Why this node can never run ``spec`` because of its mounts: a process task
        (no container) with ``--mount`` binds on a node whose runner cannot make mount
        namespaces (not root, or the kernel refuses). None if it can."""
        if spec.container is not None or not spec.mounts or self.process_mounts:
            return None
        return (
            f"node {self.name} cannot give a process task (--container NULL) its --mount"
            " binds (its runner is not root, or cannot make mount namespaces)"
        )

    def numa_cores(self, numa_id: int) -> int:
        """How many CPUs NUMA node ``numa_id`` has (0 if unknown)."""
        for numa in self.numa:
            if numa.id == numa_id:
                return len(numa.cpus)
        return 0
