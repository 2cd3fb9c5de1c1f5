"""``hakuriver init service --host | --runner``: systemd units for the host and the runners.

Seed 001's Quick Start: ``hakuriver.init service --host [--config FILE]``, then
``systemctl restart`` / ``enable`` the unit. The unit runs the installed ``hakuriver``
console script (the one next to this interpreter) with ``host`` or ``runner`` and the
configuration file by its absolute path. That file must exist: a service started on
all defaults would listen on loopback only, which is never what a multi-machine
cluster wants, so the command refuses and says how to make one.

Who each unit runs as, and why:

- the runner as root only where it must switch to the tasks' owners (``[runner]
  run_tasks_as = "owner"``) or when ``--user root`` says so; otherwise as ``--user``, else
  the user who ran ``sudo`` (``$SUDO_USER``), else whoever runs this: the account that
  would run ``hakuriver runner`` by hand. With the default ``run_tasks_as = "runner"``
  every task runs as the runner's account, so a root runner would make any user with a
  token root on the node (docs/security.md); root without sudo and without ``--user`` is
  refused, naming the ways out. Its state directory (the join credential) is that
  account's: the lines printed say where, and how to join as that account;
- the host as ``--user``, else ``$SUDO_USER``, else whoever runs this.

Without ``--config``, the file is that account's default (its home's
``.hakuriver/config.toml``, or ``$HAKURIVER_CONFIG`` with ``~`` as its home), and the
account must be able to read it (mode bits along the path; root always can).

What each unit holds:

- ``Restart=on-failure`` with a pause but ``RestartPreventExitStatus=2`` (our refusals: a
  bad configuration or a missing credential is not retried every few seconds), after
  ``network-online.target`` (the host binds its configured address, a runner dials the
  host's) and ``docker.service`` (the runner loads environments and starts containers; the
  host pings the engine once at start to choose the default environment);
- ``WorkingDirectory=`` the account's home (``-``: not fatal when missing), so a relative
  ``data_dir`` means what it means by hand rather than ``/``; ``DOCKER_HOST`` when set now
  (rootless Docker);
- the runner has ``KillMode=process``: stopping or restarting it stops watching, never the
  tasks (docs/decisions.md, "Agents leave their tasks running when they stop"); a restarted
  runner adopts them. It gets no sandboxing: its process tasks are its children and would
  inherit every restriction (read-only system, private /tmp, no setuid, no /dev/nvidia*);
- the host gets the hardening that leaves its work alone: it writes only its data and
  shared directories and talks to Docker over the engine's socket.

Every value goes through systemd's quoting and specifier rules (``%`` becomes ``%%``,
``$`` in a command line ``$$``), so a path with spaces or a ``%`` reaches the process
as written; a path with a newline or another control character cannot be written in
a unit and is refused.
"""

from __future__ import annotations

import getpass
import grp
import os
import pwd
import re
import shlex
import shutil
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cli.hakuriver.config import DEFAULT_PATH, ConfigError, config_path, load_config

Role = Literal["host", "runner"]

SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
# The directories a system service's PATH holds on Debian and most others.
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
# The programs a runner starts by name: found where they are now, so the unit's PATH has them.
RUNNER_PROGRAMS = ("docker", "numactl", "unshare", "nvidia-smi")
# Where home directories live: a host whose data lies under one cannot have ProtectHome.
HOME_ROOTS = ("/home", "/root", "/run/user")
RESTART_SEC = 5
# Our refusals (a bad configuration, no credential): restarting would only repeat them.
EXIT_REFUSED = 2
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


