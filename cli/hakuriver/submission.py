"""``task submit``'s options as cyclopts parameters, and what happens after submitting.

The options become a request in submit_request.py (shared with the quick path,
quick.py); this module adds waiting for the tasks and ``hakurun --submit``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from cyclopts import App, CycloptsError, Parameter, validators

from cli.hakuriver.client import HakuClient
from cli.hakuriver.follow import Followers
from cli.hakuriver.invocation import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Connection,
    connection,
    fail,
    note,
    print_json,
    reported,
    say,
)
from cli.hakuriver.render import final_line, plural
from cli.hakuriver.submit_request import Request, build_request, print_submitted
from control_plane.errors import InvalidRequest

# A size or a core count may be written negative: a value to refuse, not an option.
Signed = Parameter(allow_leading_hyphen=True)
# After the tasks end, how long their output streams may take to drain.
_DRAIN_S = 30.0


@Parameter(name="*")
@dataclass(frozen=True, kw_only=True)
class SubmitOptions:
    """What to ask for: where, how much, in which environment (one request's fields)."""

    target: list[str] = field(default_factory=list)
    """Where to run: HOST, HOST:NUMA, HOST::GPU[,GPU...]; repeat for one task per target.
    Without it the host places the task on any node that fits."""

    cores: Annotated[str | None, Signed] = None
    """CPU cores per task, a whole number (the host's default: 1). 0: no core accounting:
    the task reserves no core on its node, and is neither pinned nor limited to any."""

    memory: Annotated[str | None, Signed] = None
    """Memory limit per task: 512M, 4G (1000-based) or 2Gi (1024-based); more than 0."""

    env: list[str] = field(default_factory=list)
    """Environment variable KEY=VALUE for the task (repeatable)."""

    container: str | None = None
    """Container environment; NULL runs a plain process (default: the host's setting)."""

    mount: list[str] = field(default_factory=list)
    """Extra bind mount HOST_PATH:CONTAINER_PATH[:ro] (repeatable)."""

    privileged: Annotated[bool | None, Parameter(negative="--no-privileged")] = None
    """Run the container privileged (default: the host's setting)."""

    owner: str | None = None
    """Who the task belongs to (default: your login name)."""

    name: str | None = None
    """A name for the task, shown by task list and task status."""

    def request(self, command: Sequence[str]) -> Request:
        """The ``POST /api/tasks`` body running ``command``; raises ``InvalidRequest``."""
        return build_request(
            command,
            target=self.target,
            cores=self.cores,
            memory=self.memory,
            env=self.env,
            container=self.container,
            mount=self.mount,
            privileged=self.privileged,
            owner=self.owner,
            name=self.name,
        )


@Parameter(name="*")
@dataclass(frozen=True, kw_only=True)
class WaitOptions:
    """Whether to wait for the submitted tasks (and show their output), how often to look."""

    wait: bool = False
    """Wait until every task is done; exit 1 unless all completed."""

    follow: bool = False
    """Wait, writing the tasks' stdout and stderr to ours as they run; with several tasks,
    each line starts with its task's number (as srun --label)."""

    poll_interval: Annotated[float, Parameter(validator=validators.Number(gt=0))] = 1.0
    """Seconds between status checks while waiting."""

    @property
    def waits(self) -> bool:
        """Whether to wait (``--follow`` waits too)."""
        return self.wait or self.follow

    def check(self, *, as_json: bool) -> None:
        """Refuse what cannot be combined, before anything is submitted."""
        if self.follow and as_json:
            raise InvalidRequest(
                "follow", "--follow writes the tasks' output, --json one document: pick one"
            )


def report_submission(
    client: HakuClient,
    answer: dict[str, Any],
    waiting: WaitOptions,
    *,
    as_json: bool,
    header: str | None = None,
) -> int:
    """Print what was submitted; with ``--wait``, wait and print how each task ended.

    Without ``--json`` stdout gets the task numbers one per line (after ``header``), and
    the final states go to stderr, so stdout stays a list of numbers for scripts. With
    ``--follow`` stdout is the tasks' output instead, and the numbers go to stderr.
    """
    task_ids: list[str] = list(answer.get("task_ids", []))
    numbers = [str(n) for n in answer.get("numbers") or task_ids]
    if waiting.follow:
        if header is not None:
            note(header)
        note(f"submitted {plural(len(numbers), 'task')}: {' '.join(numbers)}")
    elif not (as_json and waiting.wait):  # with both, one document at the end
        print_submitted(answer, as_json=as_json, header=header)
    if not waiting.waits:
        return 0
    followers = (
        Followers(
            client.base_url,
            list(zip(task_ids, numbers, strict=True)),
            token=client.token,
            ca_fingerprint=client.ca_fingerprint,
        )
        if waiting.follow
        else None
    )
    try:
        finals = client.wait(
            task_ids,
            waiting.poll_interval,
            on_done=None if as_json or waiting.follow else lambda task: note(final_line(task)),
        )
        if followers is not None:
            followers.join(_DRAIN_S)  # what the tasks wrote last, before how they ended
            for line in followers.errors:
                note(f"warning: could not follow the {line}")
            for task in finals:
                note(final_line(task))
    except KeyboardInterrupt:
        return fail(
            "stopped waiting; the tasks keep running (see `hakuriver task list"
            f" --batch {answer.get('batch_id')}`, stop one with `hakuriver task kill ID`)",
            EXIT_INTERRUPTED,
        )
    if as_json:
        print_json({**answer, "tasks": finals})
    unfinished = [task for task in finals if task.get("state") != "completed"]
    if unfinished and not as_json:
        note(f"{len(unfinished)} of {plural(len(finals), 'task')} did not complete")
    return EXIT_FAILED if unfinished else 0


def submit_sweep(
    option_words: Sequence[str],
    command: str,
    argument_vectors: Sequence[Sequence[str]],
    *,
    dry_run: bool = False,
) -> int:
    """``hakurun --submit``: one task per argument vector, all in one batch.

    ``option_words`` are ``task submit``'s options (``--target``, ``--wait``, ...),
    parsed the same way; with ``dry_run`` the requests are printed, one JSON a line.
    """
    sweep = App(
        name="hakurun --submit",
        help="Options for hakurun --submit (the same as hakuriver task submit's).",
        result_action="return_value",
        default_parameter=Parameter(negative=(), show_default=False),
        version_flags=[],
    )

    @sweep.default
    @reported
    def run(
        *,
        options: SubmitOptions | None = None,
        waiting: WaitOptions | None = None,
        as_json: Annotated[bool, Parameter(name="--json")] = False,
        conn: Connection | None = None,
    ) -> int:
        """Submit every combination as a task of one batch.

        Parameters
        ----------
        as_json
            Print the API's answer ``{"batch_id", "task_ids", "numbers"}`` (with --wait,
            also ``tasks``).
        """
        chosen = options or SubmitOptions()
        requests = [chosen.request([command, *arguments]) for arguments in argument_vectors]
        (waiting or WaitOptions()).check(as_json=as_json)
        if dry_run:
            for request in requests:
                say(json.dumps(request, ensure_ascii=False, separators=(",", ":")))
            return 0
        with connection(conn).client() as client:
            answer = client.submit_batch(requests)
            return report_submission(
                client,
                answer,
                waiting or WaitOptions(),
                as_json=as_json,
                header=f"batch {answer.get('batch_id')}",
            )

    try:
        result = sweep(list(option_words), exit_on_error=False, print_error=False)
    except CycloptsError as exc:
        return fail(f"{exc} (see hakurun --submit --help)", EXIT_USAGE)
    return result if isinstance(result, int) else 0
