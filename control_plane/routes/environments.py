"""``/api/environments``: the host's environment containers, tarballs and shells.

A ``DomainError`` becomes the API's JSON error (its status, field and message) in app.py.

    GET    /api/environments/containers               list the environment containers
    POST   /api/environments/containers               {"image", "name"}: create one (the
                                                      image pulled if missing; with
                                                      ?progress=1 the answer is NDJSON
                                                      progress lines, the container last)
    POST   /api/environments/containers/NAME/start    start it
    POST   /api/environments/containers/NAME/stop     stop it
    DELETE /api/environments/containers/NAME          remove it (tarballs stay)
    POST   /api/environments/NAME/tar                 create-tar, progress as NDJSON lines
    GET    /api/environments/tarballs                 the packaged tarballs
    WS     /api/environments/NAME/shell?rows=&cols=&term=   an interactive shell

The shell socket carries binary frames both ways (terminal bytes) and JSON text
frames for control: the client sends ``{"type": "resize", "rows", "cols"}``; the
host sends ``{"type": "exit", "code"}`` when the shell ends, or ``{"type": "error",
"status", "field", "message"}`` when it cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import msgspec
from sanic import Request, Sanic
from sanic.response import HTTPResponse

from control_plane import env_shells
from control_plane.access import Principal, rule
from control_plane.commands import RecordFacts
from control_plane.env_default import DefaultEnvironment
from control_plane.env_tarballs import TarballOut
from control_plane.environments import ContainerOut, Environments, check_name
from control_plane.errors import DomainError, InvalidRequest, NotFound
from control_plane.openapi import Query, api, flag, shape
from control_plane.requests import decode_body
from control_plane.routes.common import JsonBlueprint, answer, control_plane, principal_of
from events.ids import new_id
from events.types import EnvShellClosed, EnvShellOpened

log = logging.getLogger("hakuriver.environments")

bp = JsonBlueprint("environments", url_prefix="/api")


class CreateContainerRequest(msgspec.Struct, forbid_unknown_fields=True):
    image: str
    name: str


_create_decoder = msgspec.json.Decoder(CreateContainerRequest)

# The answers this module writes as dicts, for the OpenAPI document (control_plane/openapi.py).
Containers = shape("Containers", containers=list[ContainerOut])
Deleted = shape("Deleted", deleted=str)
Tarballs = shape("Tarballs", folder=str, tarballs=list[TarballOut])


@bp.before_server_start
async def _open(app: Sanic) -> None:  # type: ignore[type-arg]
    async def record(events: Any, by: Principal) -> object:
        return await app.ctx.cp.execute(RecordFacts(events=tuple(events), actor=by))

    app.ctx.environments = Environments(app.ctx.settings, record)
    # Before the server starts: the port is claimed earlier, so a submit can be waiting.
    app.ctx.default_environment = DefaultEnvironment(app.ctx.environments)


@bp.after_server_start
async def _default(app: Sanic) -> None:  # type: ignore[type-arg]
    app.ctx.default_environment.prepare_soon()


@bp.before_server_stop
async def _close(app: Sanic) -> None:  # type: ignore[type-arg]
    app.ctx.default_environment.close()
    app.ctx.environments.close()


def environments(request: Request) -> Environments:
    """The app's ``Environments``."""
    envs: Environments = request.app.ctx.environments
    return envs


@bp.get("/environments/containers")
@rule("user")
@api("The environment containers", response=Containers)
async def list_containers(request: Request) -> HTTPResponse:
    """The environment containers on the host's engine."""
    return answer({"containers": await environments(request).list_containers()})


@bp.post("/environments/containers")
@rule("admin")
@api(
    "Create an environment container (the image is pulled if the host's engine lacks it)",
    request=CreateContainerRequest,
    response=ContainerOut,
    status=201,
    query=(flag("progress", "answer NDJSON progress lines instead, the container last"),),
    description="With progress: one JSON line per pull step ({step: pull, ...}), {step: wait}"
    " after 5 s of silence, then {step: done, container} or {step: error, status, field,"
    " message}.",
)
async def create_container(request: Request) -> HTTPResponse | None:
    """Create (and start) an environment container; the image is pulled if the host's
    engine lacks it. ``?progress=1``: NDJSON lines (``pull`` summaries, ``wait``
    keep-alives), then ``done`` with the container, or ``error``."""
    body = decode_body(_create_decoder, request.body)  # InvalidRequest: 400 with the field
    envs, by = environments(request), principal_of(request)
    if request.args.get("progress", "") not in ("1", "true"):
        return answer(await envs.create_container(body.image, body.name, by=by), status=201)
    # Refusals that need no pull are answered as before, not inside the stream.
    check_name(body.name)
    if not body.image.strip():
        raise InvalidRequest("image", "give the image to create the environment from")
    await asyncio.to_thread(envs.check_free, body.name)

    async def work(progress: Any) -> dict[str, Any]:
        out = await envs.create_container(body.image, body.name, by=by, progress=progress)
        return {"step": "done", "container": msgspec.to_builtins(out)}

    await _progress_lines(request, work)
    return None


