"""Fixtures of the chaos suite: the faults, each undone in its finalizer even on failure.

Faults need root (network namespaces, mounts): without it a test is skipped and says why.
CI runs as root, so there they run. Long variants carry ``@pytest.mark.chaos_long`` and
run with ``make chaos`` only (docs/chaos.md).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import netns as netns_support
from support.chaos import Ledger
from support.mounts import SlowFs, mount_unavailable, slowfs_unavailable
from support.netns import NetworkNamespace
from support.small_disk import Filler, small_disk


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    """The file every task of the run appends its id to."""
    return Ledger(tmp_path / "ledger")


@pytest.fixture
def network_namespace() -> Iterator[NetworkNamespace]:
    """A fresh namespace with a veth link to this one; removed afterwards."""
    reason = netns_support.unavailable()
    if reason:
        pytest.skip(reason)
    namespace = NetworkNamespace()
    try:
        yield namespace.create()
    finally:
        namespace.close()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[Path, int], Filler]]:
    """Mounts small tmpfs file systems (``tmpfs(path, 16)``, MiB) to fill and free;
    unmounted afterwards."""
    reason = mount_unavailable()
    if reason:
        pytest.skip(reason)
    with contextlib.ExitStack() as mounts:

        def mount(path: Path, mib: int) -> Filler:
            return Filler(mounts.enter_context(small_disk(path, mib)))

        yield mount


@pytest.fixture
def slow_disk(tmp_path: Path) -> Iterator[Callable[[Path, float], SlowFs]]:
    """Mounts a slow FUSE passthrough (``slow_disk(path, delay_ms)``); unmounted afterwards."""
    reason = slowfs_unavailable()
    if reason:
        pytest.skip(reason)
    made: list[SlowFs] = []

    def mount(path: Path, delay_ms: float) -> SlowFs:
        backing = tmp_path / f"backing-{len(made)}"
        log = tmp_path / f"slowfs-{len(made)}.log"
        made.append(SlowFs(backing, path, delay_ms=delay_ms, log=log).mount())
        return made[-1]

    try:
        yield mount
    finally:
        for fs in reversed(made):
            fs.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tag the whole directory ``chaos`` (``-m chaos`` selects the fast and long variants),
    # and give each test room under a loaded CI (real processes starting on two cores):
    # 240 s unless it says otherwise (the long ones do).
    for item in items:
        if "tests/chaos/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.chaos)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(240))
