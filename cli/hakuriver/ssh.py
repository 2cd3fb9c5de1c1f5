"""``hakuriver ssh TASK [-- ssh args]``: the system ``ssh`` into a VPS task, through the host.

The host's SSH gateway (control_plane/ssh_gateway.py) is a jump host: ``GET /api/ssh``
says where it listens, as whom to log in, and its host key. That answer came over the
authenticated (and, with TLS, pinned) API, so the key is written to
``~/.hakuriver/known_hosts`` and checked strictly: no trust-on-first-use for the
gateway. The VPS's own key is kept in the same file under a stable alias
(``hakuriver-vps-<task id>``) and learnt on first use (``accept-new``).

The jump goes through a ``ProxyCommand`` running ``ssh -W %h:%p`` rather than ``-J``:
the options given on the command line are not passed to a ProxyJump's own ssh, and the
jump needs the pinned known_hosts too. ``--config`` prints the same as an ``ssh_config``
block (``Host vps-*``), so ``ssh vps-12``, scp, rsync and VS Code Remote-SSH work.
``--print`` prints the ssh command instead of running it.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from cli.hakuriver.client import HakuClient
from cli.hakuriver.invocation import Connection, connection, reported, say
from cli.hakuriver.render import task_ref
from cli.hakuriver.vps import vps_task
from control_plane.errors import Conflict, InvalidRequest, Unavailable

KNOWN_HOSTS = Path("~/.hakuriver/known_hosts")
GATEWAY_ALIAS = "hakuriver-gateway"
VPS_USER = "root"


def vps_alias(task_id: str) -> str:
    """The name a VPS's host key is kept under: stable for the task, whatever its number."""
    return f"hakuriver-vps-{task_id}"


def _known_host_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def pin_gateway(gateway: dict[str, Any], known_hosts: Path) -> Path:
    """Write the gateway's host key (from the API's answer) into ``known_hosts``, replacing
    any key kept for its address before; the VPS keys there stay. The file's path."""
    if not gateway.get("enabled"):
        why = gateway.get("message") or "[network] ssh_gateway = false"
        raise Unavailable("ssh", f"the host's SSH gateway is not running: {why}")
    fields = str(gateway.get("host_key") or "").split()
    if len(fields) < 2:
        raise Unavailable("ssh", "the host did not say what its SSH gateway's host key is")
    name = _known_host_name(str(gateway["host"]), int(gateway["port"]))
    path = known_hosts.expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    kept = []
    if path.exists():
        kept = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and line.split(None, 1)[0] != name
        ]
    lines = [*kept, f"{name} {fields[0]} {fields[1]}"]
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("\n".join(lines) + "\n")
    temporary.chmod(0o600)
    temporary.replace(path)
    return path


def _identity(identity_file: Path | None) -> list[str]:
    """The options that make an ssh use only ``identity_file`` (none: ssh's defaults)."""
    if identity_file is None:
        return []
    return ["-i", str(identity_file), "-o", "IdentitiesOnly=yes"]


def proxy_command(
    gateway: dict[str, Any], known_hosts: Path, identity_file: Path | None = None
) -> str:
    """The ``ProxyCommand`` that reaches ``%h:%p`` through the gateway, checking its key
    against ``known_hosts`` only (run by the user's shell: every word quoted)."""
    words = [
        "ssh",
        *_identity(identity_file),
        "-p",
        str(gateway["port"]),
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-l",
        str(gateway["user"]),
        "-W",
        "%h:%p",
        str(gateway["host"]),
    ]
    return shlex.join(words)


def ssh_argv(
    gateway: dict[str, Any],
    task_id: str,
    known_hosts: Path,
    extra: list[str],
    identity_file: Path | None = None,
) -> list[str]:
    """The ``ssh`` command into VPS task ``task_id`` with ``extra`` passed through (after the
    destination: ssh reads options there too, and a remote command). ``identity_file`` is
    used for both hops (the gateway and the VPS), which ``-i`` in ``extra`` would not be."""
    return [
        "ssh",
        *_identity(identity_file),
        "-o",
        f"ProxyCommand={proxy_command(gateway, known_hosts, identity_file)}",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        f"HostKeyAlias={vps_alias(task_id)}",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-l",
        VPS_USER,
        f"vps-{task_id}",
        *extra,
    ]


