"""Which CPUs each task is pinned to.

The agent hands out the CPUs it may use (its own affinity, grouped by NUMA node)
to tasks: ``--cores N`` gets N CPUs no other task of this agent holds, taken from
the targeted NUMA node when there is one. A task adopted after a restart keeps the
CPUs it is pinned to (``hold``; its executor reads them back from the shim's record
or the container's cpuset). When the free CPUs do not suffice (adopted tasks hold
some, or the host's accounting counts a machine this agent shares), the task runs
unpinned rather than crowded onto someone else's CPUs; cgroup/systemd quotas still
bound it where available.
"""

from __future__ import annotations

import os

from events.types import NumaNode


class CpuAllocator:
    """Hands out CPU sets to tasks and takes them back."""

    def __init__(self, cores: int, numa: tuple[NumaNode, ...]) -> None:
        try:
            allowed = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            allowed = set(range(cores))
        self.by_numa = {n.id: [c for c in n.cpus if c in allowed] for n in numa}
        self.all = sorted(allowed)
        self.taken: dict[str, tuple[int, ...]] = {}

    def _busy(self) -> set[int]:
        return {cpu for cpus in self.taken.values() for cpu in cpus}

    def take(self, task_id: str, cores: int, numa_id: int | None) -> tuple[int, ...]:
        """A CPU set of ``cores`` CPUs for the task, or () for "unpinned"."""
        if cores <= 0:
            return ()
        pool = self.by_numa.get(numa_id, []) if numa_id is not None else self.all
        busy = self._busy()
        free = [cpu for cpu in pool if cpu not in busy]
        if len(free) < cores:
            return ()
        chosen = tuple(free[:cores])
        self.taken[task_id] = chosen
        return chosen

    def hold(self, task_id: str, cpus: tuple[int, ...]) -> None:
        """Count a task's CPU set as taken as it is (a task adopted after a restart)."""
        if cpus:
            self.taken[task_id] = cpus

    def release(self, task_id: str) -> None:
        """Give a task's CPUs back."""
        self.taken.pop(task_id, None)


def parse_cpu_list(text: str | None) -> tuple[int, ...]:
    """CPUs from the kernel's list format (``0-2,5``, as cpusets and docker write them)."""
    cpus: list[int] = []
    for part in (text or "").split(","):
        first, _, last = part.strip().partition("-")
        if first.isdigit():
            cpus.extend(range(int(first), int(last if last.isdigit() else first) + 1))
    return tuple(cpus)
