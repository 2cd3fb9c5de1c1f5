"""``hakuriver task ...``: submit tasks, see how they run, read their output, stop them."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated

from cyclopts import App, Parameter, validators

from cli.hakuriver.client import Stream
from cli.hakuriver.invocation import (
    Connection,
    JsonFlag,
    connection,
    note,
    output_width,
    print_json,
    reported,
    say,
    show,
)
from cli.hakuriver.render import task_detail, task_ref, task_table
from cli.hakuriver.submission import SubmitOptions, WaitOptions, report_submission
from control_plane.errors import InvalidRequest
from projections.tasks import STATES

task_app = App(name="task", help="Submit tasks, see how they run, read their output, stop them.")


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

    Prints the task numbers, one a line. The command runs as an argument vector: no shell.

    Parameters
    ----------
    command
        The command and its arguments, after ``--``.
    as_json
        Print the API's answer ``{"batch_id", "task_ids", "numbers"}`` (with --wait, also
        ``tasks``).
    """
    request = (options or SubmitOptions()).request(command)
    waiting = waiting or WaitOptions()
    waiting.check(as_json=as_json)
    with connection(conn).client() as client:
        answer = client.submit(request)
        return report_submission(client, answer, waiting, as_json=as_json)


@task_app.command
@reported
def status(task_id: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """Show everything about one task: state, placement, resources, times, exit code.

    Parameters
    ----------
    task_id
        The task's number, its id, or a unique prefix of its id (8+ characters).
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
    limit: Annotated[int | None, Parameter(validator=validators.Number(gt=0))] = None,
    as_json: JsonFlag = False,
    conn: Connection | None = None,
) -> int:
    """List tasks, newest first.

    Parameters
    ----------
    status
        Only tasks in this state (repeatable, or a comma list): pending, assigning, running,
        paused, unknown (its node is unreachable), completed, failed, killed, killed_oom, lost.
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
        show(task_table(tasks, output_width()))
    else:
        note("no tasks match")
    return 0


def _states(words: Sequence[str]) -> list[str]:
    """The ``--status`` values, split on commas and checked against the task states."""
    states = [state.strip() for word in words for state in word.split(",") if state.strip()]
    for state in states:
        if state not in STATES:
            raise InvalidRequest("status", f"{state!r} is not a task state ({', '.join(STATES)})")
    return states


@task_app.command
@reported
def kill(task_id: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """Stop a task: a queued one at once, a running one on its node (SIGTERM, then SIGKILL).

    Parameters
    ----------
    task_id
        The task's number, its id, or a unique prefix of its id (8+ characters).
    as_json
        Print the API's answer ``{"task_id", "number", "state"}``.
    """
    with connection(conn).client() as client:
        answer = client.kill(task_id)
    return _acknowledge("kill", answer, as_json)


@task_app.command
@reported
def pause(task_id: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """Pause a running task (its node stops the container or the process group).

    Parameters
    ----------
    task_id
        The task's number, its id, or a unique prefix of its id (8+ characters).
    as_json
        Print the API's answer ``{"task_id", "number", "state"}``.
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
        The task's number, its id, or a unique prefix of its id (8+ characters).
    as_json
        Print the API's answer ``{"task_id", "number", "state"}``.
    """
    with connection(conn).client() as client:
        answer = client.resume(task_id)
    return _acknowledge("resume", answer, as_json)


def _acknowledge(action: str, answer: dict[str, object], as_json: bool) -> int:
    if as_json:
        print_json(answer)
    else:
        say(f"{task_ref(answer)}: {action} requested (it was {answer.get('state')})")
    return 0


@task_app.command
@reported
def stdout(
    task_id: str,
    /,
    *,
    tail: Annotated[int | None, Parameter(validator=validators.Number(gte=0))] = None,
    follow: Annotated[bool, Parameter(name=["--follow", "-f"])] = False,
    conn: Connection | None = None,
) -> int:
    """Write the task's standard output, as raw bytes.

    Parameters
    ----------
    task_id
        The task's number, its id, or a unique prefix of its id (8+ characters).
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
    tail: Annotated[int | None, Parameter(validator=validators.Number(gte=0))] = None,
    follow: Annotated[bool, Parameter(name=["--follow", "-f"])] = False,
    conn: Connection | None = None,
) -> int:
    """Write the task's standard error, as raw bytes.

    Parameters
    ----------
    task_id
        The task's number, its id, or a unique prefix of its id (8+ characters).
    tail
        Only the last N lines.
    follow
        Keep writing new output until the task ends.
    """
    return _write_log(task_id, "stderr", tail, follow, conn)


def _write_log(
    task_id: str, stream: Stream, tail: int | None, follow: bool, conn: Connection | None
) -> int:
    out = sys.stdout.buffer
    with connection(conn).client() as client:
        if follow:
            for chunk in client.follow_logs(task_id, stream, tail=tail):
                out.write(chunk)
                out.flush()
        elif tail is not None:
            part = client.logs(task_id, stream, tail=tail)
            out.write(part.data)
            out.flush()
            if part.clamped:
                note(
                    f"(the last {tail} lines are longer than the host sends at once: only the"
                    " last whole lines of 8 MiB were written; read all of it without --tail)"
                )
        else:
            # The host answers at most 8 MiB at a time: read on until the output so far ends.
            offset = 0
            while True:
                part = client.logs(task_id, stream, offset=offset)
                out.write(part.data)
                if not part.data or part.next_offset is None:
                    break
                offset = part.next_offset
            out.flush()
    return 0
