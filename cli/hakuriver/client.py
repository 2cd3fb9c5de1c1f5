"""A small synchronous client for the control plane's REST API (docs/api.md).

One kept-alive connection per ``HakuClient`` (wire.py, HTTP/1.1 on a socket:
``httpx`` or even ``http.client`` took longer to import than a whole ``task
submit`` should take; docs/decisions.md, "A CLI that answers at once"); every
method is one request (``wait`` polls). Failures come back as ``ApiError`` built
from the API's JSON error body, or ``Unreachable`` when there is no control plane
to answer, or ``Untrusted`` when the host's certificate is refused (a ``https://`` URL
trusts the pinned CA given as ``ca_fingerprint``, events/pinning.py, else the system's
trust store).

Longer than our usual ~400 lines on purpose: one short method per REST route, side
by side, so the API as the CLI sees it reads as one list (docs/api.md has the same order).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from urllib.parse import quote, urlencode, urlsplit

from cli.hakuriver import wire

if TYPE_CHECKING:
    from ssl import SSLContext

    from events.pinning import PinnedTrust

Stream = Literal["stdout", "stderr"]
Json = dict[str, Any]
# A list value is sent as the parameter repeated (``kind=task.*&kind=node.offline``).
Params = Mapping[str, str | int | Sequence[str]]

# A kept-alive connection idle this long is not reused for a POST: if the server
# closed it meanwhile, the request could not be retried without risking a double submit.
_POST_REUSE_S = 2.0

# Pinned CA certificates, by fingerprint (checked again when read): saves a round trip.
CA_CACHE = Path("~/.hakuriver/ca")


# How long a followed job's log answer may stay silent before the host is taken for gone:
# the host sends a keep-alive after each 10 s without output (control_plane/job_logs.py).
FOLLOW_IDLE_S = 35.0


def follow_idle_s() -> float:
    """``FOLLOW_IDLE_S``, or ``$HAKURIVER_FOLLOW_IDLE_S`` (seconds) when set and valid."""
    try:
        value = float(os.environ.get("HAKURIVER_FOLLOW_IDLE_S", FOLLOW_IDLE_S))
    except ValueError:
        return FOLLOW_IDLE_S
    return value if value > 0 else FOLLOW_IDLE_S


class LogSlice(NamedTuple):
    """Part of a task's output: the bytes, the offset after them, and whether the host cut
    a tail to its byte cap (``X-Tail-Clamped``)."""

    data: bytes
    next_offset: int | None
    clamped: bool = False


class ApiError(Exception):
    """An error answer from the control plane: status, error code, field and message."""

    def __init__(self, status: int, error: str, field: str | None, message: str) -> None:
        # Say where once, even from a server that already put the field in its message.
        located = field and not message.startswith(f"{field}:")
        super().__init__(f"{field}: {message}" if located else message)
        self.status = status
        self.error = error
        self.field = field
        self.message = message
        # Whether the refused request carried a token (401: refused one, or none at all).
        self.token_sent = False

    @property
    def bad_input(self) -> bool:
        """Whether the request itself was at fault (a 4xx answer)."""
        return 400 <= self.status < 500


class Unreachable(ApiError):
    """No answer at all: nothing listens at the URL, or it did not answer in time."""

    def __init__(self, url: str, reason: str = "") -> None:
        message = (
            f"cannot reach the HakuRiver control plane at {url}"
            " (is `hakuriver host` or `hakuriver up` running?)"
        )
        super().__init__(0, "unreachable", None, f"{message}: {reason}" if reason else message)
        self.url = url


class Untrusted(ApiError):
    """The host's certificate was refused: not the pinned CA's, or not trusted at all."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(0, "untrusted", None, f"{url}: {message}")
        self.url = url


