"""``hakuriver jobs ...`` and ``hakuriver volumes ...``: SkyPilot-style job files (docs/jobs.md).

``jobs submit FILE`` sends the file as written (the host parses it and names the field
and line of a mistake); when the file names a ``workdir``, that folder (relative to the
file's) goes with it as a gzip'd tar made in memory, refused here first when it is over
the host's default limit. Unless ``--detach``, the job's combined output is then
followed until the job ends, and the command exits with the job's status: 0 when it
completed, 1 when it failed or was stopped. Ctrl-C stops following, not the job (exit 130).

Following survives the host stopping or restarting: the output is read as records that
carry each rank's file offset (``format=ndjson``, docs/api.md), so a follow cut off (the
answer ends without its ``end`` record, or the connection breaks) asks again from where
it was, with backoff, for up to ``HAKURIVER_FOLLOW_RETRY_S`` (30 s) without an answer:
no line twice, none lost. Past that it gives up with ``EXIT_LOST`` (3): the job may
still be running, and the command says how to look.
"""

from __future__ import annotations

import base64
import io
import os
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from cyclopts import App, Parameter
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cli.hakuriver.client import ApiError, HakuClient
from cli.hakuriver.invocation import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    Connection,
    JsonFlag,
    connection,
    note,
    print_json,
    reported,
    say,
    show,
)
from cli.hakuriver.render import human_size, human_time, state_text
from control_plane.errors import InvalidRequest
from control_plane.job_files import ENTRY_BYTES
from control_plane.jobfile import parse_job
from control_plane.rooms import cores_text
from control_plane.settings import HostJobs

jobs_app = App(name="jobs", help="Run SkyPilot-style job files on one or many nodes.")
volumes_app = App(name="volumes", help="Named folders of the shared storage, for jobs to mount.")

Doc = dict[str, Any]
# Gave up following: the host did not answer for the retry budget (the job may still run).
EXIT_LOST = 3
# How long a follower keeps asking a host that does not answer (it may be restarting).
RETRY_ENV = "HAKURIVER_FOLLOW_RETRY_S"
RETRY_S = 30.0
_FIRST_DELAY_S = 0.2
_MAX_DELAY_S = 2.0
# What a host restarting answers besides no answer at all: worth asking again.
_TRANSIENT = (0, 502, 503, 504)
# The most a workdir may hold: the host's default (a host may take less: it says so).
MAX_WORKDIR = HostJobs().max_workdir_bytes


# -- submit -------------------------------------------------------------------------------------


def pack_workdir(folder: Path, max_bytes: int = MAX_WORKDIR) -> tuple[bytes, list[str]]:
    """A gzip'd tar of ``folder``'s contents (files and folders; links are left out and
    listed), refused (``InvalidRequest`` on ``workdir``) when over ``max_bytes``."""
    if not folder.is_dir():
        raise InvalidRequest("workdir", f"{folder} is not a folder")
    entries: list[tuple[Path, str]] = []
    skipped: list[str] = []
    counted = 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            path = Path(root) / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                skipped.append(relative)
                continue
            counted += ENTRY_BYTES + (path.stat().st_size if path.is_file() else 0)
            if counted > max_bytes:
                raise InvalidRequest(
                    "workdir",
                    f"{folder} holds more than a job's workdir may ({max_bytes} bytes, each"
                    f" file or folder counting at least {ENTRY_BYTES}): put large data in a"
                    " volume (hakuriver volumes create NAME) instead",
                )
            entries.append((path, relative))
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for path, relative in entries:
            tar.add(path, arcname=relative, recursive=False)
    return raw.getvalue(), skipped


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidRequest("env", f"{pair!r} is not KEY=VALUE")
        env[key] = value
    return env


