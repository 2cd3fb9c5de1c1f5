"""The ``hakuriver`` command: run the cluster, submit and control tasks, watch the nodes.

One sub-app per command group (tasks.py, nodes.py); the cluster's own processes
and ``init`` are here. Every command returns its exit code
(``result_action="return_value"``), so ``app(["task", "list"])`` runs one
in-process; ``main`` is the console script. The seeds' spellings
(``hakuriver.task``, ``hakuriver.client``, ...) are in seeds.py.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Sequence
from pathlib import Path

from cyclopts import App, CycloptsError, Parameter
from rich.console import Console
from rich.text import Text

from cli.hakuriver import docker as docker_commands
from cli.hakuriver import history as history_commands
from cli.hakuriver.config import config_path, write_default
from cli.hakuriver.invocation import EXIT_USAGE, Connection, connection, reported, say
from cli.hakuriver.nodes import node_app
from cli.hakuriver.tasks import task_app


def _version() -> str:
    """The installed package's version (``unknown`` when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version("hakuriver")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


app = App(
    name="hakuriver",
    help="HakuRiver: a small cluster manager. Start it with `hakuriver up`.",
    result_action="return_value",
    version=_version,
    default_parameter=Parameter(negative=(), show_default=False),
    error_formatter=lambda error: Text(f"error: {error}"),
    error_console=Console(stderr=True, soft_wrap=True, highlight=False),
)


init_app = App(name="init", help="Create the files HakuRiver needs.")
app.command(task_app)
app.command(node_app)
app.command(init_app)
history_commands.install(app, task_app)
docker_commands.install(app)


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


@app.command
@reported
def up(
    *, data_dir: str | None = None, port: int | None = None, conn: Connection | None = None
) -> int:
    """Run a whole cluster on this machine: the control plane and one local runner.

    Parameters
    ----------
    data_dir
        Where the event log and the runner's state live (default: [paths] data_dir).
    port
        The control plane's port (default: [network] host_port).
    """
    from cli.hakuriver import serve

    chosen = connection(conn)
    # The local runner is a child process: it reads the same file.
    config_file = str(chosen.config) if chosen.config is not None else None
    return serve.run_up(chosen.settings(), data_dir=data_dir, port=port, config_file=config_file)


@app.command
@reported
def host(*, conn: Connection | None = None) -> int:
    """Run the control plane (the host) for a multi-machine cluster."""
    from cli.hakuriver import serve

    return serve.run_host(connection(conn).settings())


@app.command
@reported
def runner(*, name: str | None = None, conn: Connection | None = None) -> int:
    """Run a node agent (a runner) that joins the control plane at the configured address.

    Parameters
    ----------
    name
        The node's name (default: [runner] name, then this machine's hostname).
    """
    from cli.hakuriver import serve

    return serve.run_runner(connection(conn).settings(), name=name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hakuriver`` with these arguments (``sys.argv[1:]`` by default); the exit code."""
    tokens = sys.argv[1:] if argv is None else list(argv)
    try:
        result = app(tokens, exit_on_error=False)
    except CycloptsError:
        return EXIT_USAGE  # cyclopts has printed the one-line error
    return result if isinstance(result, int) else 0