def config_block(gateway: dict[str, Any], known_hosts: Path) -> str:
    """An ``ssh_config`` block for ``~/.ssh/config``: ``ssh vps-NUMBER`` through the gateway."""
    shown = str(known_hosts).replace(str(Path.home()), "~", 1)
    return (
        f"# HakuRiver VPS tasks (hakuriver ssh --config): ssh vps-NUMBER, scp, rsync, VS Code\n"
        f"Host {GATEWAY_ALIAS}\n"
        f"    HostName {gateway['host']}\n"
        f"    Port {gateway['port']}\n"
        f"    User {gateway['user']}\n"
        f"    UserKnownHostsFile {shown}\n"
        f"    StrictHostKeyChecking yes\n"
        f"Host vps-*\n"
        f"    ProxyJump {GATEWAY_ALIAS}\n"
        f"    User {VPS_USER}\n"
        f"    UserKnownHostsFile {shown}\n"
        f"    StrictHostKeyChecking accept-new\n"
    )


def check_reachable(task: dict[str, Any]) -> None:
    """Refuse, saying what to do, a VPS that ssh cannot reach now."""
    number, state = task_ref(task), task.get("state")
    if state == "paused":
        raise Conflict("task_id", f"VPS task {number} is paused: hakuriver vps resume {number}")
    if state != "running":
        raise Conflict("task_id", f"VPS task {number} is {state}, not running")
    if task.get("sshd") is None:
        raise Conflict("task_id", f"VPS task {number} is starting: its sshd is not up yet")
    if not task.get("sshd"):
        why = f" ({task['vps_message']})" if task.get("vps_message") else ""
        raise Conflict(
            "task_id", f"VPS task {number} runs no sshd{why}: use hakuriver vps shell {number}"
        )


def _gateway(client: HakuClient) -> dict[str, Any]:
    gateway = client.ssh_gateway()
    for field in ("host", "port", "user"):
        if not gateway.get(field):
            raise Unavailable("ssh", f"the host's answer about its SSH gateway has no {field}")
    return gateway


@reported
def ssh(
    task_id: str | None = None,
    /,
    *extra: str,
    config: bool = False,
    identity_file: Annotated[Path | None, Parameter(name=["--identity-file", "-i"])] = None,
    print_command: Annotated[bool, Parameter(name="--print")] = False,
    conn: Connection | None = None,
) -> int:
    """Connect to a VPS task with the system ssh, through the host's SSH gateway.

    Extra ssh arguments go after --, as in `hakuriver ssh 12 -- -L 8888:localhost:8888`
    or `hakuriver ssh 12 -- uname -a`.

    Parameters
    ----------
    task_id
        The VPS task's number, its id, or a unique prefix of its id (8+ characters).
    extra
        Arguments for ssh (options, a remote command), after --.
    config
        Print an ssh_config block for ~/.ssh/config instead (then `ssh vps-NUMBER`, scp,
        rsync and VS Code Remote-SSH go through the gateway).
    identity_file
        The private key to log in with, at the gateway and in the VPS (default: ssh's own
        choice: ~/.ssh/id_*, the agent).
    print_command
        Print the ssh command instead of running it.
    """
    if config and (task_id is not None or extra):
        raise InvalidRequest("config", "--config takes no task and no ssh arguments")
    if not config and task_id is None:
        raise InvalidRequest("task_id", "which VPS task? as in: hakuriver ssh 12")
    with connection(conn).client() as client:
        gateway = _gateway(client)
        known_hosts = pin_gateway(gateway, KNOWN_HOSTS)
        if config:
            say(config_block(gateway, known_hosts).rstrip("\n"))
            return 0
        assert task_id is not None
        task = vps_task(client, task_id)
    check_reachable(task)
    if identity_file is not None and not identity_file.expanduser().is_file():
        raise InvalidRequest("identity_file", f"no key file {identity_file}")
    identity = identity_file.expanduser().resolve() if identity_file is not None else None
    argv = ssh_argv(gateway, str(task["task_id"]), known_hosts, list(extra), identity)
    if print_command:
        say(shlex.join(argv))
        return 0
    if shutil.which("ssh") is None:
        raise Unavailable("ssh", "no ssh command found: install the OpenSSH client")
    os.execvp("ssh", argv)
    return 1  # not reached: exec replaced this process