@jobs_app.command
@reported
def submit(
    file: Path,
    /,
    *,
    detach: bool = False,
    env: Annotated[list[str] | None, Parameter(name=["--env", "-e"])] = None,
    name: str | None = None,
    as_json: JsonFlag = False,
    conn: Connection | None = None,
) -> int:
    """Submit a job file; print its id; follow its output until it ends.

    Exits 0 when the job completed, 1 when it failed or was stopped (with --detach: 0
    once submitted), 3 when the host did not answer for $HAKURIVER_FOLLOW_RETRY_S (30)
    seconds while following (it may be restarting: the job may still run). Ctrl-C stops
    following; the job keeps running.

    Parameters
    ----------
    file
        The job file (SkyPilot's YAML: name, num_nodes, workdir, resources, envs,
        volumes, setup, run).
    detach
        Only submit: do not follow the output.
    env
        KEY=VALUE for the file's envs (fills a null value; repeatable).
    name
        The job's name (instead of the file's).
    as_json
        Print the API's answer (implies --detach).
    """
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest("file", f"cannot read {file}: {exc}") from None
    pairs = _env_pairs(env or [])
    # Checked before anything is sent: a mistake there must not leave a job unfollowed.
    budget = retry_budget() if not (detach or as_json) else RETRY_S
    request: Doc = {"yaml": text, "env": pairs, "name": name}
    # Parsed here first: a mistake is shown at once (field and line), and the workdir
    # to pack is known. The host parses it again, with its own default container.
    workdir = parse_job(text, env=pairs, name=name).spec.workdir
    archive = None
    if workdir is not None:
        folder = (file.parent / Path(workdir).expanduser()).resolve()
        archive, skipped = pack_workdir(folder)
        if skipped:
            shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
            note(f"workdir: left out {len(skipped)} link(s) or special file(s): {shown}")
    with connection(conn).client() as client:
        answer = client.submit_job(request, archive)
        if as_json:
            print_json(answer)
            return 0
        job_id = answer["job_id"]
        say(job_id)
        note(f"job {job_id} ({answer['name']}) submitted: {answer['num_nodes']} node(s)")
        for key, value in (answer.get("ignored") or {}).items():
            note(f"ignored: resources.{key} = {value} (HakuRiver does not use it)")
        for warning in answer.get("warnings") or []:
            note(f"warning: {warning}")
        if detach:
            return 0
        return _follow_to_end(client, job_id, budget)


def retry_budget() -> float:
    """``$HAKURIVER_FOLLOW_RETRY_S`` (seconds, >= 0), else ``RETRY_S``."""
    raw = os.environ.get(RETRY_ENV, "")
    if not raw:
        return RETRY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # NaN too
        raise InvalidRequest(RETRY_ENV, f"must be a number of seconds, not {raw[:40]!r}")
    return value


class _Retrying:
    """The backoff of a follower whose host does not answer: ``wait()`` sleeps before
    the next try, or says to give up once the budget is spent since the last answer.

    Only a host that answered once is waited for (``seen``): one that never did is
    most likely a wrong address, said at once as for any other command."""

    def __init__(self, budget: float, *, seen: bool = False) -> None:
        self.budget = budget
        self.seen = seen
        self.since: float | None = None  # when the host stopped answering
        self.delay = _FIRST_DELAY_S

    def answered(self) -> None:
        self.seen = True
        self.since = None
        self.delay = _FIRST_DELAY_S

    def wait(self) -> bool:
        """Sleep before the next try; False: the budget is spent (give up)."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
            note("host unreachable, retrying…")
        left = self.since + self.budget - now
        if left <= 0:
            return False
        time.sleep(min(self.delay, left))
        self.delay = min(2 * self.delay, _MAX_DELAY_S)
        return True


def _transient(exc: ApiError) -> bool:
    """No answer, or one a host starting or stopping gives: ask again."""
    return exc.status in _TRANSIENT and exc.error != "untrusted"


def write_output(
    client: HakuClient, job_id: str, *, rank: int | None, follow: bool, retry: _Retrying
) -> bool:
    """Write the job's output to stdout, resuming where it was after a cut; False when
    the host stayed away past the budget (else True: the job ended, or all was read)."""
    out = sys.stdout.buffer
    offsets: dict[int, int] = {}
    while True:
        try:
            for record in client.job_log_records(job_id, rank=rank, follow=follow, offsets=offsets):
                if "from" in record or "alive" in record:
                    retry.answered()
                elif "end" in record:
                    if record["end"] != "host_stopping":
                        return True
                else:
                    out.write(base64.b64decode(record["data"]))
                    out.flush()
                    offsets[int(record["rank"])] = int(record["offset"])
        except ApiError as exc:
            if not (_transient(exc) and retry.seen):
                raise
        if not retry.wait():
            return False


def _retried(call: Callable[[], Doc], retry: _Retrying) -> Doc | None:
    """``call()``, asked again while the host does not answer; None: gave up."""
    while True:
        try:
            result = call()
        except ApiError as exc:
            if not _transient(exc):
                raise
        else:
            retry.answered()
            return result
        if not retry.wait():
            return None


def _lost(job_id: str, budget: float) -> int:
    note(
        f"gave up following: the host did not answer for {budget:g} s. Job {job_id} may"
        f" still be running: see `hakuriver jobs status {job_id}`, and its output with"
        f" `hakuriver jobs logs {job_id}`"
    )
    return EXIT_LOST


def _interrupted(job_id: str) -> int:
    note(
        f"stopped following; job {job_id} keeps running. Stop it with: hakuriver jobs stop {job_id}"
    )
    return EXIT_INTERRUPTED


def _follow_to_end(client: HakuClient, job_id: str, budget: float) -> int:
    """Write the job's output until it ends; its exit code (Ctrl-C: stop following)."""
    retry = _Retrying(budget, seen=True)  # the submit was answered
    try:
        if not write_output(client, job_id, rank=None, follow=True, retry=retry):
            return _lost(job_id, retry.budget)
        job = _retried(lambda: client.job(job_id), retry)
    except KeyboardInterrupt:
        return _interrupted(job_id)
    if job is None:
        return _lost(job_id, retry.budget)
    status = job["status"]
    line = f"job {job_id} {status}"
    if job.get("message"):
        line += f": {job['message']}"
    note(line)
    return 0 if status == "completed" else EXIT_FAILED


