"""Pure placement: which pending tasks go where now, and why.

``plan`` walks the queue in submission order. A task that names its node
(``--target``) is considered there only; any other task goes to the node the
policy prefers among those with room. Accounting is exact: the node views
already count every task placed and not yet final (assigning, running,
paused), and ``plan`` adds what it places in the same pass, so nothing is ever
double-allocated. A task that does not fit now stays pending; later tasks that
do fit may go first (backfill), so one large task does not stall the queue.
Offline nodes get nothing, and neither does a node that runs tasks as their owners
(``[runner] run_tasks_as = "owner"``) and has no account of the task's owner. A VPS
task goes only to a node that can run one (``vps_refusal``): a Docker executor, and
tasks run as the runner's user (a VPS is a root container with sshd).

Every placement comes out as a ``task.placed`` event carrying the policy, the
reason and the nodes rejected with theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from events.types import Rejection, TaskPlaced
from projections.cluster import ClusterState
from projections.nodes import NodeView
from projections.tasks import TaskView

Policy = Literal["first-fit", "least-loaded", "round-robin"]
POLICIES: tuple[Policy, ...] = ("first-fit", "least-loaded", "round-robin")


@dataclass
class _Room:
    """What is still free on a node during one planning pass."""

    cores: int
    memory: int | None  # None: the node did not report memory; not a constraint
    gpus: set[int]
    numa_cores: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, node: NodeView) -> _Room:
        return cls(
            cores=node.free_cores,
            memory=node.free_memory_bytes if node.memory_bytes else None,
            gpus=set(node.free_gpus),
            numa_cores={
                numa.id: len(numa.cpus) - node.allocated_cores_by_numa.get(numa.id, 0)
                for numa in node.numa
            },
        )

    def refusal(self, task: TaskView) -> str | None:
        spec = task.spec
        if spec.cores > self.cores:
            return f"{_cores(self.cores)} free, needs {spec.cores}"
        if self.memory is not None and spec.memory_bytes and spec.memory_bytes > self.memory:
            return f"{self.memory} bytes of memory free, needs {spec.memory_bytes}"
        busy = [g for g in spec.gpu_ids if g not in self.gpus]
        if busy:
            return f"GPU {busy} in use"
        if spec.numa_id is not None:
            free = self.numa_cores.get(spec.numa_id)
            if free is None:
                return f"no NUMA node {spec.numa_id}"
            if spec.cores > free:
                return f"{_cores(free)} free on NUMA node {spec.numa_id}, needs {spec.cores}"
        return None

    def take(self, task: TaskView) -> None:
        spec = task.spec
        self.cores -= spec.cores
        if self.memory is not None and spec.memory_bytes:
            self.memory -= spec.memory_bytes
        self.gpus -= set(spec.gpu_ids)
        if spec.numa_id is not None:
            self.numa_cores[spec.numa_id] -= spec.cores


def vps_refusal(node: NodeView) -> str | None:
    """Why ``node`` can never run a VPS task; None if it can.

    A VPS is a container whose sshd runs as root: a node without the Docker executor
    has nowhere to run it, and a node that runs tasks as their owners
    (``run_tasks_as = "owner"``) keeps users from being root on it.
    """
    if node.run_tasks_as == "owner":
        return f"node {node.name} runs tasks as their owners (run_tasks_as = owner): no VPS there"
    if "docker" not in node.executors:
        return f"node {node.name} has no Docker executor: a VPS is a container"
    return None


class Scheduler:
    """Places pending tasks by a policy; keeps only the round-robin cursor between passes."""

    def __init__(self, policy: Policy = "first-fit") -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.policy: Policy = policy
        self._cursor = 0

    def plan(self, state: ClusterState, incoming: Sequence[TaskView] = ()) -> list[TaskPlaced]:
        """Placements for the pending tasks that fit now, in queue order.

        ``incoming`` are tasks being submitted right now, not in the state yet: they
        queue after every pending task, so placing them in the same commit as their
        submission changes no order.
        """
        names = sorted(name for name, node in state.nodes.items() if node.online)
        rooms = {name: _Room.of(state.nodes[name]) for name in names}
        placements: list[TaskPlaced] = []
        queue = [state.tasks[task_id] for task_id in state.pending]
        for task in [*queue, *incoming]:
            target = task.spec.target
            if target is not None:
                node_name = target.split(":", 1)[0]
                if node_name not in rooms:
                    continue  # offline (or gone): the task waits for its node
                candidates = [node_name]
            else:
                candidates = self._order(names, rooms)
            rejected: list[Rejection] = []
            for name in candidates:
                node = state.nodes[name]
                no_account = node.account_refusal(task.spec.owner)
                no_vps = vps_refusal(node) if task.spec.task_type == "vps" else None
                refusal = no_account or no_vps or rooms[name].refusal(task)
                if refusal is None:
                    rooms[name].take(task)
                    if self.policy == "round-robin" and target is None:
                        self._cursor = names.index(name) + 1
                    placements.append(self._placed(task, name, target, rejected))
                    break
                rejected.append(Rejection(node=name, reason=refusal))
        return placements

    def _order(self, names: list[str], rooms: dict[str, _Room]) -> list[str]:
        if self.policy == "least-loaded":
            return sorted(names, key=lambda n: (-rooms[n].cores, n))
        if self.policy == "round-robin" and names:
            start = self._cursor % len(names)
            return names[start:] + names[:start]
        return names

    def _placed(
        self, task: TaskView, node: str, target: str | None, rejected: list[Rejection]
    ) -> TaskPlaced:
        spec = task.spec
        if target is not None:
            reason = f"targeted {target}"
        elif rejected:
            reason = f"{self.policy}: first node with room after {len(rejected)} without"
        else:
            reason = f"{self.policy}: preferred node had room"
        return TaskPlaced(
            task_id=task.task_id,
            node=node,
            cores=spec.cores,
            memory_bytes=spec.memory_bytes,
            gpu_ids=spec.gpu_ids,
            numa_id=spec.numa_id,
            policy=self.policy,
            reason=reason,
            rejected=tuple(rejected),
        )


def _cores(count: int) -> str:
    return f"{count} core" if count == 1 else f"{count} cores"
