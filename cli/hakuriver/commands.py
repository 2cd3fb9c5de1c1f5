"""The ``hakuriver`` command tree: run the cluster, submit and control tasks, watch nodes.

One sub-app per command group (tasks.py, nodes.py); the cluster's own processes
and ``init`` are here. Every command returns its exit code
(``result_action="return_value"``), so ``app(["task", "list"])`` runs one
in-process. The console script is main.py's ``main``, which answers ``--version``
and plain ``task submit`` without this module. The history and environment
commands are registered by import path: their modules (DuckDB, pyarrow, rich's
progress bars) are imported only when one of their commands runs.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from cyclopts import App, CycloptsError, Parameter, UnknownOptionError
from rich.console import Console
from rich.text import Text

from cli.hakuriver import VERSION
from cli.hakuriver.config import config_path, write_default
from cli.hakuriver.invocation import (
    EXIT_USAGE,
    Connection,
    connection,
    fail,
    note,
    reported,
    say,
)
from cli.hakuriver.logs import LogOptions, merged
from cli.hakuriver.nodes import node_app
from cli.hakuriver.quick import split_at_command
from cli.hakuriver.tasks import task_app

app = App(
    name="hakuriver",
    help="HakuRiver: a small cluster manager. Start it with `hakuriver up`.",
    result_action="return_value",
    version=VERSION,
    default_parameter=Parameter(negative=(), show_default=False),
    error_formatter=lambda error: Text(f"error: {error}"),
    error_console=Console(stderr=True, soft_wrap=True, highlight=False),
)


init_app = App(name="init", help="Create the files HakuRiver needs.")
app.command(task_app)
app.command(node_app)
app.command(init_app)
# What history.install and docker.install register, and the identity commands, by import
# path (see the docstring).
for _name, _path in (
    ("events", "cli.hakuriver.history:events_app"),
    ("state", "cli.hakuriver.history:state_app"),
    ("audit", "cli.hakuriver.history:audit_app"),
    ("why", "cli.hakuriver.history:why"),
    ("sql", "cli.hakuriver.history:sql"),
    ("report", "cli.hakuriver.history:report"),
    ("export", "cli.hakuriver.history:export"),
    ("docker", "cli.hakuriver.docker:docker_app"),
    ("docker-shell", "cli.hakuriver.docker:docker_shell"),
    ("user", "cli.hakuriver.identity:user_app"),
    ("token", "cli.hakuriver.identity:token_app"),
    ("whoami", "cli.hakuriver.identity:whoami"),
    ("ui", "cli.hakuriver.ui:ui"),
    ("key", "cli.hakuriver.keys:key_app"),
    ("vps", "cli.hakuriver.vps:vps_app"),
    ("ssh", "cli.hakuriver.ssh:ssh"),
    ("jobs", "cli.hakuriver.jobs:jobs_app"),
    ("volumes", "cli.hakuriver.jobs:volumes_app"),
    ("completion", "cli.hakuriver.completion:completion"),
):
    app.command(_path, name=_name)
task_app.command("cli.hakuriver.history:task_history", name="history")


@init_app.command
@reported
def config(*, path: Path | None = None, force: bool = False) -> int:
    """Write the commented default configuration file.

    Parameters
    ----------
    path
        Where to write it (default: $HAKURIVER_CONFIG, then ~/.hakuriver/config.toml).
    force
        Overwrite an existing file.
    """
    written = write_default(path if path is not None else config_path()[0], force=force)
    say(f"wrote {written}")
    return 0


@init_app.command
@reported
def service(
    *,
    host: bool = False,
    runner: bool = False,
    config: Path | None = None,
    output: Path | None = None,
    user: str | None = None,
    force: bool = False,
) -> int:
    """Write the systemd unit for the host or a runner (to /etc/systemd/system as root).

    Parameters
    ----------
    host
        The host's unit, hakuriver-host.service.
    runner
        A runner's unit, hakuriver-runner.service (KillMode=process). It runs as root
        only with [runner] run_tasks_as = "owner" or --user root.
    config
        The configuration file the service reads; it must exist and the service's
        user must be able to read it (default: $HAKURIVER_CONFIG, then
        ~/.hakuriver/config.toml, ~ being the service user's home).
    output
        Write the unit into this directory (default: /etc/systemd/system as root, else
        the current directory).
    user
        Run the service as this user (default: you, or the user who ran sudo; the
        runner as root with run_tasks_as = "owner"). As root without sudo, a runner
        needs --user (--user root: tasks as root, knowingly) or run_tasks_as = "owner".
    force
        Overwrite an existing unit file.
    """
    import os

    from cli.hakuriver.service import write_service

    if host == runner:
        return fail("give one of --host or --runner", EXIT_USAGE)
    _, lines = write_service(
        "host" if host else "runner",
        config=config,
        output=output,
        user=user,
        force=force,
        is_root=os.geteuid() == 0,
    )
    for line in lines:
        if line.startswith("warning:"):
            note(line)
        else:
            say(line)
    return 0


@app.command
@reported
def up(
    *,
    data_dir: str | None = None,
    port: int | None = None,
    stop_tasks_on_exit: bool = False,
    conn: Connection | None = None,
    logs: LogOptions | None = None,
) -> int:
    """Run a whole cluster on this machine: the control plane and one local runner.

    Parameters
    ----------
    data_dir
        Where the event log and the runner's state live (default: [paths] data_dir).
    port
        The control plane's port (default: [network] host_port).
    stop_tasks_on_exit
        On Ctrl-C, kill the tasks not ended first (default: leave them running; the next
        `up` re-adopts them).
    """
    from cli.hakuriver import serve

    chosen = connection(conn)
    # The local runner is a child process: it reads the same file.
    config_file = str(chosen.config) if chosen.config is not None else None
    return serve.run_up(
        merged(chosen.settings(), logs),
        data_dir=data_dir,
        port=port,
        config_file=config_file,
        stop_tasks_on_exit=stop_tasks_on_exit,
    )


@app.command
@reported
def host(*, conn: Connection | None = None, logs: LogOptions | None = None) -> int:
    """Run the control plane (the host) for a multi-machine cluster."""
    from cli.hakuriver import serve

    return serve.run_host(merged(connection(conn).settings(), logs))


@app.command
@reported
def runner(
    *,
    name: str | None = None,
    join: str | None = None,
    host: str | None = None,
    ca_fingerprint: str | None = None,
    conn: Connection | None = None,
    logs: LogOptions | None = None,
) -> int:
    """Run a node agent (a runner) that joins the control plane at the configured address.

    Parameters
    ----------
    name
        The node's name (default: [runner] name, then this machine's hostname).
    join
        A join token (an admin makes one: hakuriver token create --join), exchanged once
        for this runner's own credential, kept in its state directory.
    host
        The control plane's URL (default: $HAKURIVER_URL, then the [network] keys).
    ca_fingerprint
        The host's CA fingerprint to pin (sha256:...; default: $HAKURIVER_CA_FINGERPRINT,
        then [network] ca_fingerprint). Put it in the runner's configuration to keep it.
    """
    from cli.hakuriver import serve

    return serve.run_runner(
        merged(connection(conn).settings(), logs, runner=True),
        name=name,
        join=join,
        host_url=host,
        ca_fingerprint=ca_fingerprint,
    )


def run(tokens: Sequence[str]) -> int:
    """Run the command ``tokens`` name; its exit code (2, with one line, for a usage error)."""
    words = list(tokens)
    before = words[: words.index("--")] if "--" in words else words
    if not words or "--help" in before or "-h" in before:
        # A help page lists its subcommands with their summaries: import the lazy ones.
        app.resolved_commands()
        task_app.resolved_commands()
    try:
        result = app(words, exit_on_error=False, print_error=False)
    except CycloptsError as error:
        note(f"error: {error}{_hint(error, words)}")
        return EXIT_USAGE
    return result if isinstance(result, int) else 0


def _hint(error: CycloptsError, words: Sequence[str]) -> str:
    """For ``task submit`` without ``--``: where the ``--`` goes (the command's own options
    after it are then the command's, not ``task submit``'s)."""
    if not isinstance(error, UnknownOptionError) or list(words[:2]) != ["task", "submit"]:
        return ""
    split = split_at_command(words[2:])
    if split is None:
        return ""
    options, command = split
    fixed = shlex.join(["hakuriver", "task", "submit", *options, "--", *command])
    return f" Put the command to run after --, as in: {fixed}"