# -- read --------------------------------------------------------------------------------------


def _resources(job: Doc) -> str:
    parts = [cores_text(job["cores"])]
    if job.get("memory_bytes"):
        parts.append(human_size(job["memory_bytes"]))
    if job.get("gpu_count"):
        parts.append(f"{job['gpu_count']} GPU {job.get('gpu_model') or ''}".rstrip())
    parts.append(job.get("container") or "no container")
    return ", ".join(parts)


def job_table(jobs: list[Doc], *, details: bool) -> Table:
    """The ``jobs list`` table (newest first, as the API sends them)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = ["ID", "NAME", "STATUS", "NODES", "OWNER", "SUBMITTED (UTC)"]
    if details:
        columns += ["PHASE", "ON", "RESOURCES", "MESSAGE"]
    for column in columns:
        table.add_column(column, overflow="fold")
    for job in jobs:
        cells: list[Text | str] = [
            job["job_id"],
            job["name"],
            state_text(job["status"]),
            str(job["num_nodes"]),
            job["owner"],
            human_time(job.get("submitted_at")),
        ]
        if details:
            cells += [
                job["phase"],
                ",".join(job.get("nodes") or []) or "-",
                _resources(job),
                job.get("message") or job.get("why") or "",
            ]
        table.add_row(*cells)
    return table


def rank_table(job: Doc) -> Table:
    """The ranks of a job: where each runs and how it did."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("RANK", "TASK", "NODE", "STATE", "EXIT", "STARTED", "FINISHED", "MESSAGE"):
        table.add_column(column, overflow="fold")
    for rank in job["ranks"]:
        exit_code = rank.get("exit_code")
        table.add_row(
            str(rank["rank"]),
            str(rank.get("number") or "-"),
            rank.get("node") or "-",
            state_text(rank["state"]),
            "-" if exit_code is None else str(exit_code),
            human_time(rank.get("started_at")),
            human_time(rank.get("finished_at")),
            rank.get("message") or "",
        )
    return table


def job_detail(job: Doc) -> Group:
    """``jobs status``: the job, then its ranks."""
    lines = [
        f"name       {job['name']}",
        f"owner      {job['owner']}",
        f"status     {job['status']} (phase {job['phase']})",
        f"nodes      {job['num_nodes']}: {', '.join(job.get('nodes') or []) or 'not placed yet'}",
        f"per node   {_resources(job)}",
        f"submitted  {human_time(job.get('submitted_at'))}",
    ]
    for key in ("placed_at", "run_at", "finished_at"):
        if job.get(key):
            lines.append(f"{key.removesuffix('_at'):<10} {human_time(job[key])}")
    if job.get("why"):
        lines.append(f"why        {job['why']}")
    if job.get("message"):
        lines.append(f"message    {job['message']}")
    if job.get("ignored"):
        shown = ", ".join(f"{k}={v}" for k, v in job["ignored"].items())
        lines.append(f"ignored    {shown}")
    return Group(Panel(Text("\n".join(lines)), title=f"job {job['job_id']}"), rank_table(job))


