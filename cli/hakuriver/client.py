"""A small synchronous client for the control plane's REST API (docs/api.md).

One ``httpx.Client`` per ``HakuClient``; every method is one request (``wait``
polls). Failures come back as ``ApiError`` built from the API's JSON error body,
or ``Unreachable`` when there is no control plane to answer.
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, get_args
from urllib.parse import quote

import httpx

from control_plane.actors import ACTOR_HEADER, actor_header_value
from projections.tasks import ENDED_STATES, TaskState

# ``lost`` is not final in the state machine (a late report may still settle it),
# but a client waiting on a task has nothing more to wait for once its node is gone.
DONE_STATES: frozenset[str] = ENDED_STATES
TASK_STATES: tuple[str, ...] = get_args(TaskState)

Stream = Literal["stdout", "stderr"]
Json = dict[str, Any]


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


def login_name() -> str:
    """The user running the CLI: who its requests come from, and the default task owner."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "anonymous"


def actor_headers(user: str | None = None) -> dict[str, str]:
    """The header naming who makes the requests (control_plane/actors.py): sent on every one."""
    return {ACTOR_HEADER: actor_header_value(user or login_name())}


class HakuClient:
    """The control plane's REST API as Python methods returning its JSON documents.

    Every request names ``user`` (default: the login name) as who made it.
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 30.0,
        *,
        transport: httpx.BaseTransport | None = None,
        user: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers=actor_headers(user),
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

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
        """``POST /api/tasks``: ``{"batch_id", "task_ids"}``."""
        return self._json("POST", "/api/tasks", json=request)

    def submit_batch(self, requests: Sequence[Json]) -> Json:
        """``POST /api/batches``: several submit requests as one batch, all or nothing."""
        return self._json("POST", "/api/batches", json={"tasks": list(requests)})

    def task(self, task_id: str) -> Json:
        """``GET /api/tasks/{id}``: one task (a full id or a unique prefix of 8+ characters)."""
        return self._json("GET", f"/api/tasks/{_segment(task_id)}")

    def tasks(
        self,
        status: str | Sequence[str] | None = None,
        node: str | None = None,
        batch: str | None = None,
        owner: str | None = None,
        limit: int | None = None,
    ) -> list[Json]:
        """``GET /api/tasks`` with the given filters, newest first."""
        params: dict[str, str | int] = {}
        if status:
            params["status"] = status if isinstance(status, str) else ",".join(status)
        for key, value in (("node", node), ("batch", batch), ("owner", owner), ("limit", limit)):
            if value is not None:
                params[key] = value
        tasks: list[Json] = self._json("GET", "/api/tasks", params=params)["tasks"]
        return tasks

    def batch(self, batch_id: str) -> Json:
        """``GET /api/batches/{batch_id}``: ``{"batch_id", "tasks"}``."""
        return self._json("GET", f"/api/batches/{_segment(batch_id)}")

    def kill(
        self, task_id: str, *, requested_by: str | None = None, reason: str | None = None
    ) -> Json:
        """``POST /api/tasks/{id}/kill``: ``{"task_id", "state"}``."""
        body = {k: v for k, v in (("requested_by", requested_by), ("reason", reason)) if v}
        return self._json("POST", f"/api/tasks/{_segment(task_id)}/kill", json=body)

    def pause(self, task_id: str) -> Json:
        """``POST /api/tasks/{id}/pause``: ``{"task_id", "state"}``."""
        return self._json("POST", f"/api/tasks/{_segment(task_id)}/pause")

    def resume(self, task_id: str) -> Json:
        """``POST /api/tasks/{id}/resume``: ``{"task_id", "state"}``."""
        return self._json("POST", f"/api/tasks/{_segment(task_id)}/resume")

    def logs(
        self,
        task_id: str,
        stream: Stream = "stdout",
        offset: int | None = None,
        tail: int | None = None,
    ) -> tuple[bytes, int | None]:
        """The task's output so far and the offset to continue from (``X-Next-Offset``)."""
        response = self._send(
            "GET", _log_path(task_id, stream), params=_log_params(offset, tail, follow=False)
        )
        header = response.headers.get("X-Next-Offset")
        return response.content, int(header) if header and header.isdigit() else None

    def follow_logs(
        self,
        task_id: str,
        stream: Stream = "stdout",
        offset: int | None = None,
        tail: int | None = None,
    ) -> Iterator[bytes]:
        """The task's output as it is written, until the task ends (``?follow=1``)."""
        params = _log_params(offset, tail, follow=True)
        request = self._http.build_request(
            "GET", _log_path(task_id, stream), params=params, timeout=httpx.Timeout(None)
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        try:
            if response.is_error:
                response.read()
                raise _error_of(response)
            yield from response.iter_bytes()
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        finally:
            response.close()

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
        deadline = None if timeout is None else time.monotonic() + timeout
        done: dict[str, Json] = {}
        while True:
            for task_id in task_ids:
                if task_id in done:
                    continue
                task = self.task(task_id)
                if task["state"] in DONE_STATES:
                    done[task_id] = task
                    if on_done is not None:
                        on_done(task)
            if len(done) == len(set(task_ids)):
                return [done[task_id] for task_id in task_ids]
            if deadline is not None and time.monotonic() >= deadline:
                waiting = ", ".join(t for t in task_ids if t not in done)
                raise TimeoutError(f"still not done after {timeout}s: {waiting}")
            time.sleep(poll_interval)

    # --- nodes and health --------------------------------------------------------

    def nodes(self) -> list[Json]:
        """``GET /api/nodes``: every node that ever registered."""
        nodes: list[Json] = self._json("GET", "/api/nodes")["nodes"]
        return nodes

    def node(self, name: str) -> Json:
        """``GET /api/nodes/{name}``."""
        return self._json("GET", f"/api/nodes/{_segment(name)}")

    def health(self) -> Json:
        """``GET /api/health``: the cluster's summary."""
        return self._json("GET", "/api/health")

    # --- plumbing ----------------------------------------------------------------------

    # --- environments (docs/environments.md) -----------------------------------------

    def env_containers(self) -> list[Json]:
        """``GET /api/environments/containers``."""
        found: list[Json] = self._json("GET", "/api/environments/containers")["containers"]
        return found

    def env_create(self, image: str, name: str) -> Json:
        """``POST /api/environments/containers``: create and start an environment container."""
        return self._json(
            "POST", "/api/environments/containers", json={"image": image, "name": name}
        )

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
        path = f"/api/environments/{_segment(name)}/tar"
        try:
            with self._http.stream("POST", path, timeout=httpx.Timeout(30, read=None)) as answer:
                if answer.is_error:
                    answer.read()
                    raise _error_of(answer)
                for line in answer.iter_lines():
                    if not line.strip():
                        continue
                    step: Json = json.loads(line)
                    if step.get("step") == "error":
                        raise ApiError(
                            int(step.get("status") or 500),
                            "packaging_failed",
                            step.get("field"),
                            str(step.get("message")),
                        )
                    yield step
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def ws_url(self, path: str) -> str:
        """The websocket URL of an API path."""
        base = self.base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return base + path

    def _json(self, method: str, path: str, **kwargs: Any) -> Json:
        response = self._send(method, path, **kwargs)
        try:
            document = response.json()
        except ValueError:
            raise ApiError(
                response.status_code,
                "bad_answer",
                None,
                f"{method} {path} answered {response.status_code} with something that is"
                f" not JSON: {response.text[:200]!r}",
            ) from None
        if not isinstance(document, dict):
            raise ApiError(
                response.status_code, "bad_answer", None, f"{method} {path}: expected an object"
            )
        return document

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.is_error:
            raise _error_of(response)
        return response

    def _unreachable(self, exc: httpx.TransportError) -> Unreachable:
        if isinstance(exc, httpx.ConnectError):
            return Unreachable(self.base_url)
        if isinstance(exc, httpx.TimeoutException):
            return Unreachable(self.base_url, "no answer in time")
        return Unreachable(self.base_url, str(exc) or type(exc).__name__)


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


def _error_of(response: httpx.Response) -> ApiError:
    """The ``ApiError`` an error answer describes (its JSON body, or its text)."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "message" in body:
        return ApiError(
            status, str(body.get("error", "error")), body.get("field"), str(body["message"])
        )
    text = response.text.strip()[:200] or response.reason_phrase
    return ApiError(status, "http_error", None, f"HTTP {status} from {response.url}: {text}")
