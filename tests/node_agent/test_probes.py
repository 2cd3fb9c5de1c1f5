"""Probing the machine: NUMA from a /sys tree, the fallbacks, GPUs and usage."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from events.types import NodeHeartbeat, NumaNode
from node_agent.probes import (
    parse_cpulist,
    probe_gpus,
    probe_machine,
    probe_numa,
    probe_temperatures,
    probe_usage,
)

pytestmark = pytest.mark.timeout(30)


def fake_numa_node(sys_root: Path, node: int, cpulist: str, mem_kb: int | None) -> None:
    """One ``node<N>`` directory as the kernel lays it out."""
    directory = sys_root / "devices" / "system" / "node" / f"node{node}"
    directory.mkdir(parents=True)
    (directory / "cpulist").write_text(cpulist + "\n")
    if mem_kb is not None:
        (directory / "meminfo").write_text(
            f"Node {node} MemTotal:       {mem_kb} kB\nNode {node} MemFree:        1024 kB\n"
        )


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0-3", (0, 1, 2, 3)),
        ("4-7,12", (4, 5, 6, 7, 12)),
        ("0,2,4-5\n", (0, 2, 4, 5)),
        ("8-9,1-2", (1, 2, 8, 9)),
        ("", ()),
    ],
)
def test_cpulists_with_ranges_and_commas_are_parsed(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpulist(text) == cpus


def test_two_numa_nodes_are_read_from_the_sys_tree(tmp_path: Path) -> None:
    # Given a /sys tree with two NUMA nodes (and a file that is not a node)
    fake_numa_node(tmp_path, 1, "4-7,12", mem_kb=2048)
    fake_numa_node(tmp_path, 0, "0-3", mem_kb=1024)
    (tmp_path / "devices" / "system" / "node" / "possible").write_text("0-1\n")
    # When the machine is probed against it
    machine = probe_machine(sys_root=tmp_path)
    # Then both nodes are reported in order, with their CPUs and memory in bytes
    assert machine.numa == (
        NumaNode(id=0, cpus=(0, 1, 2, 3), memory_bytes=1024 * 1024),
        NumaNode(id=1, cpus=(4, 5, 6, 7, 12), memory_bytes=2048 * 1024),
    )


def test_a_node_without_meminfo_reports_zero_memory(tmp_path: Path) -> None:
    fake_numa_node(tmp_path, 0, "0-1", mem_kb=None)
    assert probe_numa(tmp_path) == (NumaNode(id=0, cpus=(0, 1), memory_bytes=0),)


def test_without_numa_information_one_node_holds_every_cpu(tmp_path: Path) -> None:
    # Given a /sys without devices/system/node
    machine = probe_machine(sys_root=tmp_path)
    # Then there is one NUMA node 0 with all the cores and all the memory
    cores = os.cpu_count()
    assert machine.cores == cores
    assert machine.memory_bytes > 0
    assert machine.numa == (
        NumaNode(id=0, cpus=tuple(range(machine.cores)), memory_bytes=machine.memory_bytes),
    )


def test_the_registration_event_carries_the_machine(tmp_path: Path) -> None:
    fake_numa_node(tmp_path, 0, "0-1", mem_kb=4)
    machine = probe_machine(sys_root=tmp_path)
    event = machine.registered(node="n1", address="10.0.0.1:8001")
    assert (event.node, event.cores, event.memory_bytes) == (
        "n1",
        machine.cores,
        machine.memory_bytes,
    )
    assert event.numa == machine.numa and event.executors == ("process",)


def test_gpus_are_listed_when_nvml_works_and_absent_otherwise() -> None:
    # Never an error: without a driver the list is empty; with one it matches nvidia-smi.
    gpus = probe_gpus()
    smi = shutil.which("nvidia-smi")
    listed = (
        subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
        if smi
        else ""
    )
    expected = [line for line in listed.splitlines() if line.startswith("GPU ")]
    assert len(gpus) == len(expected)
    assert [gpu.id for gpu in gpus] == list(range(len(gpus)))
    assert all(gpu.name and gpu.memory_bytes > 0 for gpu in gpus)


def test_usage_becomes_a_heartbeat() -> None:
    # Given a first sample (CPU percent needs a previous one)
    probe_usage()
    # When usage is probed with two running tasks
    usage = probe_usage(["t1", "t2"])
    # Then the values are plausible and the heartbeat carries them
    assert 0.0 <= usage.cpu_percent <= 100.0 * (os.cpu_count() or 1)
    assert 0 < usage.memory_used_bytes <= usage.memory_total_bytes
    assert 0.0 < usage.memory_percent <= 100.0
    assert len(usage.gpus) == len(probe_gpus())
    heartbeat = usage.heartbeat("n1")
    assert isinstance(heartbeat, NodeHeartbeat)
    assert heartbeat.running_task_ids == ("t1", "t2")
    assert heartbeat.memory_total_bytes == usage.memory_total_bytes
    assert heartbeat.temperatures == usage.temperatures


def test_temperatures_are_floats_by_sensor_name() -> None:
    temperatures = probe_temperatures()
    assert all(isinstance(value, float) and "/" in name for name, value in temperatures.items())