class Answer:
    """A whole answer: status, headers (lower-case names), body, and what was asked."""

    __slots__ = ("body", "headers", "reason", "status", "url")

    def __init__(
        self, status: int, reason: str, headers: Mapping[str, str], body: bytes, url: str
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.url = url

    @property
    def text(self) -> str:
        """The body as text (undecodable bytes replaced)."""
        return self.body.decode("utf-8", "replace")


def login_name() -> str:
    """The Unix user running the CLI."""
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "anonymous"


def auth_headers(token: str | None) -> dict[str, str]:
    """The header presenting ``token`` (none without a token: the host answers 401)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


class HakuClient:
    """The control plane's REST API as Python methods returning its JSON documents.

    Every request presents ``token`` (cli/hakuriver/credentials.py finds the CLI's). With
    an ``https://`` URL, ``ca_fingerprint`` pins the host's certificate authority (its CA
    certificate is kept in ``ca_cache``); without one the system's trust store decides.
    An ``http://`` URL uses no TLS, pin or not.
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 30.0,
        *,
        token: str | None = None,
        ca_fingerprint: str | None = None,
        ca_cache: Path | None = CA_CACHE,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Unreachable(base_url, "not an http:// or https:// URL")
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        self._prefix = parts.path
        self.token = token
        self.ca_fingerprint = ca_fingerprint or None
        self._trust: PinnedTrust | None = None
        if https and ca_fingerprint:
            from events.pinning import PinnedTrust  # ssl: only for an https:// URL

            cache = ca_cache.expanduser() if ca_cache is not None else None
            self._trust = PinnedTrust(
                parts.hostname, port, ca_fingerprint, prefix=parts.path, cache_dir=cache
            )
        tls = self._trust.context if self._trust is not None else None
        headers = auth_headers(token)
        self._conn = wire.Connection(
            parts.hostname, port, https=https, timeout=timeout, headers=headers, tls=tls
        )
        self._stream_conn = wire.Connection(
            parts.hostname, port, https=https, timeout=timeout, headers=headers, tls=tls
        )
        self._idle_since = 0.0

    def close(self) -> None:
        """Close the kept-alive connection."""
        self._conn.close()
        self._stream_conn.close()

    def __enter__(self) -> HakuClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- tasks -----------------------------------------------------------------------

    def submit(self, request: Json) -> Json:
        """``POST /api/tasks``: ``{"batch_id", "task_ids", "numbers"}``."""
        return self._json("POST", "/api/tasks", body=request)

    def submit_batch(self, requests: Sequence[Json]) -> Json:
        """``POST /api/batches``: several submit requests as one batch, all or nothing."""
        return self._json("POST", "/api/batches", body={"tasks": list(requests)})

    def task(self, task_id: str) -> Json:
        """``GET /api/tasks/{id}``: one task (its number, full id or unique id prefix)."""
        return self._json("GET", f"/api/tasks/{_segment(task_id)}")

    def tasks(
        self,
        status: str | Sequence[str] | None = None,
        node: str | None = None,
        batch: str | None = None,
        owner: str | None = None,
        limit: int | None = None,
        all_users: bool = False,
    ) -> list[Json]:
        """``GET /api/tasks`` with the given filters, newest first (``all_users``: every
        user's, others' redacted unless this user is an admin)."""
        params: dict[str, str | int] = {"all_users": 1} if all_users else {}
        if status:
            params["status"] = status if isinstance(status, str) else ",".join(status)
        for key, value in (("node", node), ("batch", batch), ("owner", owner), ("limit", limit)):
            if value is not None:
                params[key] = value
        tasks: list[Json] = self._json("GET", "/api/tasks", params=params)["tasks"]
        return tasks

    def ssh_gateway(self) -> Json:
        """``GET /api/ssh``: the SSH gateway to VPS tasks, ``{"enabled", "host", "port",
        "host_key", "fingerprint", "user"}`` (its host key, to pin)."""
        return self._json("GET", "/api/ssh")

    def batch(self, batch_id: str) -> Json:
        """``GET /api/batches/{batch_id}``: ``{"batch_id", "tasks"}``."""
        return self._json("GET", f"/api/batches/{_segment(batch_id)}")

    def kill(self, task_id: str, *, reason: str | None = None) -> Json:
        """``POST /api/tasks/{id}/kill``: ``{"task_id", "number", "state"}``."""
        body = {"reason": reason} if reason else {}
        return self._json("POST", f"/api/tasks/{_segment(task_id)}/kill", body=body)

    def pause(self, task_id: str) -> Json:
        """``POST /api/tasks/{id}/pause``: ``{"task_id", "number", "state"}``."""
        return self._json("POST", f"/api/tasks/{_segment(task_id)}/pause")

    def resume(self, task_id: str) -> Json:
        """``POST /api/tasks/{id}/resume``: ``{"task_id", "number", "state"}``."""
        return self._json("POST", f"/api/tasks/{_segment(task_id)}/resume")

    def logs(
        self,
        task_id: str,
        stream: Stream = "stdout",
        offset: int | None = None,
        tail: int | None = None,
    ) -> LogSlice:
        """The task's output from ``offset`` (at most 8 MiB an answer), or its last ``tail``
        lines, and the offset to continue from (``X-Next-Offset``)."""
        answer = self._send(
            "GET", _log_path(task_id, stream), params=_log_params(offset, tail, follow=False)
        )
        header = answer.headers.get("x-next-offset")
        return LogSlice(
            answer.body,
            int(header) if header and header.isdigit() else None,
            "x-tail-clamped" in answer.headers,
        )

    def follow_logs(
        self,
        task_id: str,
        stream: Stream = "stdout",
        offset: int | None = None,
        tail: int | None = None,
    ) -> Iterator[bytes]:
        """The task's output as it is written, until the task ends (``?follow=1``)."""
        path = _log_path(task_id, stream)
        yield from self._stream("GET", path, _log_params(offset, tail, follow=True))

    def wait(
        self,
        task_ids: Sequence[str],
        poll_interval: float = 1.0,
        timeout: float | None = None,
        on_done: Callable[[Json], None] | None = None,
    ) -> list[Json]:
        """Poll until every task is done; the final documents in ``task_ids`` order.

        ``on_done`` is called once per task as it is seen done. Raises ``TimeoutError``
        after ``timeout`` seconds.
        """
        from projections.tasks import ENDED_STATES  # not on the import path of `task submit`

        deadline = None if timeout is None else time.monotonic() + timeout
        done: dict[str, Json] = {}
        while True:
            for task_id in task_ids:
                if task_id in done:
                    continue
                task = self.task(task_id)
                # ``lost`` is not final in the state machine (a late report may still
                # settle it), but a client has nothing more to wait for once its node is gone.
                if task["state"] in ENDED_STATES:
                    done[task_id] = task
                    if on_done is not None:
                        on_done(task)
            if len(done) == len(set(task_ids)):
                return [done[task_id] for task_id in task_ids]
            if deadline is not None and time.monotonic() >= deadline:
                waiting = ", ".join(t for t in task_ids if t not in done)
                raise TimeoutError(f"still not done after {timeout}s: {waiting}")
            time.sleep(poll_interval)

    # --- jobs and volumes (docs/jobs.md) ----------------------------------------------

    def submit_job(self, request: Json, workdir: bytes | None = None) -> Json:
        """``POST /api/jobs``: ``{"job_id", "name", "num_nodes", "ranks", "ignored"}``.

        With ``workdir`` (a gzip'd tar of the folder's contents) the request goes as
        ``multipart/form-data``: the JSON in the ``job`` field, the archive as a file."""
        if workdir is None:
            return self._json("POST", "/api/jobs", body=request)
        boundary = f"hakuriver-{time.time_ns():x}"
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="job"\r\n'
            "Content-Type: application/json\r\n\r\n".encode()
            + json.dumps(request).encode()
            + b"\r\n",
            f'--{boundary}\r\nContent-Disposition: form-data; name="workdir";'
            ' filename="workdir.tar.gz"\r\nContent-Type: application/gzip\r\n\r\n'.encode()
            + workdir
            + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        raw = (b"".join(parts), f"multipart/form-data; boundary={boundary}")
        return self._json("POST", "/api/jobs", raw=raw)

    def jobs(self, *, all_users: bool = False, details: bool = False) -> Json:
        """``GET /api/jobs``: ``{"jobs": [...], "total"}``, newest first (``details``: a
        queued job's ``why`` too)."""
        params: dict[str, str | int] = {"all_users": 1} if all_users else {}
        if details:
            params["details"] = 1
        return self._json("GET", "/api/jobs", params=params)

    def job(self, job_id: str) -> Json:
        """``GET /api/jobs/{id}``: the job with its ranks."""
        return self._json("GET", f"/api/jobs/{_segment(job_id)}")

    def job_log_records(
        self,
        job_id: str,
        *,
        rank: int | None = None,
        follow: bool,
        offsets: Mapping[int, int] | None = None,
    ) -> Iterator[Json]:
        """``GET /api/jobs/{id}/logs?format=ndjson``: the answer's records as they arrive:
        ``{"from"}`` first, then ``{"rank", "offset", "data"}`` (``data``: base64) and, while
        following, ``{"alive": true}`` after each 10 s without output, then ``{"end"}``
        unless the answer was cut. ``offsets``: where to resume, per rank."""
        params: dict[str, str | int] = {"format": "ndjson"}
        if follow:
            params["follow"] = 1
        if rank is not None:
            params["rank"] = rank
        if offsets:
            params["from"] = ",".join(f"{r}:{o}" for r, o in sorted(offsets.items()))
        path = f"/api/jobs/{_segment(job_id)}/logs"
        pending = b""
        # A following answer carries a keep-alive every 10 s of silence: hearing nothing
        # for longer is a host gone without a word (a power cut, a cut cable).
        idle = follow_idle_s() if follow else None
        for piece in self._stream("GET", path, params, idle_s=idle):
            pending += piece
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield self._record(path, line)
        # What is left without its newline is a record cut off: dropped (the caller
        # sees no ``end`` and resumes from the last whole record's offsets).

    @staticmethod
    def _record(path: str, line: bytes) -> Json:
        """One ndjson record of a log answer."""
        try:
            record = json.loads(line)
        except ValueError:
            raise ApiError(
                200, "bad_answer", None, f"GET {path}: a record that is not JSON"
            ) from None
        if not isinstance(record, dict):
            raise ApiError(200, "bad_answer", None, f"GET {path}: a record not an object")
        return record

    def stop_job(self, job_id: str) -> Json:
        """``POST /api/jobs/{id}/stop``: ``{"stopped": [ids]}``."""
        return self._json("POST", f"/api/jobs/{_segment(job_id)}/stop")

    def stop_jobs(
        self, job_ids: Sequence[str] = (), *, all: bool = False, all_users: bool = False
    ) -> Json:
        """``POST /api/jobs/stop``: the jobs named, or all of mine (everyone's)."""
        body: Json = {"all": True, "all_users": all_users} if all else {"job_ids": list(job_ids)}
        return self._json("POST", "/api/jobs/stop", body=body)

    def volumes(self) -> list[Json]:
        """``GET /api/volumes``."""
        volumes: list[Json] = self._json("GET", "/api/volumes")["volumes"]
        return volumes

    def create_volume(self, name: str) -> Json:
        """``POST /api/volumes``: ``{"name", "path"}``."""
        return self._json("POST", "/api/volumes", body={"name": name})

    # --- nodes and health --------------------------------------------------------

    def nodes(self) -> list[Json]:
        """``GET /api/nodes``: every node that ever registered."""
        nodes: list[Json] = self._json("GET", "/api/nodes")["nodes"]
        return nodes

    def node(self, name: str) -> Json:
        """``GET /api/nodes/{name}``."""
        return self._json("GET", f"/api/nodes/{_segment(name)}")

    def health(self) -> Json:
        """``GET /api/summary``: the cluster's summary (``/api/health`` says only "ok")."""
        return self._json("GET", "/api/summary")

    # --- environments (docs/environments.md) -----------------------------------------

    def env_containers(self) -> list[Json]:
        """``GET /api/environments/containers``."""
        found: list[Json] = self._json("GET", "/api/environments/containers")["containers"]
        return found

    def env_create(self, image: str, name: str) -> Json:
        """``POST /api/environments/containers``: create and start an environment container."""
        return self._json(
            "POST", "/api/environments/containers", body={"image": image, "name": name}
        )

    def env_create_progress(self, image: str, name: str) -> Iterator[Json]:
        """``POST /api/environments/containers?progress=1``: the pull's progress lines,
        the last one ``done`` with the container. An ``error`` line is raised as ApiError.

        No read timeout but an idle one: the host sends a line at least every few seconds
        however long the pull takes, so only a host gone is silent that long."""
        body = json.dumps({"image": image, "name": name}).encode()
        headers = {"Content-Type": "application/json"}
        stream = self._stream(
            "POST", "/api/environments/containers", {"progress": "1"}, headers, 60.0, body
        )
        yield from _steps(stream, "create_failed")

    def env_action(self, name: str, action: Literal["start", "stop"]) -> Json:
        """Start or stop an environment container."""
        return self._json("POST", f"/api/environments/containers/{_segment(name)}/{action}")

    def env_delete(self, name: str) -> Json:
        """``DELETE /api/environments/containers/NAME``."""
        return self._json("DELETE", f"/api/environments/containers/{_segment(name)}")

    def env_tarballs(self) -> Json:
        """``GET /api/environments/tarballs``: ``{"folder", "tarballs"}``."""
        return self._json("GET", "/api/environments/tarballs")

    def env_package(self, name: str) -> Iterator[Json]:
        """``POST /api/environments/NAME/tar``: its progress lines, the last one ``done``.

        An ``error`` line (the packaging failed after it started) is raised as ApiError.
        """
        stream = self._stream("POST", f"/api/environments/{_segment(name)}/tar", {})
        yield from _steps(stream, "packaging_failed")

    def join(self, node: str) -> Json:
        """``POST /api/join``: this client's join token for node ``node``'s credential."""
        return self._json("POST", "/api/join", body={"node": node})

    def ws_url(self, path: str) -> str:
        """The websocket URL of an API path."""
        base = self.base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return base + path

    def ws_ssl(self) -> SSLContext | None:
        """The TLS context for this host's websockets: the pinned CA's; None: the default."""
        if self._trust is None:
            return None
        try:
            return self._trust.context()
        except OSError as exc:
            raise self._unreachable(exc) from None

    # --- plumbing ----------------------------------------------------------------------

    def _json(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: Json | None = None,
        raw: tuple[bytes, str] | None = None,
    ) -> Json:
        answer = self._send(method, path, params=params, body=body, raw=raw)
        try:
            document = json.loads(answer.body)
        except ValueError:
            raise ApiError(
                answer.status,
                "bad_answer",
                None,
                f"{method} {path} answered {answer.status} with something that is"
                f" not JSON: {answer.text[:200]!r}",
            ) from None
        if not isinstance(document, dict):
            raise ApiError(
                answer.status, "bad_answer", None, f"{method} {path}: expected an object"
            )
        return document

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: Json | None = None,
        raw: tuple[bytes, str] | None = None,
    ) -> Answer:
        """One request on the kept-alive connection; an error answer raises ``ApiError``.

        ``raw``: a body already encoded, and its content type (a multipart form)."""
        target = self._target(path, params)
        payload = None if body is None else json.dumps(body).encode()
        content_type = "application/json" if payload is not None else ""
        if raw is not None:
            payload, content_type = raw
        conn = self._conn
        if conn.is_open and method != "GET" and time.monotonic() - self._idle_since > _POST_REUSE_S:
            conn.close()
        reused = conn.is_open
        try:
            try:
                got = conn.request(method, target, payload, content_type)
            except (ConnectionError, wire.WireError):
                # A kept-alive connection the server closed meanwhile: a GET is safe to repeat.
                if not (reused and method == "GET"):
                    raise
                conn.close()
                got = conn.request(method, target, payload, content_type)
        except OSError as exc:
            conn.close()
            raise self._unreachable(exc) from None
        self._idle_since = time.monotonic()
        answer = Answer(got.status, got.reason, got.headers, got.body, self.base_url + target)
        if answer.status >= 400:
            raise _error_of(answer, token_sent=bool(self.token))
        return answer

    def _stream(
        self,
        method: str,
        path: str,
        params: Params,
        headers: Mapping[str, str] | None = None,
        idle_s: float | None = None,
        body: bytes | None = None,
    ) -> Iterator[bytes]:
        """An answer's body as it arrives, on a second connection with no read timeout
        (or ``idle_s``: see ``wire``'s ``stream``); ``body``: a POST's (empty if none)."""
        target = self._target(path, params)
        conn = self._stream_conn
        try:
            if body is None and method == "POST":
                body = b""
            got, pieces = conn.stream(method, target, body, headers, idle_s)
            if got.status >= 400:
                body = b"".join(pieces)
                url = self.base_url + target
                answer = Answer(got.status, got.reason, got.headers, body, url)
                raise _error_of(answer, token_sent=bool(self.token))
            yield from pieces
        except OSError as exc:
            conn.close()
            raise self._unreachable(exc) from None

    def _target(self, path: str, params: Params | None) -> str:
        query = urlencode(params, doseq=True) if params else ""
        return self._prefix + path + (f"?{query}" if query else "")

    def _unreachable(self, exc: BaseException) -> ApiError:
        ssl = sys.modules.get("ssl")  # not imported: no TLS was tried
        if ssl is not None and isinstance(exc, ssl.SSLCertVerificationError):
            from events.pinning import refusal

            return Untrusted(self.base_url, refusal(exc, self.ca_fingerprint))
        if isinstance(exc, TimeoutError):
            return Unreachable(self.base_url, "no answer in time")
        if isinstance(exc, ConnectionRefusedError):
            return Unreachable(self.base_url)
        if isinstance(exc, wire.WireError) and self.base_url.startswith("http://"):
            # What a host serving HTTPS does to a plain request.
            hint = f"{exc}; if the host serves HTTPS, use an https:// URL"
            return Unreachable(self.base_url, hint)
        return Unreachable(self.base_url, str(exc) or type(exc).__name__)

    # --- identity: who asks, users, tokens, SSH keys (docs/api.md) ---------------------

    def ui_link(self) -> Json:
        """``POST /api/ui/links``: a one-time dashboard login link for this client's token."""
        return self._json("POST", "/api/ui/links")

    def whoami(self) -> Json:
        """``GET /api/whoami``: the user and the token this client presents."""
        return self._json("GET", "/api/whoami")

    def users(self) -> list[Json]:
        """``GET /api/users`` (admin)."""
        users: list[Json] = self._json("GET", "/api/users")["users"]
        return users

    def add_user(self, name: str, role: str = "user") -> Json:
        """``POST /api/users`` (admin): the new user's document."""
        user: Json = self._json("POST", "/api/users", body={"name": name, "role": role})["user"]
        return user

    def set_role(self, name: str, role: str) -> Json:
        """``POST /api/users/{name}/role`` (admin): the user's document."""
        path = f"/api/users/{_segment(name)}/role"
        user: Json = self._json("POST", path, body={"role": role})["user"]
        return user

    def disable_user(self, name: str) -> Json:
        """``POST /api/users/{name}/disable`` (admin): the user's document."""
        user: Json = self._json("POST", f"/api/users/{_segment(name)}/disable")["user"]
        return user

    def tokens(self, *, all_users: bool = False, user: str | None = None) -> list[Json]:
        """``GET /api/tokens``: this user's tokens; an admin's, everyone's or ``user``'s."""
        params: dict[str, str | int] = {"all": 1} if all_users else {}
        if user is not None:
            params["user"] = user
        tokens: list[Json] = self._json("GET", "/api/tokens", params=params)["tokens"]
        return tokens

    def create_token(
        self,
        *,
        user: str | None = None,
        kind: Literal["user", "join"] = "user",
        name: str | None = None,
        ttl_s: int | Literal["never"] | None = None,
        uses: int | None = None,
    ) -> Json:
        """``POST /api/tokens``: the answer holds the secret ``token``, shown this once.

        ``ttl_s`` None leaves the lifetime to the host; ``"never"`` asks for no expiry.
        """
        body: Json = {"kind": kind}
        for key, value in (("user", user), ("name", name), ("uses", uses)):
            if value is not None:
                body[key] = value
        if ttl_s is not None:
            body["ttl_s"] = None if ttl_s == "never" else ttl_s
        return self._json("POST", "/api/tokens", body=body)

    def revoke_token(self, token_id: str) -> Json:
        """``POST /api/tokens/{id}/revoke``: ``{"id", "revoked"}``."""
        return self._json("POST", f"/api/tokens/{_segment(token_id)}/revoke")

    def revoke_node(self, name: str) -> Json:
        """``POST /api/nodes/{name}/revoke`` (admin): disconnect the node, refuse its credential."""
        return self._json("POST", f"/api/nodes/{_segment(name)}/revoke")

    def forget_node(self, name: str, reason: str = "") -> Json:
        """``POST /api/nodes/{name}/forget`` (admin): remove an offline node for good."""
        body: Json = {"reason": reason} if reason else {}
        return self._json("POST", f"/api/nodes/{_segment(name)}/forget", body=body)

    def keys(self, *, user: str | None = None) -> list[Json]:
        """``GET /api/keys``: this user's SSH public keys (an admin: ``user``'s)."""
        params = {"user": user} if user is not None else None
        keys: list[Json] = self._json("GET", "/api/keys", params=params)["keys"]
        return keys

    def add_key(self, public_key: str, *, user: str | None = None) -> Json:
        """``POST /api/keys``: the key's document (an admin may add one for ``user``)."""
        body: Json = {"public_key": public_key}
        if user is not None:
            body["user"] = user
        key: Json = self._json("POST", "/api/keys", body=body)["key"]
        return key

    def remove_key(self, key_id: str) -> Json:
        """``DELETE /api/keys/{id}``: the answer's document, ``{}`` for an empty one."""
        answer = self._send("DELETE", f"/api/keys/{_segment(key_id)}")
        try:
            document = json.loads(answer.body) if answer.body.strip() else {}
        except ValueError:
            document = {}
        return document if isinstance(document, dict) else {}


