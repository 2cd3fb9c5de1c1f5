"""Interactive shells in environment containers: a TTY exec attached to a raw socket.

The route (routes/environments.py) bridges the socket to the user's websocket. The
attach hijacks its HTTP connection, so each shell gets a Docker client of its own:
a later call on the shared client (a resize) could otherwise be sent on it and hang.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

from control_plane.environments import Environments
from control_plane.errors import Conflict


@dataclass
class Shell:
    """An interactive exec in an environment's container, attached to a raw socket."""

    exec_id: str
    sock: Any  # the engine's socket wrapper (kept so it is not garbage collected)
    raw: Any  # the underlying socket.socket, non-blocking
    client: Any  # the Docker client whose connection the attach took over


def open_shell(envs: Environments, name: str, rows: int, cols: int, term: str) -> Shell:
    """Start an interactive shell (bash when the image has it) with a TTY."""
    container = envs.container(name)
    if container.status != "running":
        raise Conflict(
            "name",
            f"environment container {name!r} is {container.status}: start it first"
            f" (hakuriver docker start-container {name})",
        )
    api = envs.engine().api
    exec_id = api.exec_create(
        container.id,
        ["/bin/sh", "-c", "if [ -x /bin/bash ]; then exec /bin/bash -l; fi; exec /bin/sh -l"],
        stdin=True,
        tty=True,
        environment={"TERM": term or "xterm"},
    )["Id"]
    # The attach hijacks its HTTP connection: a client of its own keeps that
    # connection out of the shared pool, where a later call (a resize) could pick it.
    import docker  # the host imports the SDK only when a shell needs it (start-up time)

    own = docker.from_env(timeout=60)
    sock = own.api.exec_start(exec_id, tty=True, socket=True)
    raw = getattr(sock, "_sock", sock)
    with contextlib.suppress(Exception):
        api.exec_resize(exec_id, height=rows, width=cols)
    raw.setblocking(False)
    return Shell(exec_id=exec_id, sock=sock, raw=raw, client=own)


def resize(envs: Environments, shell: Shell, rows: int, cols: int) -> None:
    """Resize the shell's terminal."""
    envs.engine().api.exec_resize(shell.exec_id, height=rows, width=cols)


def finish_shell(envs: Environments, shell: Shell, ended: bool) -> int | None:
    """Close the socket, hang up a shell still running; its exit code when it ended."""
    with contextlib.suppress(Exception):
        shell.raw.close()
    with contextlib.suppress(Exception):
        shell.client.close()
    api = envs.engine().api
    info = api.exec_inspect(shell.exec_id)
    deadline = time.monotonic() + 5
    while ended and info.get("Running") and time.monotonic() < deadline:
        time.sleep(0.02)  # the output closed: the engine records the exit a moment later
        info = api.exec_inspect(shell.exec_id)
    if info.get("Running") and info.get("Pid"):
        # The client went away: hang the shell up like a closed terminal would.
        with contextlib.suppress(OSError):
            os.kill(int(info["Pid"]), 1)
        return None
    code = info.get("ExitCode")
    return int(code) if code is not None else None
