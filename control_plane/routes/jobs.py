"""``/api/jobs`` and ``/api/volumes``: jobs from SkyPilot-style YAML files (docs/jobs.md).

Thin adapters, as the task routes: decode, check what needs the shared storage (the
volumes named, the workdir's archive, unpacked here: ``control_plane.job_files``), then
one command (``SubmitJob``, ``StopJobs``, ``CreateVolume``) whose decision refuses or
records. ``POST /api/jobs`` takes a JSON body, or ``multipart/form-data`` with the same
JSON in its ``job`` field and the workdir, a gzip'd tar, in its ``workdir`` file part: it
reads its body itself (``stream=True``), up to ``[jobs] max_workdir_bytes`` and a little
for the form, instead of the host's ``max_body_bytes`` every other route keeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta, Struct
from sanic import Request
from sanic.response import HTTPResponse

from control_plane import job_files, job_logs
from control_plane.access import rule
from control_plane.commands import CreateVolume, StopJobs, SubmitJob
from control_plane.errors import (
    Conflict,
    DomainError,
    InvalidRequest,
    NotFound,
    Refused,
    StoreFailing,
    TooLarge,
    TooMany,
    Unavailable,
)
from control_plane.hub import ControlPlane
from control_plane.job_views import JobOut
from control_plane.jobfile import ParsedJob, parse_job
from control_plane.logs import log_path
from control_plane.openapi import Query, api, flag, shape
from control_plane.requests import decode_body
from control_plane.routes.common import (
    JsonBlueprint,
    answer,
    check_may_act,
    control_plane,
    principal_of,
    query_int,
)
from control_plane.settings import HostSettings
from control_plane.streams import StreamSlots
from events.config import is_no_container
from events.ids import is_job_id, new_job_id
from events.types import JobStopRequested
from projections.jobs import JobView
from replay_tools.points import iso

bp = JsonBlueprint("jobs", url_prefix="/api")

T = TypeVar("T")

# What a submit body may hold besides the workdir's archive (the job file, the form).
FORM_SLACK = 2 << 20
MAX_YAML = 1 << 20
# An upload over the limit is still read up to this many times it (then the connection
# is closed): the client then reads the 413.
DRAIN_FACTOR = 4
_TRUE = ("1", "true", "yes")


class SubmitJobRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/jobs`` (or its ``job`` form field): the file as text, and the submit
    options (``--env``, ``--name``; ``owner``: another user's name, admins only)."""

    yaml: Annotated[str, Meta(max_length=MAX_YAML)]
    env: dict[str, str] = {}
    name: str | None = None
    owner: str | None = None


class StopJobsRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/jobs/stop``: the jobs named, or ``all`` of the caller's (``all_users``:
    everyone's, admins only)."""

    job_ids: Annotated[list[str], Meta(max_length=10_000)] = []
    all: bool = False
    all_users: bool = False
    reason: Annotated[str, Meta(max_length=1000)] = ""


class CreateVolumeRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/volumes``."""

    name: str


_submit_decoder = msgspec.json.Decoder(SubmitJobRequest)
_stop_decoder = msgspec.json.Decoder(StopJobsRequest)
_volume_decoder = msgspec.json.Decoder(CreateVolumeRequest)

# The answers this module writes as dicts, for the OpenAPI document (control_plane/openapi.py).


class RankRef(Struct, kw_only=True):
    """A rank of a job just submitted: its task."""

    rank: int
    task_id: str
    number: int | None


JobSubmitted = shape(
    "JobSubmitted",
    job_id=str,
    name=str | None,
    num_nodes=int,
    ranks=list[RankRef],
    ignored=dict[str, Any],
    warnings=list[str],
)
JobPage = shape("JobPage", jobs=list[JobOut], total=int)
JobsStopped = shape("JobsStopped", stopped=list[str])


class VolumeOut(Struct, kw_only=True):
    """A volume the log records."""

    name: str
    path: str
    created_by: str
    created_at: str | None


Volumes = shape("Volumes", volumes=list[VolumeOut])
VolumeCreated = shape("VolumeCreated", name=str, path=str)


# -- submit ----------------------------------------------------------------------------------


async def _read_body(request: Request, limit: int, max_workdir: int) -> bytes:
    """The whole body, refused (413 naming ``workdir``) when over ``limit``.

    What is over is still read, and dropped, up to ``DRAIN_FACTOR`` times the limit: a
    client sends its whole body before it reads the answer, and one cut off mid-upload
    sees a reset connection instead of the 413 that says why."""
    chunks: list[bytes] = []
    size = 0
    while (chunk := await request.stream.read()) is not None:  # type: ignore[union-attr]
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_FACTOR * limit:
            break
    if size > limit:
        raise TooLarge(
            "workdir",
            f"the upload is larger than this host takes ({limit} bytes; the workdir may"
            f" hold {max_workdir} bytes unpacked: [jobs] max_workdir_bytes)",
        )
    return b"".join(chunks)


def _submission(request: Request) -> tuple[SubmitJobRequest, bytes | None]:
    """The submit request and the workdir's archive (None: none was sent)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return decode_body(_submit_decoder, request.body), None
    try:
        form, files = request.form, request.files
    except Exception:
        raise InvalidRequest("body", "malformed multipart/form-data") from None
    job = form.get("job") if form is not None else None
    if job is None:
        raise InvalidRequest("job", "required: the submit request as JSON, in the form's job field")
    archive = files.get("workdir") if files is not None else None
    if archive is None and form is not None and "workdir" in form:
        raise InvalidRequest("workdir", "send it as a file part (with a filename)")
    decoded = decode_body(_submit_decoder, job.encode("utf-8", "surrogateescape"))
    return decoded, archive.body if archive is not None else None


def _parse(settings: HostSettings, request: SubmitJobRequest) -> ParsedJob:
    """The job file parsed (``JobFileError``: a 400 naming the field and line)."""
    return parse_job(
        request.yaml,
        env=request.env,
        name=request.name,
        default_container=settings.docker.default_container_name,
    )


async def _new_job_id(cp: ControlPlane) -> str:
    """A job id not in the log, nor on the shared storage (asked on a thread: the shared
    storage may be a slow NFS mount)."""
    while True:
        job_id = new_job_id()
        folder = job_files.job_dir(cp.settings.shared_dir, job_id)
        if job_id not in cp.state.jobs and not await asyncio.to_thread(folder.exists):
            return job_id


# The shielded works in flight (an event loop keeps only weak references to its tasks).
_in_flight: set[asyncio.Task[Any]] = set()


# Job submissions in progress (their body being read, or their work running, which a
# disconnect does not stop), by user: each may hold a workdir of max_workdir_bytes in
# memory, so a user who uploads and disconnects over and over must not pile them up.
MAX_SUBMITS = 8
MAX_SUBMITS_PER_USER = 2
_submitting: dict[str, int] = {}


def take_submit_slot(user: str) -> None:
    """Count one more submission of ``user``'s in progress, or refuse it (429)."""
    total = sum(_submitting.values())
    if total >= MAX_SUBMITS:
        raise TooMany(
            "", f"{total} job submissions are in progress, the most the host takes: try again"
        )
    mine = _submitting.get(user, 0)
    if mine >= MAX_SUBMITS_PER_USER:
        raise TooMany(
            "",
            f"{mine} of your job submissions are in progress, the most one user may have:"
            " try again once they are recorded",
        )
    _submitting[user] = mine + 1


def release_submit_slot(user: str) -> None:
    """One submission of ``user``'s ended (recorded, refused, or given up)."""
    left = _submitting.get(user, 0) - 1
    if left > 0:
        _submitting[user] = left
    else:
        _submitting.pop(user, None)


async def _shielded(work: Coroutine[Any, Any, T], then: Callable[[], None] | None = None) -> T:
    """``work`` run to its end in a task of its own, even if the request is cancelled.

    Sanic cancels a handler whose client disconnects. A cancel that lands while
    ``ControlPlane.execute`` waits on the group commit does not stop the commit: the
    events are recorded all the same, and a handler that then undid its side effects
    (removed the unpacked workdir) would leave a job whose ranks all fail. So the work
    that must agree with the log (the files, then the command) never sees the cancel;
    the handler only stops waiting for it."""
    task = asyncio.ensure_future(work)
    _in_flight.add(task)
    task.add_done_callback(_finished)
    if then is not None:
        task.add_done_callback(lambda _: then())
    return await asyncio.shield(task)


