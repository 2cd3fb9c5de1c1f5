"""VPS tasks: a persistent container a user reaches over SSH (or ``hakuriver vps shell``).

A VPS is a container task of the Docker executor (node_agent/executors/docker.py) with
its own shape, made here:

- named ``hakuriver-vps-<id>``, labelled like every task container plus ``hakuriver.vps``,
  restarted by the engine (``unless-stopped``) until it is killed;
- its port 22 published on the runner's own address only, the host port chosen by the
  engine (it may change when the engine restarts the container; the agent reports it
  again, ``vps.ready``);
- the user's public keys in a file of the runner's private state directory, bind-mounted
  read-only at ``KEYS_PATH``: the keys are data, never part of a command line;
- run as the container's root (sshd needs it), whatever the image's ``USER``;
- its command a fixed script (``VPS_SCRIPT``, no user data in it): start the image's
  sshd with options pointing at the mounted keys; without one, install openssh when
  ``[vps] install_sshd`` says so (``INSTALL_SSHD_ENV``), else print ``NO_SSHD_MARKER``
  and stay up for ``vps shell``.

``StrictModes no``: sshd refuses a key file that belongs to neither root nor the user,
and the file belongs to the runner's user, which need not be root (a runner in the
``docker`` group). What StrictModes guards against (someone else rewriting the keys) is
excluded another way: the file is mounted read-only and lives in a 0700 directory of the
runner (docs/decisions.md).

Readiness (``probe_endpoint``): the published port is read from the engine, then the
port must answer with an ``SSH-2.0`` banner within ``[vps] ready_timeout``; the marker
in the container's log says at once that the image has no sshd.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from msgspec import Struct

from node_agent.executors.base import StartFailed, TaskRun

LABEL_VPS = "hakuriver.vps"
# Where the container sees the user's keys (the AuthorizedKeysFile sshd is given).
KEYS_PATH = "/etc/hakuriver/authorized_keys"
# The container's environment variable that lets the script install openssh.
INSTALL_SSHD_ENV = "HAKURIVER_VPS_INSTALL_SSHD"
# The line the script prints (stderr) when it starts no sshd.
NO_SSHD_MARKER = "hakuriver-vps: this image has no sshd"
SSH_PORT = "22/tcp"

# The container's command: ``/bin/sh -c VPS_SCRIPT``. A constant: nothing of the user's
# is ever part of it (the keys are a mounted file, the switch an environment variable).
VPS_SCRIPT = r"""
find_sshd() {
    for d in /usr/sbin /usr/local/sbin /sbin /usr/bin /bin /usr/local/bin; do
        if [ -x "$d/sshd" ]; then echo "$d/sshd"; return 0; fi
    done
    return 1
}
sshd=$(find_sshd)
if [ -z "$sshd" ] && [ "$HAKURIVER_VPS_INSTALL_SSHD" = 1 ]; then
    echo "hakuriver-vps: installing openssh-server" >&2
    if command -v apk >/dev/null 2>&1; then
        apk add --no-cache openssh-server >&2
    elif command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update >&2 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            openssh-server >&2
    elif command -v dnf >/dev/null 2>&1; then
        dnf install -y openssh-server >&2
    elif command -v yum >/dev/null 2>&1; then
        yum install -y openssh-server >&2
    fi
    sshd=$(find_sshd)
fi
if [ -n "$sshd" ]; then
    PATH="$PATH:/usr/sbin:/usr/bin:/sbin:/bin"
    ssh-keygen -A >&2
    mkdir -p /run/sshd /var/run/sshd /var/empty
    chmod 0755 /run/sshd /var/run/sshd /var/empty 2>/dev/null
    exec "$sshd" -D -e \
        -o AuthorizedKeysFile=/etc/hakuriver/authorized_keys \
        -o StrictModes=no \
        -o PermitRootLogin=prohibit-password \
        -o PubkeyAuthentication=yes \
        -o PasswordAuthentication=no \
        -o KbdInteractiveAuthentication=no
fi
echo "hakuriver-vps: this image has no sshd" >&2
trap 'exit 143' TERM INT
while :; do sleep 3600 & wait $!; done
"""


def vps_container_name(task_id: str) -> str:
    """The name of a VPS task's container."""
    return f"hakuriver-vps-{task_id}"


def is_vps(run: TaskRun) -> bool:
    """Whether ``run`` is a VPS task."""
    return run.spec.task_type == "vps"


def vps_problem(run: TaskRun) -> str | None:
    """Why this runner refuses to start a VPS ``run``; None when it may."""
    if run.spec.container is None:
        return "a VPS task needs a container environment (--container), not NULL"
    if run.run_as is not None:
        # The host places no VPS on such a node; a runner asked anyway refuses too.
        return (
            "a VPS runs as its container's root (sshd needs it), and this runner runs"
            ' tasks as their owners ([runner] run_tasks_as = "owner"): refused'
        )
    return None


