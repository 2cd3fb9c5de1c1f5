"""What the machine has and how busy it is: cores, memory, NUMA, GPUs, temperatures.

Every probe degrades instead of failing: no ``/sys/devices/system/node`` means one
NUMA node 0 holding every CPU; no NVIDIA driver (or no ``pynvml``) means no GPUs;
no temperature sensors means an empty mapping. All of it is blocking file I/O and
library calls: the agent runs the probes through ``asyncio.to_thread``.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]  # no stubs in the lock
from msgspec import Struct

from events.types import GpuInfo, GpuUsage, NodeHeartbeat, NodeRegistered, NumaNode

SYS_ROOT = Path("/sys")

_MEMTOTAL = re.compile(rb"MemTotal:\s*(\d+)\s*kB")


class MachineInfo(Struct, frozen=True, kw_only=True):
    """The resources of a machine, as reported in ``node.registered``."""

    cores: int
    memory_bytes: int
    numa: tuple[NumaNode, ...]
    gpus: tuple[GpuInfo, ...] = ()

    def registered(
        self,
        *,
        node: str,
        address: str,
        agent_version: str = "",
        executors: tuple[str, ...] = ("process",),
    ) -> NodeRegistered:
        """The ``node.registered`` event announcing this machine as ``node``."""
        return NodeRegistered(
            node=node,
            address=address,
            cores=self.cores,
            memory_bytes=self.memory_bytes,
            numa=self.numa,
            gpus=self.gpus,
            agent_version=agent_version,
            executors=executors,
        )


class Usage(Struct, frozen=True, kw_only=True):
    """The load of a machine at one moment, the body of a heartbeat."""

    cpu_percent: float
    memory_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    gpus: tuple[GpuUsage, ...] = ()
    temperatures: dict[str, float] = {}
    running_task_ids: tuple[str, ...] = ()

    def heartbeat(self, node: str, outbox_depth: int | None = None) -> NodeHeartbeat:
        """The ``node.heartbeat`` event carrying this usage for ``node`` (and how many
        events its outbox holds, for the host's metrics)."""
        return NodeHeartbeat(
            node=node,
            cpu_percent=self.cpu_percent,
            memory_percent=self.memory_percent,
            memory_used_bytes=self.memory_used_bytes,
            memory_total_bytes=self.memory_total_bytes,
            gpus=self.gpus,
            temperatures=self.temperatures,
            running_task_ids=self.running_task_ids,
            outbox_depth=outbox_depth,
        )


def parse_cpulist(text: str) -> tuple[int, ...]:
    """Parse a kernel CPU list such as ``0-3,8,10-11`` into sorted CPU numbers."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        if last:
            cpus.update(range(int(first), int(last) + 1))
        else:
            cpus.add(int(first))
    return tuple(sorted(cpus))


def probe_numa(sys_root: Path = SYS_ROOT) -> tuple[NumaNode, ...]:
    """The NUMA nodes under ``sys_root/devices/system/node``; empty when there are none."""
    base = sys_root / "devices" / "system" / "node"
    found: list[NumaNode] = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return ()
    for entry in entries:
        match = re.fullmatch(r"node(\d+)", entry.name)
        if match is None:
            continue
        try:
            cpus = parse_cpulist((entry / "cpulist").read_text())
        except (OSError, ValueError):
            continue
        found.append(NumaNode(id=int(match[1]), cpus=cpus, memory_bytes=_node_memory(entry)))
    return tuple(sorted(found, key=lambda node: node.id))


def _node_memory(node_dir: Path) -> int:
    """MemTotal of one NUMA node in bytes, 0 when its meminfo is missing or unreadable."""
    try:
        match = _MEMTOTAL.search((node_dir / "meminfo").read_bytes())
    except OSError:
        return 0
    return int(match[1]) * 1024 if match else 0


def probe_machine(sys_root: Path = SYS_ROOT) -> MachineInfo:
    """Cores, memory, NUMA topology and GPUs of this machine."""
    cores = os.cpu_count() or 1
    memory = int(psutil.virtual_memory().total)
    numa = probe_numa(sys_root) or (NumaNode(id=0, cpus=tuple(range(cores)), memory_bytes=memory),)
    return MachineInfo(cores=cores, memory_bytes=memory, numa=numa, gpus=probe_gpus())


def probe_usage(running_task_ids: Iterable[str] = ()) -> Usage:
    """CPU, memory, GPU load and temperatures now.

    CPU percent is measured since the previous call (the first call says 0.0).
    """
    memory = psutil.virtual_memory()
    total = int(memory.total)
    return Usage(
        cpu_percent=float(psutil.cpu_percent(interval=None)),
        memory_percent=float(memory.percent),
        memory_used_bytes=max(0, total - int(memory.available)),
        memory_total_bytes=total,
        gpus=probe_gpu_usage(),
        temperatures=probe_temperatures(),
        running_task_ids=tuple(running_task_ids),
    )


def probe_temperatures() -> dict[str, float]:
    """Sensor temperatures in °C keyed ``chip/label``; empty where psutil has none."""
    sensors = getattr(psutil, "sensors_temperatures", None)
    if sensors is None:
        return {}
    try:
        readings: dict[str, list[Any]] = sensors()
    except Exception:  # a broken hwmon driver must not stop heartbeats
        return {}
    temperatures: dict[str, float] = {}
    for chip, entries in readings.items():
        for index, entry in enumerate(entries):
            label = entry.label or str(index)
            temperatures[f"{chip}/{label}"] = round(float(entry.current), 1)
    return temperatures


@functools.cache
def _nvml() -> ModuleType | None:
    """The initialised pynvml module, or None where NVML is unavailable (tried once)."""
    try:
        import pynvml  # type: ignore[import-untyped,unused-ignore]

        pynvml.nvmlInit()
    except Exception:  # no library, no driver, no device: all mean "no GPUs"
        return None
    return pynvml  # type: ignore[no-any-return,unused-ignore]


def probe_gpus() -> tuple[GpuInfo, ...]:
    """The NVIDIA GPUs NVML reports; empty without a driver or devices."""
    nvml = _nvml()
    if nvml is None:
        return ()
    gpus: list[GpuInfo] = []
    try:
        count = int(nvml.nvmlDeviceGetCount())
        for index in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(
                GpuInfo(
                    id=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                )
            )
    except Exception:  # a GPU that fell off the bus: report what was read
        pass
    return tuple(gpus)


def probe_gpu_usage() -> tuple[GpuUsage, ...]:
    """Utilisation, memory in use and temperature of each GPU; empty without NVML."""
    nvml = _nvml()
    if nvml is None:
        return ()
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception:
        return ()
    usage: list[GpuUsage] = []
    for index in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            utilization = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            used = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
        except Exception:
            continue
        try:
            temperature: float | None = float(
                nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
            )
        except Exception:
            temperature = None
        usage.append(
            GpuUsage(
                id=index,
                utilization_percent=utilization,
                memory_used_bytes=used,
                temperature_c=temperature,
            )
        )
    return tuple(usage)


def _text(value: str | bytes) -> str:
    """NVML strings are bytes in old bindings and str in new ones."""
    return value.decode() if isinstance(value, bytes) else str(value)
