"""A simulated cluster producing valid event histories (only legal transitions).

Used by the property tests (Python fold == SQL projection, snapshot + tail ==
full fold) and by the benchmarks' "realistic mix": nodes registering and
heartbeating, tasks submitted, placed without overcommit, started, paused,
killed, finished, and nodes going offline with their tasks lost.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from events.envelope import NewEvent, new_event
from events.ids import new_id
from events.types import (
    AnyEvent,
    GpuInfo,
    GpuUsage,
    NodeHeartbeat,
    NodeOffline,
    NodeOnline,
    NodeRegistered,
    NumaNode,
    Rejection,
    TaskDispatched,
    TaskFinished,
    TaskKillRequested,
    TaskLost,
    TaskPaused,
    TaskPlaced,
    TaskReconnected,
    TaskResumed,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
    TaskUnreachable,
)

GIB = 1 << 30


class _Node:
    def __init__(self, name: str, cores: int, memory: int, gpus: int) -> None:
        self.name, self.cores, self.memory, self.gpus = name, cores, memory, gpus
        self.used_cores = 0
        self.used_memory = 0
        self.used_gpus: set[int] = set()
        self.online = True


class _Task:
    def __init__(self, task_id: str, cores: int, memory: int, gpus: int) -> None:
        self.id, self.cores, self.memory, self.want_gpus = task_id, cores, memory, gpus
        self.state = "pending"
        self.node: _Node | None = None
        self.gpu_ids: tuple[int, ...] = ()
        self.dispatched = False


class ClusterSimulation:
    """Generates a valid, realistic event history from a seeded random source."""

    def __init__(
        self,
        rng: random.Random,
        *,
        nodes: int = 4,
        heartbeat_share: float = 0.5,
        offline_chance: float = 0.002,
        max_active: int = 200,
        numbered_after: int | None = None,
    ) -> None:
        # Submissions after this many carry their task number, as the host records them
        # (None: none does, as in logs written before task numbers existed).
        self.numbered_after = numbered_after
        self.rng = rng
        self.max_active = max_active
        self.heartbeat_share = heartbeat_share
        self.offline_chance = offline_chance
        self.nodes = [
            _Node(
                f"node{i}",
                rng.choice([4, 8, 16, 32]),
                rng.choice([8, 16, 64]) * GIB,
                rng.choice([0, 0, 2, 4]),
            )
            for i in range(nodes)
        ]
        self.tasks: dict[str, _Task] = {}
        self.active: list[_Task] = []

    def _emit(self, event: AnyEvent, source: str) -> NewEvent:
        return new_event(event, source=source)

    def _register(self, node: _Node) -> NewEvent:
        half = node.cores // 2
        return self._emit(
            NodeRegistered(
                node=node.name,
                address=f"127.0.0.{len(node.name)}",
                cores=node.cores,
                memory_bytes=node.memory,
                numa=(
                    NumaNode(id=0, cpus=tuple(range(half)), memory_bytes=node.memory // 2),
                    NumaNode(
                        id=1, cpus=tuple(range(half, node.cores)), memory_bytes=node.memory // 2
                    ),
                ),
                gpus=tuple(
                    GpuInfo(id=g, name="Sim GPU", memory_bytes=24 * GIB) for g in range(node.gpus)
                ),
                agent_version="sim",
            ),
            node.name,
        )

    def events(self, task_count: int) -> Iterator[NewEvent]:
        """Yield events until ``task_count`` tasks were submitted and all have ended."""
        rng = self.rng
        for node in self.nodes:
            yield self._register(node)
        submitted = 0
        while submitted < task_count or self.active:
            roll = rng.random()
            if roll < self.heartbeat_share:
                node = rng.choice(self.nodes)
                if node.online:
                    yield self._heartbeat(node)
                continue
            if rng.random() < self.offline_chance:
                yield from self._node_flaps(rng.choice(self.nodes))
                continue
            if submitted < task_count and (
                not self.active or (len(self.active) < self.max_active and rng.random() < 0.3)
            ):
                submitted += 1
                yield self._submit()
                continue
            task = rng.choice(self.active)
            yield from self._advance(task)

    def _heartbeat(self, node: _Node) -> NewEvent:
        running = tuple(t.id for t in self.active if t.node is node and t.state != "pending")
        return self._emit(
            NodeHeartbeat(
                node=node.name,
                cpu_percent=round(self.rng.uniform(0, 100), 1),
                memory_percent=round(self.rng.uniform(0, 100), 1),
                memory_used_bytes=node.used_memory,
                memory_total_bytes=node.memory,
                gpus=tuple(GpuUsage(id=g, utilization_percent=50.0) for g in range(node.gpus)),
                temperatures={"cpu": 55.0},
                running_task_ids=running[:50],
            ),
            node.name,
        )

    def _submit(self) -> NewEvent:
        rng = self.rng
        task = _Task(
            new_id(),
            rng.choice([1, 1, 2, 4]),
            rng.choice([0, GIB, 4 * GIB]),
            rng.choice([0, 0, 0, 1]),
        )
        self.tasks[task.id] = task
        self.active.append(task)
        spec = TaskSpec(
            command="python",
            args=("train.py", f"--seed={rng.randint(0, 99)}"),
            env={"EXPERIMENT": "sim"},
            cores=task.cores,
            memory_bytes=task.memory or None,
            container=rng.choice([None, "default"]),
            batch_id=new_id(),
            owner=rng.choice(["alice", "bob", "carol"]),
        )
        ordinal = len(self.tasks)
        numbered = self.numbered_after is not None and ordinal > self.numbered_after
        submitted = TaskSubmitted(task_id=task.id, spec=spec, number=ordinal if numbered else 0)
        return self._emit(submitted, "host")

    def _fits(self, task: _Task, node: _Node) -> bool:
        return (
            node.online
            and node.cores - node.used_cores >= task.cores
            and node.memory - node.used_memory >= task.memory
            and node.gpus - len(node.used_gpus) >= task.want_gpus
        )

    def _release(self, task: _Task) -> None:
        node = task.node
        if node is not None and task.state in ("assigning", "running", "paused", "unknown"):
            node.used_cores -= task.cores
            node.used_memory -= task.memory
            node.used_gpus -= set(task.gpu_ids)

    def _end(self, task: _Task, state: str) -> None:
        self._release(task)
        task.state = state
        self.active.remove(task)

    def _advance(self, task: _Task) -> Iterator[NewEvent]:
        rng = self.rng
        if task.state == "pending":
            fitting = [n for n in self.nodes if self._fits(task, n)]
            if rng.random() < 0.02:
                yield self._emit(TaskKillRequested(task_id=task.id, requested_by="alice"), "host")
                self._end(task, "killed")
                yield self._emit(TaskFinished(task_id=task.id, state="killed"), "host")
                return
            if not fitting:
                return
            node = rng.choice(fitting)
            free = sorted(set(range(node.gpus)) - node.used_gpus)
            task.gpu_ids = tuple(free[: task.want_gpus])
            task.node, task.state = node, "assigning"
            node.used_cores += task.cores
            node.used_memory += task.memory
            node.used_gpus |= set(task.gpu_ids)
            yield self._emit(
                TaskPlaced(
                    task_id=task.id,
                    node=node.name,
                    cores=task.cores,
                    memory_bytes=task.memory or None,
                    gpu_ids=task.gpu_ids,
                    numa_id=rng.choice([None, None, 0]),
                    policy="first-fit",
                    reason="first node with room",
                    rejected=tuple(
                        Rejection(node=n.name, reason="no room")
                        for n in self.nodes
                        if n is not node and not self._fits(task, n)
                    ),
                ),
                "host",
            )
            return
        node = task.node
        assert node is not None
        if task.state == "assigning":
            if not task.dispatched:
                task.dispatched = True
                yield self._emit(TaskDispatched(task_id=task.id, node=node.name), "host")
            else:
                task.state = "running"
                yield self._emit(
                    TaskStarted(task_id=task.id, node=node.name, pid=rng.randint(100, 99999)),
                    node.name,
                )
            return
        roll = rng.random()
        if task.state == "running" and roll < 0.05:
            task.state = "paused"
            yield self._emit(TaskPaused(task_id=task.id), node.name)
        elif task.state == "paused":
            task.state = "running"
            yield self._emit(TaskResumed(task_id=task.id), node.name)
        elif roll < 0.1:
            yield self._emit(TaskKillRequested(task_id=task.id, requested_by="bob"), "host")
            self._end(task, "killed")
            yield self._emit(
                TaskFinished(task_id=task.id, state="killed", exit_code=-15, node=node.name),
                node.name,
            )
        else:
            state = rng.choice(["completed", "completed", "completed", "failed", "killed_oom"])
            code = {"completed": 0, "failed": 1, "killed_oom": 137}[state]
            self._end(task, state)
            yield self._emit(
                TaskFinished(task_id=task.id, state=state, exit_code=code, node=node.name),  # type: ignore[arg-type]
                node.name,
            )

    def _node_flaps(self, node: _Node) -> Iterator[NewEvent]:
        """The node goes silent, its tasks become unknown; it comes back and each is
        reconnected, found gone (lost), reported ended, or was killed meanwhile."""
        if not node.online:
            return
        rng = self.rng
        node.online = False
        yield self._emit(NodeOffline(node=node.name), "host")
        silent = [t for t in self.active if t.node is node and t.state != "pending"]
        was = {t.id: t.state for t in silent}
        for task in silent:
            yield self._emit(
                TaskUnreachable(task_id=task.id, node=node.name, was=task.state),  # type: ignore[arg-type]
                "host",
            )
            task.state = "unknown"
        killed = [t for t in silent if rng.random() < 0.1]
        for task in killed:
            yield self._emit(TaskKillRequested(task_id=task.id, requested_by="carol"), "host")
            yield self._emit(TaskLost(task_id=task.id, node=node.name), "host")
            self._end(task, "lost")
        node.online = True
        yield self._emit(NodeOnline(node=node.name), "host")
        yield self._register(node)
        for task in silent:
            if task in killed:
                if rng.random() < 0.3:  # the node's late, true report of the kill
                    yield self._emit(
                        TaskFinished(task_id=task.id, state="killed", node=node.name), node.name
                    )
                continue
            roll = rng.random()
            if roll < 0.6:
                task.state = was[task.id]
                yield self._emit(
                    TaskReconnected(
                        task_id=task.id,
                        node=node.name,
                        state=task.state,  # type: ignore[arg-type]
                        unreachable_s=1.5,
                    ),
                    "host",
                )
            elif roll < 0.8:
                yield self._emit(TaskLost(task_id=task.id, node=node.name), "host")
                self._end(task, "lost")
                if rng.random() < 0.3:  # the node's late, true report
                    yield self._emit(
                        TaskFinished(
                            task_id=task.id, state="completed", exit_code=0, node=node.name
                        ),
                        node.name,
                    )
            else:  # its final report got through
                self._end(task, "completed")
                yield self._emit(
                    TaskFinished(task_id=task.id, state="completed", exit_code=0, node=node.name),
                    node.name,
                )
