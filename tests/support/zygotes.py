"""Stopping the shim zygotes a test started (they outlive agents by design, 10 idle minutes).

A zygote is found by its address, which the executor derives from its state directory
(``node_agent.executors.zygote.Zygote``): every directory under a test's ``tmp_path`` is
a candidate state directory, and a live ``--zygote ADDRESS`` process for one is stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from node_agent.executors.zygote import Zygote


def _zygotes() -> dict[str, list[int]]:
    """Address -> pids of every live zygote process, and of the shims it forked (a forked
    shim keeps the zygote's command line: one address may name several processes, and
    keeping only one of them let the zygote itself live on)."""
    found: dict[str, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--zygote" in argv and argv.index(b"--zygote") + 1 < len(argv):
            found.setdefault(argv[argv.index(b"--zygote") + 1].decode(), []).append(int(name))
    return found


def stop_zygotes_under(root: Path) -> int:
    """SIGTERM the zygotes serving a state directory under ``root``; how many."""
    live = _zygotes()
    if not live:
        return 0
    stopped = 0
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        for pid in live.get(Zygote(directory).address, ()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                stopped += 1
    return stopped


def kill_recorded_tasks(data_dir: Path) -> None:
    """SIGKILL every task process and shim the runners under ``data_dir`` recorded (as a
    reboot would): the records are ``runner-*/process/*.run``."""
    for record in data_dir.glob("runner-*/process/*.run"):
        with contextlib.suppress(Exception):
            fields = dict(
                line.split(" ", 1) for line in record.read_text().splitlines() if " " in line
            )
            # The shim first: once its task died, it would write the task's exit record
            # (as a reboot would not), racing a test that removes the state dir.
            for key in ("shim_pid", "pid"):
                if key in fields:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(int(fields[key]), signal.SIGKILL)