def _settled(job: asyncio.Task[dict[str, Any]]) -> None:
    """A streamed operation's end, whether or not its client stayed to hear it: a failure
    that is not a refusal is logged (never "exception was never retrieved")."""
    if job.cancelled():
        return
    exc = job.exception()
    if exc is not None and not isinstance(exc, DomainError):
        log.error("a streamed environment operation failed", exc_info=exc)


# A streamed answer says something at least this often, so a client can tell a long pull
# from a host gone (the CLI's idle limit is a multiple of it).
KEEPALIVE_S = 5.0


async def _progress_lines(request: Request, work: Any) -> None:
    """Answer with ``work(progress)``'s progress as NDJSON, at most ten lines a second
    (the newest wins), a ``wait`` line after ``KEEPALIVE_S`` of silence, and its result
    (or an ``error`` line) last. A client that goes away does not stop the work; only the
    newest step is kept meanwhile (a slot, not a queue: a pull's many steps for a client
    gone would pile up for as long as the pull lasts), and the work's end is logged."""
    loop = asyncio.get_running_loop()
    newest: list[dict[str, Any]] = []  # at most one: the newest step not yet sent
    changed = asyncio.Event()

    def keep(step: dict[str, Any]) -> None:
        newest[:] = [step]
        changed.set()

    def progress(step: dict[str, Any]) -> None:  # called from worker threads
        loop.call_soon_threadsafe(keep, step)

    job = asyncio.create_task(work(progress))
    job.add_done_callback(_settled)
    response = await request.respond(content_type="application/x-ndjson")
    assert response is not None
    sent_at = loop.time()
    while not job.done():
        waited = loop.time() - sent_at
        wait = max(0.1 - waited, 0.0) if newest else KEEPALIVE_S - waited
        woken = asyncio.ensure_future(changed.wait())
        first = asyncio.FIRST_COMPLETED
        await asyncio.wait({woken, job}, timeout=max(wait, 0.0), return_when=first)
        woken.cancel()
        changed.clear()
        now = loop.time()
        if newest and now - sent_at >= 0.1:
            step = newest.pop()
            await response.send(json.dumps(step) + "\n")
            sent_at = now
        elif not newest and now - sent_at >= KEEPALIVE_S:
            await response.send(json.dumps({"step": "wait"}) + "\n")
            sent_at = now
    if newest:
        await response.send(json.dumps(newest.pop()) + "\n")
    try:
        line: dict[str, Any] = job.result()
    except DomainError as exc:
        line = {"step": "error", "status": exc.status, "field": exc.field, "message": exc.message}
    except Exception as exc:  # logged by _settled
        line = {"step": "error", "status": 500, "field": None, "message": f"{exc}"}
    await response.send(json.dumps(line) + "\n")
    await response.eof()


@bp.post("/environments/containers/<name:str>/<action:str>")
@rule("admin")
@api("Start or stop an environment container (action: start, stop)", response=ContainerOut)
async def act(request: Request, name: str, action: str) -> HTTPResponse:
    """Start or stop an environment container."""
    envs = environments(request)
    if action == "start":
        return answer(await envs.start_container(name, by=principal_of(request)))
    if action == "stop":
        return answer(await envs.stop_container(name, by=principal_of(request)))
    raise NotFound("action", f"no action {action!r}: use start or stop")


@bp.delete("/environments/containers/<name:str>")
@rule("admin")
@api("Delete an environment container", response=Deleted)
async def delete_container(request: Request, name: str) -> HTTPResponse:
    """Remove an environment container; its image and tarballs stay."""
    await environments(request).delete_container(name, by=principal_of(request))
    return answer({"deleted": name})


@bp.get("/environments/tarballs")
@rule("user")
@api("The packaged environment tarballs", response=Tarballs)
async def list_tarballs(request: Request) -> HTTPResponse:
    """The packaged tarballs in the shared folder."""
    envs = environments(request)
    tarballs = await asyncio.to_thread(envs.tarballs)  # a shared (maybe NFS) folder
    return answer({"folder": str(envs.tar_dir), "tarballs": tarballs})