def _segment(value: str) -> str:
    """One URL path segment: an id or a node name, escaped."""
    return quote(value, safe="")


def _log_path(task_id: str, stream: Stream) -> str:
    if stream not in ("stdout", "stderr"):
        raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
    return f"/api/tasks/{_segment(task_id)}/{stream}"


def _log_params(offset: int | None, tail: int | None, *, follow: bool) -> dict[str, int]:
    params = {"offset": offset, "tail": tail, "follow": 1 if follow else None}
    return {key: value for key, value in params.items() if value is not None}


def lines_of(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """The lines of a body that arrives in pieces (the last one maybe without a newline)."""
    pending = b""
    for piece in pieces:
        pending += piece
        *whole, pending = pending.split(b"\n")
        yield from whole
    if pending:
        yield pending


def _error_of(answer: Answer, *, token_sent: bool = False) -> ApiError:
    """The ``ApiError`` an error answer describes (its JSON body, or its text)."""
    status = answer.status
    try:
        body = json.loads(answer.body)
    except ValueError:
        body = None
    if isinstance(body, dict) and "message" in body:
        error = ApiError(
            status, str(body.get("error", "error")), body.get("field"), str(body["message"])
        )
    else:
        text = answer.text.strip()[:200] or answer.reason
        error = ApiError(status, "http_error", None, f"HTTP {status} from {answer.url}: {text}")
    error.token_sent = token_sent
    return error


# Where a user keeps a token (the CLI finds it there: cli/hakuriver/credentials.py).
KEEP_TOKEN = "keep it in ~/.hakuriver/token (chmod 600) or $HAKURIVER_TOKEN"


def error_line(exc: ApiError) -> str:
    """What ``error:`` says for an error answer: 401 and 403 say what to do about them."""
    # The host names the Authorization header as the field of a refused credential: no news.
    why = exc.message if exc.field in (None, "", "Authorization") else str(exc)
    if exc.status == 401:
        if exc.token_sent:
            return (
                f"the host refused the token ({why}): get a new one from an admin"
                f" (`hakuriver token create --user YOU`) and {KEEP_TOKEN}"
            )
        return (
            f"the host needs a token and none was given: pass --token TOKEN, or {KEEP_TOKEN};"
            " an admin makes one with `hakuriver token create --user YOU`"
        )
    if exc.status == 403:
        return f"forbidden: {why}"
    return str(exc)


def _steps(stream: Any, code: str) -> Iterator[Json]:
    """The JSON lines of a streamed environment answer; an ``error`` line (the work failed
    after the answer began) is raised as ``ApiError`` with ``code``."""
    for line in lines_of(stream):
        if not line.strip():
            continue
        step: Json = json.loads(line)
        if step.get("step") == "error":
            raise ApiError(
                int(step.get("status") or 500), code, step.get("field"), str(step.get("message"))
            )
        yield step