def _account(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ServiceError(f"--user {name!r}: no such account on this machine") from None


def _home_of(user: str | None) -> Path:
    return Path(_account(user or "root").pw_dir)


def expand_home(value: str, home: Path, base: Path | None) -> Path:
    """``value`` as the service reads it: ``~`` is the service user's home, a relative
    path is taken from ``base`` (the unit's working directory for ``data_dir``)."""
    if value == "~" or value.startswith("~/"):
        return home / value[2:]
    path = Path(value)
    return path if path.is_absolute() or base is None else base / path


def data_dir_of(config: Mapping[str, Any], user: str | None) -> Path:
    """``[paths] data_dir`` for the service user (relative: from its home, the unit's
    working directory)."""
    from events.config import DEFAULT_DATA_DIR

    paths = config.get("paths", {})
    section = paths if isinstance(paths, dict) else {}
    home = _home_of(user)
    return expand_home(str(section.get("data_dir", DEFAULT_DATA_DIR)), home, home)


def host_dirs(config: Mapping[str, Any], user: str | None) -> list[Path]:
    """The host's data and shared directories, ``~`` read as the service user's home."""
    paths = config.get("paths", {})
    section = paths if isinstance(paths, dict) else {}
    data_dir = data_dir_of(config, user)
    shared = expand_home(str(section.get("shared_dir", "shared")), _home_of(user), data_dir)
    return [data_dir, shared]


def runner_state_dir(config: Mapping[str, Any], user: str | None) -> Path:
    """The runner's state directory (where ``--join`` keeps its credential) for the
    service user: node_agent.settings' rule with ``~`` as that user's home."""
    from node_agent.settings import RunnerSettings, RunnerSettingsError

    data_dir = data_dir_of(config, user)
    try:
        settings = RunnerSettings.from_mapping(dict(config), data_dir=str(data_dir))
    except RunnerSettingsError as exc:
        raise ServiceError(str(exc)) from None
    value = settings.runner.state_dir or f"runner-{settings.node_name}"
    return expand_home(value, _home_of(user), data_dir)


def run_tasks_as(config: Mapping[str, Any]) -> str:
    """``[runner] run_tasks_as`` as the runner reads it (node_agent/settings.py)."""
    from node_agent.settings import RunnerSettings, RunnerSettingsError

    try:
        return RunnerSettings.from_mapping(dict(config)).runner.run_tasks_as
    except RunnerSettingsError as exc:
        raise ServiceError(str(exc)) from None


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
    working_directory: Path | None = None,
    docker_host: str | None = None,
    state_dir: Path | None = None,
) -> str:
    """The text of ``hakuriver-<role>.service``."""
    _check_printable(str(config_file), "the configuration file")
    if user is not None and not _USER_NAME.fullmatch(user):
        raise ServiceError(f"--user {user!r} is not a user name")
    command = " ".join(
        exec_word(word) for word in (*launcher.command, role, "--config", str(config_file))
    )
    # The host pings Docker once at start to choose the default environment; the runner
    # loads environments and starts containers. A Wants= on a missing unit is harmless.
    after = "network-online.target docker.service"
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
    if docker_host:
        lines.append(f"Environment={environment_value('DOCKER_HOST', docker_host)}")
    if user is not None and user != "root":
        lines.append(f"User={user}")
    if working_directory is not None:
        _check_printable(str(working_directory), "the home directory")
        # "-": a missing home is not fatal (the service then starts in /).
        lines.append(f"WorkingDirectory=-{exec_word(str(working_directory))}")
    lines += [
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        "# Exit status 2 is a refusal (bad configuration, no credential): not retried.",
        f"RestartPreventExitStatus={EXIT_REFUSED}",
    ]
    if role == "runner":
        if state_dir is not None:
            _check_printable(str(state_dir), "the state directory")
            lines.append(
                f"# Its credential: {state_dir}/agent.token (joined once as {user or 'root'})."
            )
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


def requested_user(
    user: str | None, *, is_root: bool, environ: Mapping[str, str] | None = None
) -> str | None:
    """The account asked for: ``--user``, else (as root) the one who ran sudo, else (not
    root) whoever runs this; None for root without sudo and without ``--user``."""
    env = os.environ if environ is None else environ
    if user is not None:
        return user
    if is_root:
        sudo_user = env.get("SUDO_USER") or ""
        return sudo_user if sudo_user and sudo_user != "root" else None
    return getpass.getuser()


REFUSE_ROOT_RUNNER = (
    'the runner\'s service would run as root, and with [runner] run_tasks_as = "{mode}" in'
    " {config} every task (process tasks too) would run as root: any user with a token"
    ' would be root on this node. Either set run_tasks_as = "owner" there (tasks as their'
    " owners' accounts; the runner then runs as root), or give --user ACCOUNT (the runner"
    " and its tasks as that account); --user root accepts tasks as root knowingly"
)


def service_user(
    role: Role,
    *,
    requested: str | None,
    explicit: bool,
    config: Mapping[str, Any],
    config_file: Path,
) -> str | None:
    """Who the unit runs as (None: root, no ``User=``); refuses a root runner nobody asked for."""
    if role == "host":
        return None if requested in (None, "root") else requested
    mode = run_tasks_as(config)
    if mode == "owner":
        if explicit and requested not in (None, "root"):
            raise ServiceError(
                f'[runner] run_tasks_as = "owner" in {config_file}: the runner must run as'
                f" root to start tasks as their owners, not as --user {requested}"
            )
        return None
    if requested is None:
        raise ServiceError(REFUSE_ROOT_RUNNER.format(mode=mode, config=config_file))
    return None if requested == "root" else requested