@bp.post("/environments/<name:str>/tar")
@rule("admin")
@api(
    "Package an environment container into a tarball",
    response=str,
    content_type="application/x-ndjson",
    description="One JSON line per progress step; the last is {step: done, packaged} or"
    " {step: error, status, field, message}.",
)
async def create_tar(request: Request, name: str) -> HTTPResponse | None:
    """``create-tar``: one JSON line per progress step, the ``env.packaged`` event last."""
    envs = environments(request)
    check_name(name)
    await asyncio.to_thread(envs.container, name)  # a 404 before the stream starts
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def progress(step: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, step)

    job = asyncio.create_task(envs.package(name, progress, by=principal_of(request)))
    response = await request.respond(content_type="application/x-ndjson")
    assert response is not None
    last_save = 0.0
    while True:
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait({getter, job}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            step = getter.result()
            now = loop.time()
            if step.get("step") == "save" and now - last_save < 0.1 and step.get("bytes"):
                continue  # at most ten progress lines a second
            last_save = now
            await response.send(json.dumps(step) + "\n")
            continue
        getter.cancel()
        break
    while not queue.empty():
        await response.send(json.dumps(queue.get_nowait()) + "\n")
    try:
        event = job.result()
        line: dict[str, Any] = {"step": "done", "packaged": msgspec.to_builtins(event)}
    except DomainError as exc:
        line = {"step": "error", "status": exc.status, "field": exc.field, "message": exc.message}
    except Exception as exc:
        line = {"step": "error", "status": 500, "field": None, "message": f"{exc}"}
    await response.send(json.dumps(line) + "\n")
    await response.eof()
    return None


@bp.websocket("/environments/<name:str>/shell")  # type: ignore[untyped-decorator]
@rule("admin")
@api(
    "A shell in an environment container",
    query=(
        Query("rows", int, "terminal rows (default 24)"),
        Query("cols", int, "terminal columns (default 80)"),
        Query("term", str, "terminal type (default xterm)"),
        Query("csrf", str, "a dashboard session's key (websockets cannot send headers)"),
    ),
    description="Binary terminal bytes both ways; JSON resize frames from the client.",
)
async def shell(request: Request, ws: Any, name: str) -> None:
    """An interactive shell in the environment's container (see the module docstring)."""
    envs = environments(request)
    cp = control_plane(request)
    try:
        rows = int(request.args.get("rows", "24"))
        cols = int(request.args.get("cols", "80"))
    except ValueError:
        rows, cols = 24, 80
    term = request.args.get("term", "xterm")
    try:
        by = principal_of(request)
        opened = await asyncio.to_thread(env_shells.open_shell, envs, name, rows, cols, term)
    except DomainError as exc:
        status = exc.status
        await ws.send(
            json.dumps(
                {"type": "error", "status": status, "field": exc.field, "message": exc.message}
            )
        )
        await ws.close()
        return
    session = new_id()
    address = request.ip or ""
    opened_event = EnvShellOpened(
        name=name, session_id=session, requested_by=by.user, client_address=address
    )
    await cp.execute(RecordFacts(events=(opened_event,), actor=by))
    loop = asyncio.get_running_loop()

    async def output() -> None:
        while True:
            data = await loop.sock_recv(opened.raw, 65536)
            if not data:
                return
            await ws.send(data)

    resizes: set[asyncio.Task[None]] = set()

    async def keyboard() -> None:
        while True:
            message = await ws.recv()
            if message is None:
                return
            if isinstance(message, bytes):
                await loop.sock_sendall(opened.raw, message)
                continue
            try:
                control = json.loads(message)
                kind = control.get("type")
            except (ValueError, AttributeError):
                continue  # not a control message: ignored
            if kind == "resize":
                # Off the key path: a slow engine call must not hold typed keys back.
                resizes.add(asyncio.create_task(_resize(envs, opened, control)))
                resizes.difference_update([t for t in resizes if t.done()])
            elif kind == "input":
                await loop.sock_sendall(opened.raw, str(control.get("data", "")).encode())

    output_pump = asyncio.create_task(output())
    pumps = {output_pump, asyncio.create_task(keyboard())}
    done: set[asyncio.Task[None]] = set()
    try:
        done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also when Sanic cancels this handler (the client dropped the connection): the
        # shell is hung up and the session recorded as closed, shielded from the cancel.
        for task in pumps:
            task.cancel()
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: a dropped socket is how a session ends
        ended_by_shell = output_pump in done
        ending = asyncio.ensure_future(
            _end_session(cp, envs, opened, name, session, ended_by_shell, by)
        )
        code = await asyncio.shield(ending)
    if ended_by_shell:
        with contextlib.suppress(Exception):
            await ws.send(json.dumps({"type": "exit", "code": code}))
    with contextlib.suppress(Exception):
        await ws.close()


async def _end_session(
    cp: Any,
    envs: Environments,
    opened: env_shells.Shell,
    name: str,
    session: str,
    ended: bool,
    by: Principal,
) -> int | None:
    """Hang the shell up if it still runs, and record how the session ended."""
    code: int | None = None
    try:
        code = await asyncio.to_thread(env_shells.finish_shell, envs, opened, ended)
    except Exception as exc:
        log.warning("ending shell session %s failed: %s", session, exc)
    await cp.execute(
        RecordFacts(
            events=(EnvShellClosed(name=name, session_id=session, exit_code=code),), actor=by
        )
    )
    return code


async def _resize(envs: Environments, opened: env_shells.Shell, control: dict[str, Any]) -> None:
    """Apply a resize; a bad or failed one is logged and the session goes on."""
    try:
        rows, cols = int(control["rows"]), int(control["cols"])
        await asyncio.to_thread(env_shells.resize, envs, opened, rows, cols)
    except Exception as exc:
        log.warning("shell resize to %s failed: %s", control, exc)