def _finished(task: asyncio.Task[Any]) -> None:
    _in_flight.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a refusal nobody waited for is no loop warning


async def _record_job(cp: ControlPlane, command: SubmitJob, archive: bytes | None) -> None:
    """Unpack the workdir (if any) into the job's folder, then record the job.

    The folder is removed only when the command was refused (``DomainError``, which
    includes ``StoreFailing``): then nothing was recorded. Any other end (a host stopping
    mid-commit, a bug) leaves it: whether the job was recorded is not known here, and a
    folder without a job costs disk space where a job without its folder fails."""
    shared = cp.settings.shared_dir
    try:
        if archive is not None:
            dest = job_files.workdir_path(shared, command.job_id)
            unpacked = await asyncio.to_thread(
                job_files.unpack_workdir,
                archive,
                dest,
                max_bytes=cp.settings.jobs.max_workdir_bytes,
            )
            owner = command.owner or command.actor.user
            await asyncio.to_thread(job_files.give_to_owner, dest, owner)
            command = msgspec.structs.replace(command, workdir=str(dest), workdir_bytes=unpacked)
        await cp.execute(command)
    except StoreFailing:
        # The log could not say whether the job was written: the store adopts such a
        # write if it reached the disk. The folder stays; the host's next start removes
        # it if the job is not in the log after all (hub._remove_orphan_job_folders).
        raise
    except DomainError:
        if archive is not None:
            await asyncio.to_thread(job_files.remove_job_dir, shared, command.job_id)
        raise


@bp.post("/jobs", stream=True)
@rule("user")
@api(
    "Submit a job file (JSON, or multipart/form-data with its workdir)",
    request=SubmitJobRequest,
    response=JobSubmitted,
    status=201,
    description="JSON: the request itself. multipart/form-data: the request as JSON in"
    " the form field job, and the workdir as a tar.gz file part named workdir (docs/jobs.md).",
)
async def submit_job(request: Request) -> HTTPResponse:
    """A job file (and its workdir): ``job.submitted`` and its ranks, queued."""
    slot = _Slot(principal_of(request).user)
    try:
        return await _submit(request, slot)
    finally:
        if not slot.handed_over:  # else the work releases it when it ends
            slot.release()


class _Slot:
    """One submission's place among those in progress (``take_submit_slot``)."""

    def __init__(self, user: str) -> None:
        take_submit_slot(user)
        self.user = user
        self.handed_over = False
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            release_submit_slot(self.user)


async def _submit(request: Request, slot: _Slot) -> HTTPResponse:
    cp = control_plane(request)
    settings = cp.settings
    max_workdir = settings.jobs.max_workdir_bytes
    request.body = await _read_body(request, max_workdir + FORM_SLACK, max_workdir)
    submission, archive = _submission(request)
    parsed = _parse(settings, submission)
    spec = parsed.spec
    if spec.workdir is not None and archive is None:
        raise InvalidRequest(
            "workdir",
            f"{spec.workdir!r} is a folder on your machine: send it as the workdir part"
            " (a gzip'd tar of its contents); `hakuriver jobs submit` does",
        )
    if archive is not None and spec.workdir is None:
        raise InvalidRequest("workdir", "a workdir part was sent, but the file names no workdir")
    shared = settings.shared_dir
    for path, name in spec.volumes.items():
        exists = await asyncio.to_thread(job_files.volume_exists, shared, name)
        if not exists:
            raise InvalidRequest(
                f"volumes.{path}",
                f"no volume {name!r}: create it with `hakuriver volumes create {name}`",
            )
    default = settings.docker.default_container_name
    if spec.container == default and not is_no_container(default):
        try:
            problem = await request.app.ctx.default_environment.ready()
        except Unavailable as exc:  # still being made: the job file's field, not the CLI's
            message = exc.message.replace("pass --container NULL", "set resources.image_id: NULL")
            raise Unavailable("resources.image_id", message) from None
        if problem is not None:
            raise InvalidRequest("resources.image_id", f"no image_id given, and {problem}")
    job_id = await _new_job_id(cp)
    command = SubmitJob(
        job_id=job_id,
        spec=spec,
        yaml=submission.yaml,
        actor=principal_of(request),
        owner=submission.owner,
        workdir=None,
        workdir_bytes=0,
    )
    # Shielded: a client that goes away cancels this handler, never the work below.
    slot.handed_over = True
    await _shielded(_record_job(cp, command, archive), then=slot.release)
    job = cp.state.jobs[job_id]
    tasks = cp.state.tasks
    return answer(
        {
            "job_id": job_id,
            "name": job.name,
            "num_nodes": job.num_nodes,
            "ranks": [
                {"rank": i, "task_id": t, "number": tasks[t].number if t in tasks else None}
                for i, t in enumerate(job.rank_task_ids)
            ],
            "ignored": dict(spec.resources.ignored),
            "warnings": list(parsed.warnings),
        },
        status=201,
    )