def default_config(requested: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The configuration file the service user would read by default: ``$HAKURIVER_CONFIG``
    or ``~/.hakuriver/config.toml``, ``~`` being that user's home (not ``$HOME``: under
    sudo that is root's)."""
    env = os.environ if environ is None else environ
    if requested is None:
        named, _ = config_path(None)
        return named
    home = _home_of(requested)
    chosen = env.get("HAKURIVER_CONFIG") or str(DEFAULT_PATH)
    return expand_home(chosen, home, Path.cwd())


def unreadable_by(path: Path, account: pwd.struct_passwd) -> str | None:
    """Why ``account`` cannot read ``path`` by its mode bits (each directory above it
    searchable, the file readable); None if it can. Root can; ACLs are not consulted."""
    if account.pw_uid == 0:
        return None
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))

    def allowed(where: Path, bits: tuple[int, int, int]) -> bool:
        info = where.stat()
        if info.st_uid == account.pw_uid:
            return bool(info.st_mode & bits[0])
        if info.st_gid in groups:
            return bool(info.st_mode & bits[1])
        return bool(info.st_mode & bits[2])

    search = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
    for parent in reversed(path.parents):
        if not allowed(parent, search):
            return f"{account.pw_name} cannot enter {parent} (mode {parent.stat().st_mode:o})"
    if not allowed(path, (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)):
        return f"{account.pw_name} cannot read {path} (mode {path.stat().st_mode:o})"
    return None


def docker_reachable(account: pwd.struct_passwd, environ: Mapping[str, str]) -> bool:
    """Whether ``account`` may use the system engine's socket: root, a member of the
    ``docker`` group, or ``DOCKER_HOST`` set (rootless Docker, the user's own socket)."""
    if account.pw_uid == 0 or environ.get("DOCKER_HOST"):
        return True
    try:
        docker_gid = grp.getgrnam("docker").gr_gid
    except KeyError:
        return False
    return docker_gid in os.getgrouplist(account.pw_name, account.pw_gid)


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


def join_command(launcher: Launcher, user: str | None, config_file: Path) -> str:
    """The command that joins the cluster as the service's user, so the credential lands
    in that user's state directory (``-H``: ``~`` is that user's home; the script by its
    path: a virtual environment is not on sudo's secure_path)."""
    words = [*launcher.command, "runner", "--config", str(config_file), "--join", "TOKEN"]
    prefix = ["sudo", "-u", user, "-H"] if user not in (None, "root") else ["sudo", "-H"]
    if launcher.pythonpath is not None:
        prefix += ["env", f"PYTHONPATH={launcher.pythonpath}"]
    return " ".join(_shell_word(word) for word in (*prefix, *words))


def write_service(
    role: Role,
    *,
    config: Path | None,
    output: Path | None,
    user: str | None,
    force: bool,
    is_root: bool,
    interpreter: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Path, list[str]]:
    """Write the unit; its path and the lines to print (where it went, what to run next;
    lines starting ``warning:`` go to stderr)."""
    env = os.environ if environ is None else environ
    requested = requested_user(user, is_root=is_root, environ=env)
    if requested is not None:
        _account(requested)  # an unknown account is refused before anything else
    named = Path(config).expanduser() if config else default_config(requested, env)
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
    who = service_user(
        role,
        requested=requested,
        explicit=user is not None,
        config=settings,
        config_file=config_file,
    )
    account = _account(who or "root")
    problem = unreadable_by(config_file, account)
    if problem is not None:
        raise ServiceError(
            f"the service would run as {account.pw_name} and read {config_file}, but"
            f" {problem}: make it readable by that account, or give --config a file it can"
            " read (or --user another account)"
        )
    launcher = find_launcher(interpreter)
    home = Path(account.pw_dir)
    protect_home = role != "host" or not any(under_home(path) for path in host_dirs(settings, who))
    state_dir = runner_state_dir(settings, who) if role == "runner" else None
    text = render_unit(
        role,
        config_file=config_file,
        launcher=launcher,
        user=who,
        path=service_path(launcher),
        protect_home=protect_home,
        working_directory=home,
        docker_host=env.get("DOCKER_HOST") or None,
        state_dir=state_dir,
    )
    directory = destination(output, is_root=is_root)
    target = directory / unit_name(role)
    if target.exists() and not force:
        raise ServiceError(f"{target} already exists (use --force to overwrite)")
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    name = account.pw_name
    lines = [
        f"wrote {target}",
        f"  it runs `hakuriver {role}` as {name} with --config {config_file}",
    ]
    runner_section = settings.get("runner", {})
    # A runner told not to use Docker ([runner] docker = false) needs no socket.
    uses_docker = role == "host" or not (
        isinstance(runner_section, dict) and runner_section.get("docker") is False
    )
    if uses_docker and not docker_reachable(account, env):
        refused = (
            "container tasks will be refused on this node"
            if role == "runner"
            else "the host cannot reach Docker (no environments; the default becomes NULL)"
        )
        lines.append(
            f"warning: {name} is not in the docker group: {refused}"
            f" (add it: usermod -aG docker {name}, or set DOCKER_HOST for rootless Docker)"
        )
    if state_dir is not None:
        token = state_dir / "agent.token"
        lines.append(
            f"  its credential must be in {token}: join once as {name}, then Ctrl-C once"
            f" online: {join_command(launcher, who, config_file)}"
        )
        if not token.exists():
            lines.append(f"warning: no credential in {token} yet: join before starting it")
    lines.append("then run:")
    lines.extend(f"  {step}" for step in next_steps(role, target, is_root=is_root))
    return target, lines