def publish_ip(runner_address: str) -> str:
    """The IP to publish a VPS's port on: ``[network] runner_address`` (resolved when it is
    a name; the engine takes only an address)."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(runner_address))
    try:
        return str(socket.getaddrinfo(runner_address, None, type=socket.SOCK_STREAM)[0][4][0])
    except OSError as exc:
        raise StartFailed(
            f"[network] runner_address {runner_address!r} does not resolve ({exc}):"
            " a VPS's SSH port is published on that address"
        ) from None


def write_keys(path: Path, keys: str) -> None:
    """Write the user's public keys, exactly as given, for a read-only bind mount.

    Mode 0644: public keys are no secret, and the container's root may be an
    unprivileged user of this machine (user namespaces). Never through a symlink.
    """
    path.parent.mkdir(mode=0o700, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o644)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, keys.encode())
    finally:
        os.close(fd)
    os.replace(temp, path)


def vps_options(
    options: dict[str, Any],
    *,
    task_id: str,
    keys_file: Path,
    publish_on: str,
    install_sshd: bool,
) -> dict[str, Any]:
    """A command task's ``containers.create`` options (``container_options``) made a VPS's:
    same resources, GPUs, NUMA and mounts, plus the keys, the published port, the restart
    policy and the fixed script as root."""
    from docker.types import Mount

    made = dict(options)
    made["name"] = vps_container_name(task_id)
    made["labels"] = {**options["labels"], LABEL_VPS: "1"}
    # The image's ENTRYPOINT must not wrap the script (its CMD is then ignored too).
    made["entrypoint"] = ["/bin/sh", "-c", VPS_SCRIPT]
    made["command"] = None
    made["user"] = "0:0"
    made.pop("group_add", None)
    made["environment"] = {**options["environment"], INSTALL_SSHD_ENV: "1" if install_sshd else "0"}
    made["mounts"] = [
        *options["mounts"],
        Mount(KEYS_PATH, str(keys_file), type="bind", read_only=True),
    ]
    made["restart_policy"] = {"Name": "unless-stopped"}
    made["ports"] = {SSH_PORT: (publish_on, None)}
    return made


def published_port(attrs: dict[str, Any]) -> int | None:
    """The host port the engine published the container's port 22 on, if any (now)."""
    ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    for binding in ports.get(SSH_PORT) or ():
        with contextlib.suppress(KeyError, TypeError, ValueError):
            return int(binding["HostPort"])
    return None


class VpsEndpoint(Struct, frozen=True, kw_only=True):
    """Where a VPS's sshd answers, or why none does (what ``vps.ready`` reports)."""

    address: str
    ssh_port: int | None = None
    sshd: bool = False
    message: str = ""
    generation: int = 0  # which start of the container this describes (restarts count up)
    stopped: bool = False  # the container stopped meanwhile: nothing to report


async def ssh_banner(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether ``host:port`` answers with an SSH-2.0 identification line."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, ValueError):
        return False
    return line.startswith(b"SSH-2.0-") or line.startswith(b"SSH-1.99-")


def connect_address(address: str) -> str:
    """Where the runner itself reaches a port published on ``address``."""
    if address in ("0.0.0.0", ""):
        return "127.0.0.1"
    if address == "::":
        return "::1"
    return address


async def probe_endpoint(
    *,
    task_id: str,
    address: str,
    timeout_s: float,
    inspect: Callable[[], Awaitable[dict[str, Any]]],
    stderr_tail: Callable[[], Awaitable[str]],
    generation: int = 0,
) -> VpsEndpoint:
    """Wait until the VPS's sshd answers, the image says it has none, or ``timeout_s``.

    ``inspect`` reads the container's attributes from the engine, ``stderr_tail`` the end
    of its log. Time spent paused does not count: a paused VPS answers nobody.
    """
    host = connect_address(address)
    deadline = time.monotonic() + timeout_s
    pause = 0.05
    port: int | None = None
    shell = f"reach it with `hakuriver vps shell {task_id}`"
    while True:
        attrs = await inspect()
        state = attrs.get("State") or {}
        port = published_port(attrs) or port
        if state.get("Status") in ("exited", "dead"):
            return VpsEndpoint(
                address=address,
                ssh_port=port,
                message="the VPS's container has stopped",
                generation=generation,
                stopped=True,
            )
        if state.get("Paused"):
            deadline += pause
        elif port is not None and await ssh_banner(host, port):
            return VpsEndpoint(
                address=address,
                ssh_port=port,
                sshd=True,
                message="sshd answers",
                generation=generation,
            )
        if NO_SSHD_MARKER in await stderr_tail():
            return VpsEndpoint(
                address=address,
                ssh_port=port,
                message=f"the image has no sshd: {shell}",
                generation=generation,
            )
        if time.monotonic() >= deadline:
            return VpsEndpoint(
                address=address,
                ssh_port=port,
                message=f"sshd did not answer within {timeout_s:g} s: {shell}",
                generation=generation,
            )
        await asyncio.sleep(pause)  # polling a port and a log: nothing to wait on
        pause = min(pause * 1.5, 0.5)
