"""The ``hakuriver`` command: run the cluster, submit and control tasks, watch the nodes.

Every command returns its exit code (``result_action="return_value"``), so
``app(["task", "list"])`` runs one in-process; ``main`` is the console script.
The seeds' spellings (``hakuriver.task``, ``hakuriver.client``, ...) are in seeds.py.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from cyclopts import App, CycloptsError, Parameter
from rich.console import Console
from rich.text import Text

from cli.hakuriver.client import TASK_STATES, Stream
from cli.hakuriver.config import config_path, write_default
from cli.hakuriver.invocation import (
    EXIT_USAGE,
    Connection,
    connection,
    note,
    print_json,
    reported,
    say,
    show,
)
from cli.hakuriver.render import health_report, node_detail, node_table, task_detail, task_table
from cli.hakuriver.submission import (
    SubmitOptions,
    WaitOptions,
    login_name,
    report_submission,
)
from control_plane.requests import InvalidRequest

app = App(
    name="hakuriver",
    help="HakuRiver: a small cluster manager. Start it with `hakuriver up`.",
    result_action="return_value",
    default_parameter=Parameter(negative=(), show_default=False),
    error_formatter=lambda error: Text(f"error: {error}"),
    error_console=Console(stderr=True, soft_wrap=True, highlight=False),
)
task_app = App(name="task", help="Submit tasks, see how they run, read their output, stop them.")
node_app = App(name="node", help="The nodes: resources, load, GPUs, temperatures.")
init_app = App(name="init", help="Create the files HakuRiver needs.")
app.command(task_app)
app.command(node_app)
app.command(init_app)

JsonFlag = Annotated[bool, Parameter(name="--json")]


# --- tasks ---------------------------------------------------------------------------


@task_app.command
@reported
def submit(
    *command: str,
    options: SubmitOptions | None = None,
    waiting: WaitOptions | None = None,
    as_json: JsonFlag = False,
    conn: Connection | None = None,
) -> int:
    """Submit COMMAND [ARGS...] (after --): one task per --target, all in one batch.

    Prints the task ids, one a line. The command runs as an argument vector: no shell.

    Parameters
    ----------
    command
        The command and its arguments, after ``--``.
    as_json
        Print the API's answer ``{"batch_id", "task_ids"}`` (with --wait, also ``tasks``).
    """
    request = (options or SubmitOptions()).request(command)
    with connection(conn).client() as client:
        answer = client.submit(request)
        return report_submission(client, answer, waiting or WaitOptions(), as_json=as_json)


@task_app.command
@reported
def status(task_id: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """Show everything about one task: state, placement, resources, times, exit code.

    Parameters
    ----------
    task_id
        The task's id, or a unique prefix of at least 8 characters.
    as_json
        Print the API's task document.
    """
    with connection(conn).client() as client:
        task = client.task(task_id)
    if as_json:
        print_json(task)
    else:
        show(task_detail(task))
    return 0


@task_app.command(name="list")
@reported
def list_tasks(
    *,
    status: list[str] | None = None,
    node: str | None = None,
    batch: str | None = None,
    owner: str | None = None,
    limit: int | None = None,
    as_json: JsonFlag = False,
    conn: Connection | None = None,
) -> int:
    """List tasks, newest first.

    Parameters
    ----------
    status
        Only tasks in this state (repeatable, or a comma list): pending, assigning, running,
        paused, completed, failed, killed, killed_oom, lost.
    node
        Only tasks placed on this node.
    batch
        Only the tasks of this batch.
    owner
        Only this owner's tasks.
    limit
        At most this many (the server's default: 1000).
    as_json
        Print the API's document ``{"tasks": [...]}``.
    """
    states = _states(status or [])
    with connection(conn).client() as client:
        tasks = client.tasks(status=states, node=node, batch=batch, owner=owner, limit=limit)
    if as_json:
        print_json({"tasks": tasks})
    elif tasks:
        show(task_table(tasks))
    else:
        note("no tasks match")
    return 0


def _states(words: Sequence[str]) -> list[str]:
    """The ``--status`` values, split on commas and checked against the task states."""
    states = [state.strip() for word in words for state in word.split(",") if state.strip()]
    for state in states:
        if state not in TASK_STATES:
            raise InvalidRequest(
                "status", f"{state!r} is not a task state ({', '.join(TASK_STATES)})"
            )
    return states


@task_app.command
@reported
def kill(task_id: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """Stop a task: a queued one at once, a running one on its node (SIGTERM, then SIGKILL).

    Parameters
    ----------
    task_id
        The task's id, or a unique prefix of at least 8 characters.
    as_json
        Print the API's answer ``{"task_id", "state"}``.
    """
    with connection(conn).client() as client:
        answer = client.kill(task_id, requested_by=login_name())
    return _acknowledge("kill", answer, as_json)


@task_app.command
@reported
def pause(task_id: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """Pause a running task (its node stops the container or the process group).

    Parameters
    ----------
    task_id
        The task's id, or a unique prefix of at least 8 characters.
    as_json
        Print the API's answer ``{"task_id", "state"}``.
    """
    with connection(conn).client() as client:
        answer = client.pause(task_id)
    return _acknowledge("pause", answer, as_json)


@task_app.command
@reported
def resume(task_id: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """Resume a paused task.

    Parameters
    ----------
    task_id
        The task's id, or a unique prefix of at least 8 characters.
    as_json
        Print the API's answer ``{"task_id", "state"}``.
    """
    with connection(conn).client() as client:
        answer = client.resume(task_id)
    return _acknowledge("resume", answer, as_json)


def _acknowledge(action: str, answer: dict[str, object], as_json: bool) -> int:
    if as_json:
        print_json(answer)
    else:
        say(f"{answer.get('task_id')}: {action} requested (it was {answer.get('state')})")
    return 0


@task_app.command
@reported
def stdout(
    task_id: str,
    /,
    *,
    tail: int | None = None,
    follow: Annotated[bool, Parameter(name=["--follow", "-f"])] = False,
    conn: Connection | None = None,
) -> int:
    """Write the task's standard output, as raw bytes.

    Parameters
    ----------
    task_id
        The task's id, or a unique prefix of at least 8 characters.
    tail
        Only the last N lines.
    follow
        Keep writing new output until the task ends.
    """
    return _write_log(task_id, "stdout", tail, follow, conn)


@task_app.command
@reported
def stderr(
    task_id: str,
    /,
    *,
    tail: int | None = None,
    follow: Annotated[bool, Parameter(name=["--follow", "-f"])] = False,
    conn: Connection | None = None,
) -> int:
    """Write the task's standard error, as raw bytes.

    Parameters
    ----------
    task_id
        The task's id, or a unique prefix of at least 8 characters.
    tail
        Only the last N lines.
    follow
        Keep writing new output until the task ends.
    """
    return _write_log(task_id, "stderr", tail, follow, conn)


def _write_log(
    task_id: str, stream: Stream, tail: int | None, follow: bool, conn: Connection | None
) -> int:
    if tail is not None and tail < 0:
        raise InvalidRequest("tail", f"must be 0 or more, not {tail}")
    out = sys.stdout.buffer
    with connection(conn).client() as client:
        if follow:
            for chunk in client.follow_logs(task_id, stream, tail=tail):
                out.write(chunk)
                out.flush()
        else:
            content, _ = client.logs(task_id, stream, tail=tail)
            out.write(content)
            out.flush()
    return 0


# --- nodes ---------------------------------------------------------------------------


@node_app.command(name="list")
@reported
def list_nodes(*, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """List the nodes: online or not, free/total cores, memory and GPUs, NUMA nodes, load.

    Parameters
    ----------
    as_json
        Print the API's document ``{"nodes": [...]}``.
    """
    with connection(conn).client() as client:
        nodes = client.nodes()
    if as_json:
        print_json({"nodes": nodes})
    elif nodes:
        show(node_table(nodes))
    else:
        note("no nodes have registered yet (start one with `hakuriver runner`)")
    return 0


@node_app.command
@reported
def health(
    node: str | None = None, /, *, as_json: JsonFlag = False, conn: Connection | None = None
) -> int:
    """Show the cluster's health and every node's detail, or one node's.

    Parameters
    ----------
    node
        Only this node.
    as_json
        Print the node's document; without NODE, ``{"health": {...}, "nodes": [...]}``.
    """
    with connection(conn).client() as client:
        if node is not None:
            detail = client.node(node)
            if as_json:
                print_json(detail)
            else:
                show(node_detail(detail))
            return 0
        summary, nodes = client.health(), client.nodes()
    if as_json:
        print_json({"health": summary, "nodes": nodes})
    else:
        show(health_report(summary, nodes))
    return 0


# --- setup and the cluster's own processes -------------------------------------------


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

    return serve.run_up(connection(conn).settings(), data_dir=data_dir, port=port)


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
