"""``hakuriver init service --host | --runner``: systemd units for the host and the runners.

Seed 001's Quick Start: ``hakuriver.init service --host [--config FILE]``, then
``systemctl restart`` / ``enable`` the unit. The unit runs the installed ``hakuriver``
console script (the one next to this interpreter) with ``host`` or ``runner`` and the
configuration file by its absolute path. That file must exist: a service started on
all defaults would listen on loopback only, which is never what a multi-machine
cluster wants, so the command refuses and says how to make one.

What each unit holds, and why:

- ``Restart=on-failure`` with a pause, after ``network-online.target`` (the host binds its
  configured address, a runner dials the host's);
- the runner also after ``docker.service`` (it loads environments and starts containers),
  runs as root (tasks as their owners, private mount namespaces for ``--mount``) and has
  ``KillMode=process``: stopping or restarting it stops watching, never the tasks
  (docs/decisions.md, "Agents leave their tasks running when they stop"); a restarted
  runner adopts them. It gets no sandboxing: its process tasks are its children and would
  inherit every restriction (read-only system, private /tmp, no setuid, no /dev/nvidia*);
- the host runs as the user who made the unit (or ``--user``) with the hardening that
  leaves its work alone: it writes only its data and shared directories and talks to
  Docker over the engine's socket.

Every value goes through systemd's quoting and specifier rules (``%`` becomes ``%%``,
``$`` in a command line ``$$``), so a path with spaces or a ``%`` reaches the process
as written; a path with a newline or another control character cannot be written in
a unit and is refused.
"""

from __future__ import annotations

import getpass
import os
import pwd
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cli.hakuriver.config import ConfigError, config_path, load_config

Role = Literal["host", "runner"]

SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
# The directories a system service's PATH holds on Debian and most others.
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
# The programs a runner starts by name: found where they are now, so the unit's PATH has them.
RUNNER_PROGRAMS = ("docker", "numactl", "unshare", "nvidia-smi")
# Where home directories live: a host whose data lies under one cannot have ProtectHome.
HOME_ROOTS = ("/home", "/root", "/run/user")
RESTART_SEC = 5
_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")

DESCRIPTIONS = {
    "host": "HakuRiver host (control plane)",
    "runner": "HakuRiver runner (node agent)",
}


class ServiceError(ConfigError):
    """What makes a unit impossible to write; shown as one ``error:`` line (exit code 2)."""


def unit_name(role: Role) -> str:
    """``hakuriver-host.service`` or ``hakuriver-runner.service`` (the seeds' names)."""
    return f"hakuriver-{role}.service"


def _check_printable(value: str, what: str) -> None:
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ServiceError(f"{what} {value!r} holds a control character; a unit cannot hold it")


def exec_word(word: str) -> str:
    """One word of an ``ExecStart=`` line, as systemd reads it back to ``word``.

    Backslashes and double quotes are escaped, ``%`` (specifiers) doubled, ``$``
    (variable expansion) doubled; a word with blanks or quotes is put in double quotes.
    """
    _check_printable(word, "the word")
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    if word == "" or any(ch in word for ch in " \t\"'\\"):
        return f'"{escaped}"'
    return escaped


def environment_value(name: str, value: str) -> str:
    """An ``Environment=`` assignment, quoted as a whole (specifiers doubled)."""
    _check_printable(value, f"${name}")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{name}={escaped}"'


@dataclass(frozen=True)
class Launcher:
    """How the unit starts HakuRiver: the console script, or ``python -m`` from a checkout."""

    command: tuple[str, ...]
    pythonpath: str | None = None  # the checkout holding ``cli`` when there is no script


def find_launcher(interpreter: str | None = None) -> Launcher:
    """The ``hakuriver`` script installed next to ``interpreter`` (this one by default).

    Not resolved through symlinks: a virtual environment's ``bin/python`` is a link to
    the system interpreter, and the script and the packages are the environment's.
    Without a script (running from a source checkout) the unit runs ``python -m
    cli.hakuriver`` with the checkout on ``PYTHONPATH``.
    """
    python = os.path.abspath(interpreter or sys.executable)
    script = Path(python).parent / "hakuriver"
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return Launcher((str(script),))
    checkout = Path(__file__).resolve().parents[2]
    return Launcher((python, "-m", "cli.hakuriver"), pythonpath=str(checkout))


def service_path(launcher: Launcher, environ_path: str | None = None) -> str:
    """The unit's ``PATH``: the script's directory, where the runner's programs are now,
    then the system directories (systemd's own default PATH has no venv and no /opt)."""
    found = os.environ.get("PATH", "") if environ_path is None else environ_path
    entries = [str(Path(launcher.command[0]).parent)]
    for program in RUNNER_PROGRAMS:
        where = shutil.which(program, path=found)
        if where:
            entries.append(str(Path(where).parent))
    entries.extend(SYSTEM_PATH)
    return ":".join(dict.fromkeys(entries))


def _home_of(user: str | None) -> Path:
    name = user or "root"
    try:
        return Path(pwd.getpwnam(name).pw_dir)
    except KeyError:
        return Path("/root") if name == "root" else Path("/home") / name


def host_dirs(config: dict[str, object], user: str | None) -> list[Path]:
    """The host's data and shared directories, ``~`` read as the service user's home."""
    paths = config.get("paths", {})
    section = paths if isinstance(paths, dict) else {}
    home = _home_of(user)

    def expand(value: str, base: Path | None) -> Path:
        if value == "~" or value.startswith("~/"):
            return home / value[2:]
        path = Path(value)
        return path if path.is_absolute() or base is None else base / path

    from events.config import DEFAULT_DATA_DIR

    data_dir = expand(str(section.get("data_dir", DEFAULT_DATA_DIR)), None)
    shared = expand(str(section.get("shared_dir", "shared")), data_dir)
    return [data_dir, shared]


