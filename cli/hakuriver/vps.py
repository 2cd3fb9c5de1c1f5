"""``hakuriver vps ...``: VPS tasks, long-running containers you reach with ``ssh``.

``submit`` asks for one (its sshd lets in your registered SSH keys, or the key you
give), ``list`` and ``status`` say where it runs and how to connect, ``kill`` / ``stop``
/ ``pause`` / ``resume`` control it, and ``shell`` opens a terminal in it through the
host and its node's agent (for images without sshd). Connecting with ssh is
``hakuriver ssh`` (ssh.py); docs/vps.md has the whole workflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from cyclopts import App, Parameter
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cli.hakuriver.client import HakuClient
from cli.hakuriver.invocation import (
    Connection,
    JsonFlag,
    connection,
    note,
    print_json,
    reported,
    say,
    show,
)
from cli.hakuriver.keys import DEFAULT_KEY_FILES, public_key_line
from cli.hakuriver.render import escaped, state_text, task_ref
from cli.hakuriver.submission import Signed
from cli.hakuriver.submit_request import build_request
from control_plane.errors import InvalidRequest

vps_app = App(
    name="vps",
    help="VPS tasks: containers that keep running, reached with `hakuriver ssh` (docs/vps.md).",
)

Doc = dict[str, Any]


def key_from_file(path: Path) -> str:
    """The public key lines of ``path`` (a ``.pub`` file, or several keys one a line)."""
    try:
        text = path.expanduser().read_text()
    except OSError as exc:
        raise InvalidRequest("public_key_file", f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidRequest("public_key_file", f"{path} is not a text file") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if "PRIVATE KEY" in text or not lines:
        return public_key_line(text, source=str(path))  # says what is wrong with it
    return "\n".join(public_key_line(line, source=str(path)) for line in lines)


def choose_key(
    client: HakuClient, key_file: Path | None, key_string: str | None, home: Path | None = None
) -> tuple[str | None, str]:
    """The key to send (None: the host lets in the keys you registered), and where it is from.

    Without an option: your registered keys if you have any, else ``~/.ssh/id_ed25519.pub``,
    else ``~/.ssh/id_rsa.pub``."""
    if key_file is not None and key_string is not None:
        raise InvalidRequest(
            "public_key_file", "give --public-key-file or --public-key-string, not both"
        )
    if key_string is not None:
        return public_key_line(key_string, source="--public-key-string"), "--public-key-string"
    if key_file is not None:
        return key_from_file(key_file), str(key_file)
    if client.keys():
        return None, "your registered keys (hakuriver key list)"
    for name in DEFAULT_KEY_FILES:
        path = (home / name.removeprefix("~/")) if home is not None else Path(name).expanduser()
        if path.is_file():
            return key_from_file(path), name
    raise InvalidRequest(
        "public_key_file",
        "you have registered no SSH key and there is no ~/.ssh/id_ed25519.pub or"
        " ~/.ssh/id_rsa.pub: register one (hakuriver key add FILE) or give"
        " --public-key-file FILE",
    )


@vps_app.command
@reported
def submit(
    *,
    target: str | None = None,
    cores: Annotated[str | None, Signed] = None,
    memory: Annotated[str | None, Signed] = None,
    container: str | None = None,
    privileged: Annotated[bool | None, Parameter(negative="--no-privileged")] = None,
    mount: list[str] | None = None,
    public_key_file: Path | None = None,
    public_key_string: str | None = None,
    name: str | None = None,
    as_json: JsonFlag = False,
    conn: Connection | None = None,
) -> int:
    """Submit a VPS task: a container running sshd that lets your SSH keys in.

    Prints its number; connect once it runs with `hakuriver ssh NUMBER`.

    Parameters
    ----------
    target
        Where to run it: HOST, HOST:NUMA or HOST::GPU[,GPU...] (GPUs need a target).
        Without it the host places it on a node that can run a VPS.
    cores
        CPU cores it reserves (the host's default: 1).
    memory
        Its memory limit: 512M, 4G (1000-based) or 2Gi (1024-based).
    container
        Its environment (an environment name or an image with sshd; default: the
        host's). NULL is refused: a VPS is a container.
    privileged
        Run the container privileged (an admin's right, unless the host allows it).
    mount
        Extra bind mount HOST_PATH:CONTAINER_PATH[:ro] (repeatable).
    public_key_file
        The public key(s) to let in, from this file (one key a line).
    public_key_string
        The public key to let in, as a line ("ssh-ed25519 AAAA... me@laptop").
    name
        A name for it, shown by vps list.
    as_json
        Print the API's answer ``{"batch_id", "task_ids", "numbers"}``.
    """
    request = build_request(
        ["sshd"],
        target=[target] if target else [],
        cores=cores,
        memory=memory,
        container=container,
        mount=mount or [],
        privileged=privileged,
        name=name,
    )
    del request["command"], request["args"]
    request["task_type"] = "vps"
    with connection(conn).client() as client:
        key, source = choose_key(client, public_key_file, public_key_string)
        if key is not None:
            request["ssh_public_key"] = key
        answer = client.submit(request)
    if as_json:
        print_json(answer)
        return 0
    (number,) = answer.get("numbers") or answer.get("task_ids") or ["?"]
    say(str(number))
    note(f"VPS task {number} submitted, letting in {source}.")
    note(f"Connect once it runs: hakuriver ssh {number}   (status: hakuriver vps status {number})")
    return 0


def _ssh_cell(task: Doc) -> str:
    if task.get("ssh_port"):
        address = task.get("ssh_address") or task.get("node") or ""
        return f"{address}:{task['ssh_port']}" if address else str(task["ssh_port"])
    return "-"


def _sshd_cell(task: Doc) -> str:
    sshd = task.get("sshd")
    if sshd is None:
        return "-" if task.get("redacted") or task.get("state") != "running" else "starting"
    return "yes" if sshd else "no"


@escaped
def vps_table(tasks: list[Doc]) -> Table:
    """The ``vps list`` table: where each VPS runs and whether ssh reaches it."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "STATE", "NODE", "OWNER", "SSH", "SSHD", "NAME"):
        table.add_column(column, no_wrap=column != "NAME")
    for task in tasks:
        table.add_row(
            task_ref(task),
            state_text(task.get("state")),
            str(task.get("node") or "-"),
            str(task.get("owner") or "-"),
            _ssh_cell(task),
            _sshd_cell(task),
            str(task.get("name") or ""),
        )
    return table


@escaped
def vps_detail(task: Doc, gateway: Doc | None = None) -> Panel:
    """``vps status``: where the VPS runs, whether its sshd is up, how to connect."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    number = task_ref(task)
    rows: list[tuple[str, Text | str]] = [
        ("id", str(task.get("task_id", "?"))),
        ("state", state_text(task.get("state"))),
        ("node", str(task.get("node") or "-")),
        ("owner", str(task.get("owner") or "-")),
        ("container", str(task.get("container") or "-")),
        ("ssh", _ssh_cell(task)),
        ("sshd", _sshd_cell(task)),
    ]
    if task.get("vps_message"):
        rows.append(("runner says", str(task["vps_message"])))
    if task.get("message"):
        rows.append(("message", str(task["message"])))
    connect = []
    if task.get("state") == "running" and task.get("sshd"):
        connect.append(f"hakuriver ssh {number}")
        if gateway and gateway.get("enabled"):
            jump = f"{gateway.get('user')}@{gateway.get('host')}:{gateway.get('port')}"
            connect.append(f"ssh -J {jump} root@vps-{number}")
    if task.get("state") == "running":
        connect.append(f"hakuriver vps shell {number}")
    elif task.get("state") == "paused":
        connect.append(f"hakuriver vps resume {number} first")
    if connect:
        rows.append(("connect", "\n".join(connect)))
    for label, value in rows:
        grid.add_row(label, value)
    return Panel(grid, title=f"VPS task {number}", title_align="left", expand=False)


@vps_app.command(name="list")
@reported
def list_vps(
    *, all_users: bool = False, as_json: JsonFlag = False, conn: Connection | None = None
) -> int:
    """List VPS tasks (yours; --all-users: everyone's, others' redacted), newest first.

    Parameters
    ----------
    all_users
        Every user's VPS tasks (an admin sees them whole; others see what task list shows).
    as_json
        Print ``{"tasks": [...]}`` (the API's task documents).
    """
    with connection(conn).client() as client:
        tasks = [t for t in client.tasks(all_users=all_users) if t.get("task_type") == "vps"]
    if as_json:
        print_json({"tasks": tasks})
    elif tasks:
        show(vps_table(tasks))
    else:
        note("no VPS tasks (submit one: hakuriver vps submit)")
    return 0


def vps_task(client: HakuClient, task_id: str) -> Doc:
    """The task ``task_id`` names, if it is a VPS task (``InvalidRequest`` otherwise)."""
    task = client.task(task_id)
    if task.get("task_type") != "vps":
        raise InvalidRequest(
            "task_id",
            f"task {task_ref(task)} is a {task.get('task_type', 'command')} task, not a VPS"
            " (hakuriver task ... controls it)",
        )
    return task


@vps_app.command
@reported
def status(task_id: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """Show a VPS task: state, node, where its sshd listens, and how to connect.

    Parameters
    ----------
    task_id
        The task's number, its id, or a unique prefix of its id (8+ characters).
    as_json
        Print the API's task document.
    """
    with connection(conn).client() as client:
        task = vps_task(client, task_id)
        gateway = None
        if not as_json and task.get("sshd"):
            try:
                gateway = client.ssh_gateway()
            except Exception:  # an older host, or one without the gateway: no -J line
                gateway = None
    if as_json:
        print_json(task)
    else:
        show(vps_detail(task, gateway))
    return 0


def _control(
    action: str, task_id: str, as_json: bool, conn: Connection | None, reason: str = ""
) -> int:
    with connection(conn).client() as client:
        vps_task(client, task_id)
        if action == "pause":
            answer = client.pause(task_id)
        elif action == "resume":
            answer = client.resume(task_id)
        else:
            answer = client.kill(task_id, reason=reason or None)
    if as_json:
        print_json(answer)
    else:
        say(f"VPS task {task_ref(answer)}: {action} requested (it was {answer.get('state')})")
    return 0


_CONTROL_PARAMETERS = """

    Parameters
    ----------
    task_id
        The task's number, its id, or a unique prefix of its id (8+ characters).
    as_json
        Print the API's answer ``{"task_id", "number", "state"}``.
    """


def _control_command(action: str, summary: str, reason: str = "") -> None:
    """Register ``hakuriver vps ACTION ID``: ``_control`` of that action, documented."""

    def command(
        task_id: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None
    ) -> int:
        return _control(action, task_id, as_json, conn, reason=reason)

    command.__name__ = command.__qualname__ = action
    command.__doc__ = summary + _CONTROL_PARAMETERS
    vps_app.command(reported(command), name=action)


_control_command("kill", "Kill a VPS task (paused ones too): its container is stopped and removed.")
_control_command("stop", 'Stop a VPS task: a kill, recorded with the reason "stopped".', "stopped")
_control_command(
    "pause", "Pause a running VPS task (its container is frozen; ssh sessions hang until resume)."
)
_control_command("resume", "Resume a paused VPS task.")


@vps_app.command
@reported
def shell(task_id: str, /, *, conn: Connection | None = None) -> int:
    """Open a terminal in a running VPS task's container, through the host (no sshd needed).

    The exit code is the shell's.

    Parameters
    ----------
    task_id
        The task's number, its id, or a unique prefix of its id (8+ characters).
    """
    from urllib.parse import quote

    from cli.hakuriver.shell import run_shell

    with connection(conn).client() as client:
        url = client.ws_url(f"/api/tasks/{quote(task_id, safe='')}/shell")
        context = client.ws_ssl()
        pin = client.ca_fingerprint
        token = client.token
    return run_shell(url, token=token, ssl_context=context, ca_fingerprint=pin)