@jobs_app.command(name="list")
@reported
def list_jobs(
    *,
    details: bool = False,
    all_users: bool = False,
    as_json: JsonFlag = False,
    conn: Connection | None = None,
) -> int:
    """List your jobs, newest first.

    Parameters
    ----------
    details
        More columns: phase, nodes, resources, message (or why a queued job waits).
    all_users
        Every user's jobs (admins).
    as_json
        Print the API's document ``{"jobs": [...], "total"}``.
    """
    with connection(conn).client() as client:
        found = client.jobs(all_users=all_users, details=details)
    if as_json:
        print_json(found)
        return 0
    if found["jobs"]:
        show(job_table(found["jobs"], details=details))
    say(f"Total: {found['total']}")
    return 0


@jobs_app.command
@reported
def status(job_id: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """Show a job and each of its ranks.

    Parameters
    ----------
    job_id
        The job's id (8 characters).
    as_json
        Print the API's job document.
    """
    with connection(conn).client() as client:
        job = client.job(job_id)
    if as_json:
        print_json(job)
    else:
        show(job_detail(job))
    return 0


@jobs_app.command
@reported
def logs(
    job_id: str,
    /,
    *,
    follow: Annotated[bool, Parameter(name="--follow", negative="--no-follow")] = True,
    rank: int | None = None,
    conn: Connection | None = None,
) -> int:
    """Write a job's output: every rank's, each line prefixed ``node-{rank} | `` when the
    job has several nodes (stdout and stderr merged, in order).

    Parameters
    ----------
    job_id
        The job's id.
    follow
        Keep writing until the job ends (Ctrl-C stops following, not the job). A host
        that stops or restarts meanwhile is asked again, from where the output was, for
        up to $HAKURIVER_FOLLOW_RETRY_S (30) seconds; then exit 3.
    rank
        Only this rank's output (unprefixed).
    """
    retry = _Retrying(retry_budget())
    with connection(conn).client() as client:
        try:
            if not write_output(client, job_id, rank=rank, follow=follow, retry=retry):
                return _lost(job_id, retry.budget)
        except KeyboardInterrupt:
            return _interrupted(job_id)
    return 0


@jobs_app.command
@reported
def stop(
    job_id: str | None = None,
    /,
    *,
    all: bool = False,
    all_users: bool = False,
    as_json: JsonFlag = False,
    conn: Connection | None = None,
) -> int:
    """Stop a job (every rank), or --all of yours.

    Parameters
    ----------
    job_id
        The job's id.
    all
        Every job of yours not ended.
    all_users
        With --all: every user's jobs (admins).
    as_json
        Print the API's answer ``{"stopped": [...]}``.
    """
    if all_users and not all:
        raise InvalidRequest("all_users", "--all-users goes with --all")
    if all == (job_id is not None):
        raise InvalidRequest("job_id", "give a job id, or --all (not both)")
    with connection(conn).client() as client:
        if job_id is not None:
            answer = client.stop_job(job_id)
        else:
            answer = client.stop_jobs(all=True, all_users=all_users)
    if as_json:
        print_json(answer)
    elif answer["stopped"]:
        for stopped in answer["stopped"]:
            say(f"{stopped}: stop requested")
    else:
        note("no job to stop")
    return 0


# -- volumes -----------------------------------------------------------------------------------


@volumes_app.command
@reported
def create(name: str, /, *, conn: Connection | None = None) -> int:
    """Make a volume: a folder of the shared storage jobs mount (``volumes: {/data: NAME}``).

    Parameters
    ----------
    name
        1 to 63 lowercase letters, digits, '.', '_' or '-'.
    """
    with connection(conn).client() as client:
        answer = client.create_volume(name)
    say(f"volume {answer['name']} created: {answer['path']}")
    return 0


@volumes_app.command(name="list")
@reported
def list_volumes(*, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """List the volumes.

    Parameters
    ----------
    as_json
        Print the API's document ``{"volumes": [...]}``.
    """
    with connection(conn).client() as client:
        volumes = client.volumes()
    if as_json:
        print_json({"volumes": volumes})
        return 0
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NAME", "PATH", "CREATED BY", "CREATED (UTC)"):
        table.add_column(column, overflow="fold")
    for volume in volumes:
        table.add_row(
            volume["name"], volume["path"], volume["created_by"], human_time(volume["created_at"])
        )
    if volumes:
        show(table)
    else:
        note("no volumes yet: hakuriver volumes create NAME")
    return 0