def under_home(path: Path) -> bool:
    """Whether ``path`` lies in a home directory (what ``ProtectHome=`` hides)."""
    text = os.path.normpath(str(path))
    return any(text == root or text.startswith(root + "/") for root in HOME_ROOTS)


def render_unit(
    role: Role,
    *,
    config_file: Path,
    launcher: Launcher,
    user: str | None,
    path: str,
    protect_home: bool = True,
) -> str:
    """The text of ``hakuriver-<role>.service``."""
    _check_printable(str(config_file), "the configuration file")
    if user is not None and not _USER_NAME.fullmatch(user):
        raise ServiceError(f"--user {user!r} is not a user name")
    command = " ".join(
        exec_word(word) for word in (*launcher.command, role, "--config", str(config_file))
    )
    after = "network-online.target" + (" docker.service" if role == "runner" else "")
    lines = [
        "# Written by `hakuriver init service`; regenerate it rather than edit it"
        ' (docs/operations.md, "Services").',
        "[Unit]",
        f"Description={DESCRIPTIONS[role]}",
        f"After={after}",
        f"Wants={after}",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={command}",
        f"Environment={environment_value('PATH', path)}",
        "Environment=PYTHONUNBUFFERED=1",
    ]
    if launcher.pythonpath is not None:
        lines.append(f"Environment={environment_value('PYTHONPATH', launcher.pythonpath)}")
    if user is not None and user != "root":
        lines.append(f"User={user}")
    lines += ["Restart=on-failure", f"RestartSec={RESTART_SEC}"]
    if role == "runner":
        lines += [
            "# Stopping or restarting the runner leaves its tasks running; the next runner",
            "# adopts them. Its process tasks are its children: no sandboxing here, they",
            "# would inherit it (setuid, /dev/nvidia*, mounts, /tmp all stay as on the node).",
            "KillMode=process",
        ]
    else:
        lines += [
            "# The host writes only its data and shared directories and reaches Docker",
            "# through the engine's socket; nothing here limits either.",
            "NoNewPrivileges=yes",
            "ProtectSystem=full",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectControlGroups=yes",
            "RestrictSUIDSGID=yes",
            "LockPersonality=yes",
        ]
        if protect_home:
            lines.append("ProtectHome=read-only")
        else:
            lines.append("# No ProtectHome: the data or shared directory is in a home directory.")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def default_user(role: Role) -> str | None:
    """Who the unit runs as: the runner as root; the host as whoever asked (through sudo:
    the user who ran sudo), or root (no ``User=``) when that is root."""
    if role == "runner":
        return None
    root = os.geteuid() == 0
    name = (os.environ.get("SUDO_USER") or "root") if root else getpass.getuser()
    return None if name == "root" else name


def destination(output: Path | None, *, is_root: bool) -> Path:
    """Where the unit goes: ``--output``, else /etc/systemd/system as root, else here."""
    if output is not None:
        return output
    return SYSTEM_UNIT_DIR if is_root else Path.cwd()


def next_steps(role: Role, written: Path, *, is_root: bool) -> list[str]:
    """What to run after writing ``written``: copy it in place (unless it is), reload, start."""
    unit = unit_name(role)
    sudo = "" if is_root else "sudo "
    steps = []
    if written.parent != SYSTEM_UNIT_DIR:
        steps.append(f"{sudo}cp {_shell_word(str(written))} {SYSTEM_UNIT_DIR}/")
    steps.append(f"{sudo}systemctl daemon-reload && {sudo}systemctl enable --now {unit}")
    steps.append(f"journalctl -u {unit} -f   # its log")
    return steps


def _shell_word(text: str) -> str:
    return shlex.quote(text)


def write_service(
    role: Role,
    *,
    config: Path | None,
    output: Path | None,
    user: str | None,
    force: bool,
    is_root: bool,
    interpreter: str | None = None,
) -> tuple[Path, list[str]]:
    """Write the unit; its path and the lines to print (where it went, what to run next)."""
    named, _ = config_path(config)
    config_file = Path(os.path.abspath(named))
    try:
        config_file.stat()
    except FileNotFoundError:
        raise ServiceError(
            f"the configuration file {config_file} does not exist; make it with"
            f" `hakuriver init config --path {_shell_word(str(config_file))}`, set its"
            " [network] addresses, then run this again"
        ) from None
    except OSError as exc:
        raise ServiceError(f"cannot read {config_file}: {exc.strerror}") from None
    settings = load_config(config_file)  # a broken file is refused now, not at boot
    who = user if user is not None else default_user(role)
    launcher = find_launcher(interpreter)
    protect_home = role != "host" or not any(under_home(path) for path in host_dirs(settings, who))
    text = render_unit(
        role,
        config_file=config_file,
        launcher=launcher,
        user=who,
        path=service_path(launcher),
        protect_home=protect_home,
    )
    directory = destination(output, is_root=is_root)
    target = directory / unit_name(role)
    if target.exists() and not force:
        raise ServiceError(f"{target} already exists (use --force to overwrite)")
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    lines = [
        f"wrote {target}",
        f"  it runs `hakuriver {role}` as {who or 'root'} with --config {config_file}",
    ]
    if role == "runner":
        lines.append(
            f"  join it once first, as {who or 'root'} (its credential is kept in that"
            f" user's state directory): hakuriver runner --config"
            f" {_shell_word(str(config_file))} --join TOKEN, then Ctrl-C"
        )
    lines.append("then run:")
    lines.extend(f"  {step}" for step in next_steps(role, target, is_root=is_root))
    return target, lines