# -- read ------------------------------------------------------------------------------------


def _job(cp: ControlPlane, job_id: str) -> JobView:
    """The job ``job_id`` names: 400 if it is not spelled like one, 404 if unknown."""
    if not is_job_id(job_id):
        raise InvalidRequest(
            "job_id", f"{job_id[:40]!r} is not a job id (8 lowercase letters and digits)"
        )
    job = cp.state.jobs.get(job_id)
    if job is None:
        raise NotFound("job_id", f"no job {job_id}")
    return job


def _whys(cp: ControlPlane, jobs: list[JobView]) -> dict[str, str]:
    """The scheduler's explanation of each queued job ("needs 4 nodes with ...").

    One dry pass for all of them (``ControlPlane.explain_jobs``: the live scheduler's
    policy, cursor and reservation rule), whatever their number: a pass per job made a
    list of many queued jobs cost jobs times queue on the event loop. A placed or ended job
    needs none: ``JobOut`` shows its placement's reason."""
    queued = [job for job in jobs if job.phase == "queued" and not job.ended]
    return cp.explain_jobs(queued) if queued else {}


def _all_users(request: Request) -> bool:
    return request.args.get("all_users", "0").lower() in _TRUE


@bp.get("/jobs")
@rule("user")
@api(
    "The caller's jobs, newest first",
    response=JobPage,
    query=(
        flag("all_users", "every user's jobs (admins only)"),
        flag("details", "a queued job's why too"),
        Query("limit", int, "at most this many (default 1000)"),
    ),
)
async def list_jobs(request: Request) -> HTTPResponse:
    """The caller's jobs, newest first (``all_users=1``: everyone's, admins only).

    ``details=1``: a queued job's ``why`` too (one dry scheduler pass for the page, about
    0.1 s for 1000 queued jobs on the event loop); without it, a queued job's ``why`` is
    "" (a placed job's, its placement's reason, costs nothing and is always given)."""
    cp = control_plane(request)
    principal = principal_of(request)
    all_users = _all_users(request)
    details = request.args.get("details", "0").lower() in _TRUE
    if all_users and not principal.is_admin:
        raise Refused("all_users", "every user's jobs are for admins to see")
    limit = query_int(request, "limit", minimum=1) or 1000
    page: list[JobView] = []
    total = 0
    for job in reversed(cp.state.jobs.values()):
        if not all_users and job.owner != principal.user:
            continue
        total += 1
        if len(page) < limit:
            page.append(job)
    whys = _whys(cp, page) if details else {}
    tasks = cp.state.tasks
    found = [JobOut.of(job, tasks, whys.get(job.job_id, "")) for job in page]
    return answer({"jobs": found, "total": total})


@bp.get("/jobs/<job_id:str>")
@rule("user")
@api("One job", response=JobOut)
async def get_job(request: Request, job_id: str) -> HTTPResponse:
    """One job in detail, with its ranks."""
    cp = control_plane(request)
    job = _job(cp, job_id)
    check_may_act(request, job.owner, f"job {job_id}")
    why = _whys(cp, [job]).get(job_id, "")
    return answer(JobOut.of(job, cp.state.tasks, why))


# ``format``: what a log answer's body is (docs/api.md, "Logs").
_LOG_FORMATS = ("text", "ndjson")
_piece_encoder = msgspec.json.Encoder()


