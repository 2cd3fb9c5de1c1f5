"""What is free on a node during one planning pass, and whether a task could ever fit there.

The scheduler (``scheduler.py``) starts each pass from the node views' free resources and
takes from a ``Room`` what it places, so two placements of one pass never share a core
or a GPU. A GPU asked for by count (``TaskSpec.gpu_count``, a job's ``accelerators``)
is picked here: the lowest free ids of the model asked for (``gpu_model_matches``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from events.types import TaskSpec
from projections.nodes import NodeView

_WORDS = re.compile(r"[a-z0-9]+")


def gpu_model_matches(model: str | None, name: str) -> bool:
    """Whether a GPU the node reports as ``name`` is of ``model`` (a job file's; None: any).

    Both are cut into lowercase runs of letters and digits; the GPU is of the model when
    every word of the model is a word of the name, or two adjacent words of it written
    together. So "V100" is a "Tesla V100-SXM2-16GB", "A100-80GB" an "NVIDIA A100-SXM4-80GB"
    and "RTX4090" an "NVIDIA GeForce RTX 4090", while "A10" is no "A100" and "V100" no
    "V100S": a plain substring test would mix those up. Case never matters.
    """
    if model is None:
        return True
    words = _WORDS.findall(name.lower())
    known = {*words, *(a + b for a, b in pairwise(words))}
    wanted = _WORDS.findall(model.lower())
    return bool(wanted) and all(word in known for word in wanted)


def gpus_text(count: int, model: str | None) -> str:
    """``2 V100 GPUs``, ``1 GPU``: a count of GPUs of a model, for reasons."""
    kind = f"{model} GPU" if model else "GPU"
    return f"{count} {kind}" if count == 1 else f"{count} {kind}s"


def cores_text(count: int) -> str:
    """``1 core``, ``4 cores``."""
    return f"{count} core" if count == 1 else f"{count} cores"


def never_holds(node: NodeView, spec: TaskSpec) -> str | None:
    """Why ``node`` could not hold the task even when idle (its size); None if it could."""
    if spec.cores > node.cores:
        return f"has {cores_text(node.cores)}"
    if spec.memory_bytes and node.memory_bytes and spec.memory_bytes > node.memory_bytes:
        return f"has {node.memory_bytes} bytes of memory"
    ids = {gpu.id for gpu in node.gpus}
    if any(g not in ids for g in spec.gpu_ids):
        return f"has no GPU {sorted(set(spec.gpu_ids) - ids)}"
    if spec.gpu_count:
        matching = [g for g in node.gpus if gpu_model_matches(spec.gpu_model, g.name)]
        if len(matching) < spec.gpu_count:
            return f"has {gpus_text(len(matching), spec.gpu_model)}"
    if spec.numa_id is not None and spec.cores > node.numa_cores(spec.numa_id):
        return f"has {cores_text(node.numa_cores(spec.numa_id))} on NUMA node {spec.numa_id}"
    return None


@dataclass
class Room:
    """What is still free on a node during one planning pass."""

    cores: int
    memory: int | None  # None: the node did not report memory; not a constraint
    gpus: set[int]
    numa_cores: dict[int, int] = field(default_factory=dict)
    gpu_names: dict[int, str] = field(default_factory=dict)
    # model asked for -> the node's GPU ids of that model, lowest first (filled on demand)
    _models: dict[str | None, list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, node: NodeView) -> Room:
        return cls(
            cores=node.free_cores,
            memory=node.free_memory_bytes if node.memory_bytes else None,
            gpus=set(node.free_gpus),
            numa_cores={
                numa.id: len(numa.cpus) - node.allocated_cores_by_numa.get(numa.id, 0)
                for numa in node.numa
            },
            gpu_names={gpu.id: gpu.name for gpu in node.gpus},
        )

    def of_model(self, model: str | None) -> list[int]:
        """The node's GPU ids of ``model`` (free or not), lowest first."""
        ids = self._models.get(model)
        if ids is None:
            ids = self._models[model] = sorted(
                g for g, name in self.gpu_names.items() if gpu_model_matches(model, name)
            )
        return ids

    def free_of_model(self, spec: TaskSpec) -> list[int]:
        """The free GPUs a count of ``spec`` may take: of its model, not named by it."""
        return [
            g for g in self.of_model(spec.gpu_model) if g in self.gpus and g not in spec.gpu_ids
        ]

    def refusal(self, spec: TaskSpec) -> str | None:
        """Why the task does not fit in what is free now; None if it does."""
        if spec.cores > self.cores:
            return f"{cores_text(max(self.cores, 0))} free, needs {spec.cores}"
        if self.memory is not None and spec.memory_bytes and spec.memory_bytes > self.memory:
            return f"{max(self.memory, 0)} bytes of memory free, needs {spec.memory_bytes}"
        busy = [g for g in spec.gpu_ids if g not in self.gpus]
        if busy:
            return f"GPU {busy} in use"
        if spec.gpu_count:
            free = len(self.free_of_model(spec))
            if free < spec.gpu_count:
                return f"{gpus_text(free, spec.gpu_model)} free, needs {spec.gpu_count}"
        if spec.numa_id is not None:
            left = self.numa_cores.get(spec.numa_id)
            if left is None:
                return f"no NUMA node {spec.numa_id}"
            if spec.cores > left:
                return f"{cores_text(left)} free on NUMA node {spec.numa_id}, needs {spec.cores}"
        return None

    def pick_gpus(self, spec: TaskSpec) -> tuple[int, ...]:
        """The GPUs the task gets: those it names, then the lowest free ones of its model."""
        counted = self.free_of_model(spec)[: spec.gpu_count] if spec.gpu_count else []
        return (*spec.gpu_ids, *counted)

    def take(self, spec: TaskSpec, gpu_ids: tuple[int, ...]) -> None:
        """Account for a placement of ``spec`` given ``gpu_ids``."""
        self.cores -= spec.cores
        if self.memory is not None and spec.memory_bytes:
            self.memory -= spec.memory_bytes
        self.gpus -= set(gpu_ids)
        if spec.numa_id is not None:
            self.numa_cores[spec.numa_id] -= spec.cores

    def give_back(
        self, cores: int, memory_bytes: int | None, gpu_ids: Sequence[int], numa_id: int | None
    ) -> None:
        """Count as free what a task ending in the same commit holds (the inverse of the
        fold's allocation of its placement: projections/cluster.py ``_release``)."""
        self.cores += cores
        if self.memory is not None and memory_bytes:
            self.memory += memory_bytes
        self.gpus |= {g for g in gpu_ids if g in self.gpu_names}  # (a GPU the node still has)
        if numa_id is not None and numa_id in self.numa_cores:
            self.numa_cores[numa_id] += cores

    def hold(self, spec: TaskSpec) -> None:
        """Keep a waiting job's rank share of this node from later work (a reservation):
        its cores and memory, even those still in use (the room may go below zero: then
        nothing later fits), and whatever of its GPUs are free now."""
        self.take(spec, tuple(g for g in self.pick_gpus(spec) if g in self.gpus))
