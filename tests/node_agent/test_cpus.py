"""CPU sets: the kernel's list format, and the allocator's view of held CPUs."""

from __future__ import annotations

import os

import pytest

from node_agent.cpus import CpuAllocator, parse_cpu_list


def test_cpu_lists_read_ranges_and_single_cpus() -> None:
    assert parse_cpu_list("0-2,5") == (0, 1, 2, 5)
    assert parse_cpu_list("3") == (3,)
    assert parse_cpu_list("") == () and parse_cpu_list(None) == ()


def test_held_cpus_are_never_handed_out_until_released() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs two CPUs")
    cpus = CpuAllocator(len(allowed), ())
    # Given a task adopted on the first CPU and the rest taken by new tasks
    cpus.hold("adopted", (allowed[0],))
    others = [cpus.take(f"t{i}", 1, None) for i in range(len(allowed) - 1)]
    assert sorted(cpu for taken in others for cpu in taken) == allowed[1:]
    # Then one more task runs unpinned rather than on the adopted task's CPU
    assert cpus.take("late", 1, None) == ()
    # And once the adopted task ends, its CPU is free again
    cpus.release("adopted")
    assert cpus.take("later", 1, None) == (allowed[0],)