@bp.get("/jobs/<job_id:str>/logs")
@rule("user")
@api(
    "A job's ranks' output",
    response=str,
    content_type="text/plain; charset=utf-8",
    query=(
        Query("rank", int, "one rank's output only"),
        flag("follow", "keep answering until the job ends"),
        Query("format", str, "text (default) or ndjson (pieces with their offsets)"),
        Query("from", str, "each rank's offset to start from (rank:offset,...)"),
    ),
    description="format=ndjson answers application/x-ndjson records instead.",
)
async def job_logs_route(request: Request, job_id: str) -> HTTPResponse | None:
    """The ranks' combined output (``rank``: one rank's; ``follow``: until the job ends;
    ``from``: each rank's file from an offset; ``format=ndjson``: pieces with offsets)."""
    cp = control_plane(request)
    job = _job(cp, job_id)
    check_may_act(request, job.owner, f"the output of job {job_id}")
    rank = query_int(request, "rank")
    if rank is not None and rank >= job.num_nodes:
        raise InvalidRequest("rank", f"job {job_id} has ranks 0 to {job.num_nodes - 1}")
    follow = request.args.get("follow", "0").lower() in _TRUE
    form = request.args.get("format", "text")
    if form not in _LOG_FORMATS:
        raise InvalidRequest("format", f"{form[:40]!r} is not one of {', '.join(_LOG_FORMATS)}")
    ranks = range(job.num_nodes) if rank is None else [rank]
    offsets = job_logs.parse_offsets(request.args.get("from", ""), ranks)
    shared = cp.settings.shared_dir
    logs = await asyncio.to_thread(
        job_logs.rank_logs,
        [(r, log_path(shared, job.rank_task_ids[r], "stdout")) for r in ranks],
        prefixed=rank is None and job.num_nodes > 1,
        offsets=offsets,
    )
    ndjson = form == "ndjson"
    client = f"{principal_of(request).user}@{request.remote_addr or request.ip}"
    # Each answer costs a reading loop (a whole job's output, prefixed): a client holds a
    # few at once, as with the event stream (429 past its share).
    with _log_slots(request).hold(client):
        await _serve_logs(request, cp, job_id, logs, follow=follow, ndjson=ndjson)
    return None


def _log_slots(request: Request) -> StreamSlots:
    slots: StreamSlots | None = getattr(request.app.ctx, "job_log_slots", None)
    if slots is None:
        network = control_plane(request).settings.network
        slots = StreamSlots(
            network.event_streams_per_client, network.event_streams_total, "job log answers"
        )
        request.app.ctx.job_log_slots = slots
    return slots


async def _serve_logs(
    request: Request,
    cp: ControlPlane,
    job_id: str,
    logs: list[job_logs.RankLog],
    *,
    follow: bool,
    ndjson: bool,
) -> None:
    # Streamed either way, a chunk at a time (``job_logs``): an answer never holds a
    # job's whole output, and the transport's backpressure paces the reading.
    content_type = "application/x-ndjson" if ndjson else "text/plain; charset=utf-8"
    response = await request.respond(content_type=content_type)
    # The headers now (the client is following); with ndjson, where each rank starts.
    start = {str(log.rank): log.position for log in logs}
    await response.send(_line({"from": start}) if ndjson else b"", end_stream=False)
    stopping: asyncio.Event = request.app.ctx.stopping
    if follow:

        def ended() -> bool:
            return cp.state.jobs[job_id].ended

        # A follower that can resume (ndjson) gets no partial line when the host stops.
        pieces = job_logs.follow(logs, ended, cp.changed, stopping, flush_on_stop=not ndjson)
    else:
        pieces = job_logs.read_now(logs)
    async for piece in pieces:
        if piece is None:  # a keep-alive: only an ndjson answer can say one
            if ndjson:
                await response.send(_line({"alive": True}))
            continue
        if ndjson:
            await response.send(
                _line({"rank": piece.rank, "offset": piece.offset, "data": piece.data})
            )
        else:
            await response.send(piece.data)
    if ndjson:
        # Said last, so a cut answer (no ``end``) is told from a whole one.
        end = "all_read" if not follow else "host_stopping" if stopping.is_set() else "job_ended"
        await response.send(_line({"end": end}))
    await response.eof()


def _line(record: dict[str, Any]) -> bytes:
    """One ndjson record (bytes values as base64, msgspec's way)."""
    return _piece_encoder.encode(record) + b"\n"


# -- stop ------------------------------------------------------------------------------------


def _stopped(outcome: Any) -> list[str]:
    return [e.job_id for e in outcome.decision.events if isinstance(e, JobStopRequested)]


