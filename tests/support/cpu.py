"""How busy a process is: its CPU time from /proc, sampled over a window (Linux)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """The CPU time process ``pid`` used so far (user + system, its threads included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(pid: int, window_s: float = 1.0) -> Callable[[], bool | float]:
    """A probe for ``wait_until``: each call returns the share of a CPU ``pid`` used since
    the last window ended (False until ``window_s`` has passed since then)."""
    last = [cpu_seconds(pid), time.monotonic()]

    def probe() -> bool | float:
        cpu, now = cpu_seconds(pid), time.monotonic()
        if now - last[1] < window_s:
            return False
        share = (cpu - last[0]) / (now - last[1])
        last[:] = [cpu, now]
        return share

    return probe
