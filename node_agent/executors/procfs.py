"""What /proc says about a task's process group: is it stopped (paused)?

A paused process task is its process group after SIGSTOP. A shell in the middle of a
``vfork`` (dash runs simple commands that way) does not stop: it waits in ``D`` until
its child execs or exits, and a child stopped before its exec keeps it there. So a
group is stopped when at least one member is stopped and every other waits in ``D``.
"""

from __future__ import annotations

import os


def group_states(pgid: int) -> set[str]:
    """The state letters of the live (not zombie) processes of process group ``pgid``."""
    states: set[str] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as file:
                data = file.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()  # from the 3rd field (state) on
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            states.add(fields[0].decode())
    return states


def group_stopped(pgid: int) -> bool:
    """Whether process group ``pgid`` is stopped as SIGSTOP leaves it (see the docstring)."""
    states = group_states(pgid)
    return "T" in states and states <= {"T", "D"}