@bp.post("/jobs/<job_id:str>/stop")
@rule("user")
@api("Stop a job", response=JobsStopped, status=202)
async def stop_job(request: Request, job_id: str) -> HTTPResponse:
    """Stop a job: every rank still active is killed."""
    cp = control_plane(request)
    _job(cp, job_id)  # 400 for a malformed id; the owner's check is the decision's
    outcome = await cp.execute(StopJobs(actor=principal_of(request), job_ids=(job_id,)))
    return answer({"stopped": _stopped(outcome)}, status=202)


@bp.post("/jobs/stop")
@rule("user")
@api("Stop several jobs", request=StopJobsRequest, response=JobsStopped, status=202)
async def stop_jobs(request: Request) -> HTTPResponse:
    """Stop the jobs named, or all of the caller's (``all_users``: everyone's, admins)."""
    cp = control_plane(request)
    body = decode_body(_stop_decoder, request.body)
    for i, job_id in enumerate(body.job_ids):
        if not is_job_id(job_id):
            raise InvalidRequest(f"job_ids[{i}]", f"{job_id[:40]!r} is not a job id")
    # The rest (all or ids, all_users for admins, each job the caller's) is the decision's.
    outcome = await cp.execute(
        StopJobs(
            actor=principal_of(request),
            job_ids=tuple(dict.fromkeys(body.job_ids)),
            all=body.all,
            all_users=body.all_users,
            reason=body.reason,
        )
    )
    return answer({"stopped": _stopped(outcome)}, status=202)


# -- volumes ---------------------------------------------------------------------------------


@bp.get("/volumes")
@rule("user")
@api("The volumes", response=Volumes)
async def list_volumes(request: Request) -> HTTPResponse:
    """The volumes the log records (``volume.created``), oldest first."""
    cp = control_plane(request)
    shared = cp.settings.shared_dir
    return answer(
        {
            "volumes": [
                {
                    "name": v.name,
                    "path": str(job_files.volume_path(shared, v.name)),
                    "created_by": v.created_by,
                    "created_at": iso(v.created_at_us),
                }
                for v in cp.state.volumes.values()
            ]
        }
    )


async def _record_volume(app: Any, command: CreateVolume) -> Path:
    """Make the volume's folder and record ``volume.created``; the folder's path.

    A folder that exists without its event (a host that stopped between the two, or a
    commit whose outcome was unknown) is recorded now; one the log records is a 409 (the
    decision's). A refusal removes the folder made here. One create at a time
    (``app.ctx.volumes_lock``): a create that finds the folder must not record it while
    the create that made it is still recording it (that one would then be refused and
    remove the folder under the other's event)."""
    lock: asyncio.Lock | None = getattr(app.ctx, "volumes_lock", None)
    if lock is None:
        lock = app.ctx.volumes_lock = asyncio.Lock()
    async with lock:
        return await _make_volume(app.ctx.cp, command)


async def _make_volume(cp: ControlPlane, command: CreateVolume) -> Path:
    shared = cp.settings.shared_dir
    try:
        path = await asyncio.to_thread(job_files.create_volume, shared, command.name)
    except FileExistsError:
        path = job_files.volume_path(shared, command.name)
        if not await asyncio.to_thread(job_files.volume_exists, shared, command.name):
            raise Conflict("name", f"{path} exists and is not a folder") from None
        await cp.execute(command)  # Conflict when already recorded
        return path
    try:
        await cp.execute(command)
    except StoreFailing:
        raise  # maybe written after all: the folder stays (a create again records it)
    except DomainError:
        await asyncio.to_thread(path.rmdir)
        raise
    return path


@bp.post("/volumes")
@rule("user")
@api("Create a volume", request=CreateVolumeRequest, response=VolumeCreated, status=201)
async def create_volume(request: Request) -> HTTPResponse:
    """Make ``<shared_dir>/volumes/<name>`` and record ``volume.created``.

    In a shielded task (``_shielded``): a client that disconnects cannot leave the
    folder without its event. A retry for a folder that exists without the event
    records it (201, as for a new one)."""
    body = decode_body(_volume_decoder, request.body)
    name = job_files.check_volume_name(body.name)
    command = CreateVolume(name=name, actor=principal_of(request))
    path = await _shielded(_record_volume(request.app, command))
    return answer({"name": name, "path": str(path)}, status=201)
