"""Pulling an image onto the host's engine: bounded, cancellable, with progress.

The docker SDK's ``api.pull(stream=True, decode=True)`` yields the engine's JSON lines:
per layer ``{"id", "status", "progressDetail": {"current", "total"}}``, many a second
while bytes arrive, and ``{"error": ...}`` when the pull fails. ``PullProgress`` folds
them into what people read: one log line per layer state change (never one per chunk),
and a summary (bytes of the layers downloaded, their known total, layers done) that
``create-container`` draws as a progress bar.

The pull runs in a daemon thread on an engine client of its own. ``pull_image`` bounds
it (``[docker] pull_timeout``), and when it is abandoned (the timeout, or the awaiting
task cancelled at host stop) shuts the pull's socket down once the engine has answered,
so the thread ends and the engine drops a pull whose client went away; before that
answer the thread is only left behind, and ends with the process: never a hang, never a
thread that keeps the host from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from control_plane.errors import InvalidRequest, NotFound, Unavailable

log = logging.getLogger("hakuriver.host.environments")

Report = Callable[[dict[str, Any]], None]

# A layer's statuses once its bytes are all here; and once it is in the image.
_DOWNLOADED = frozenset(
    {"Verifying Checksum", "Download complete", "Extracting", "Pull complete", "Already exists"}
)
_DONE = frozenset({"Pull complete", "Already exists"})
# How long an abandoned pull's thread may take to notice its socket is gone.
_ABANDON_WAIT_S = 10.0


class PullFailed(Exception):
    """The engine refused or failed the pull; the message is the engine's."""


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


class PullProgress:
    """The engine's pull lines folded into layer states, log lines and a summary."""

    def __init__(self, image: str, say: Callable[[str], None] | None = None) -> None:
        self.image = image
        self.say = say or (lambda text: log.info("%s", text))
        self.layers: dict[str, dict[str, Any]] = {}
        self.message = f"pulling {image}"

    def feed(self, line: dict[str, Any]) -> bool:
        """Fold one line; True when the summary changed. ``PullFailed`` on an error line."""
        if line.get("error") or line.get("errorDetail"):
            detail = line.get("errorDetail") or {}
            raise PullFailed(str(line.get("error") or detail.get("message") or line))
        status = str(line.get("status") or "")
        layer = line.get("id")
        if not layer or status.startswith("Pulling from"):
            # The pull's own lines: "Pulling from REPO", "Digest: ...", "Status: ...".
            if status:
                self.message = status
                self.say(f"pulling {self.image}: {status}")
            return bool(status)
        detail = line.get("progressDetail") or {}
        known = self.layers.setdefault(layer, {"status": "", "current": 0, "total": 0})
        if status == "Downloading":
            known["total"] = int(detail.get("total") or known["total"] or 0)
            known["current"] = int(detail.get("current") or 0)
        elif status in _DOWNLOADED:
            known["current"] = known["total"]
        if status != known["status"]:
            known["status"] = status
            size = f" ({_size(known['total'])})" if status == "Downloading" else ""
            self.say(f"pulling {self.image}: layer {layer}: {status}{size}")
        return True

    def summary(self) -> dict[str, Any]:
        """``{"step": "pull", image, bytes, total, layers, layers_done, message}``."""
        layers = self.layers.values()
        return {
            "step": "pull",
            "image": self.image,
            "bytes": sum(layer["current"] for layer in layers),
            "total": sum(layer["total"] for layer in layers),
            "layers": len(self.layers),
            "layers_done": sum(1 for layer in layers if layer["status"] in _DONE),
            "message": self.message,
        }


class _Pull:
    """One pull in a worker thread, which ``abort`` ends from any thread."""

    def __init__(self, image: str, progress: PullProgress, report: Report) -> None:
        self.image = image
        self.progress = progress
        self.report = report
        self.aborted = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None

    def run(self) -> None:
        import docker
        import docker.errors

        try:
            # A client of its own: the response hook must see this pull's answer only.
            client = docker.from_env(timeout=60)
        except docker.errors.DockerException as exc:
            raise PullFailed(f"no Docker engine answers: {exc}") from None
        client.api.hooks["response"].append(self._hold)
        try:
            if self.aborted.is_set():
                return
            for line in client.api.pull(self.image, stream=True, decode=True):
                if self.aborted.is_set():
                    return
                if self.progress.feed(line):
                    self.report(self.progress.summary())
            if not self.aborted.is_set():
                try:
                    client.images.get(self.image)
                except docker.errors.ImageNotFound:
                    raise PullFailed("the engine ended the pull without the image") from None
        except docker.errors.APIError as exc:
            if not self.aborted.is_set():
                raise PullFailed(str(exc.explanation or exc)) from None
        except PullFailed:
            raise
        except Exception as exc:
            # Aborted: the socket was shut down under the read, how an abandoned pull ends.
            if not self.aborted.is_set():
                raise PullFailed(f"{type(exc).__name__}: {exc}") from None
        finally:
            with contextlib.suppress(Exception):
                client.close()

    def _hold(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self._response = response
        if self.aborted.is_set():
            _shut(response)
        return response

    def abort(self) -> None:
        """Stop the pull: the thread's read returns, and the engine sees its client go."""
        self.aborted.set()
        with self._lock:
            response = self._response
        if response is not None:
            _shut(response)


def _shut(response: Any) -> None:
    """Shut the socket of a streamed engine answer down (a close alone would not wake a
    thread blocked reading it). The attribute path is the one the docker SDK itself
    uses to reach the socket of an answer (``APIClient._get_raw_response_socket``)."""
    with contextlib.suppress(Exception):
        raw = response.raw._fp.fp.raw
        sock = getattr(raw, "_sock", raw)
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        response.close()


def _in_daemon_thread(work: Callable[[], None], name: str) -> asyncio.Future[None]:
    """``work()`` in a daemon thread, as a future of this loop.

    Not the loop's executor: its threads are joined when the process exits, and a pull
    whose registry never answers blocks reading the engine's answer headers, before
    there is a socket ``abort`` can shut. A daemon thread ends with the process (which
    closes the connection, and the engine drops the pull)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def body() -> None:
        error: BaseException | None = None
        try:
            work()
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=body, name=name, daemon=True).start()
    return future


# How an engine says the image is not there to pull (Docker's and registries' words).
_NOT_FOUND_WORDS = ("not found", "manifest unknown", "pull access denied", "does not exist")


def _fix(image: str) -> str:
    return (
        f"put it there yourself (`docker pull {image}` or `docker load` on the host), or"
        " use an image the host has"
    )


async def pull_image(image: str, *, limit_s: float, report: Report | None = None) -> None:
    """Pull ``image`` onto the host's engine, at most ``limit_s`` seconds.

    Progress goes to the log (a line per layer state change) and to ``report`` (a
    summary per change; it is called from the worker thread). A failure is a 404 on
    ``image`` naming the image, the engine's reason and the fix; running out of time a
    503. Cancelling the caller abandons the pull (see the module docstring).
    """
    if not image.strip() or any(c.isspace() for c in image):
        raise InvalidRequest("image", f"invalid image reference {image!r}")
    progress = PullProgress(image)
    pull = _Pull(image, progress, report or (lambda _: None))
    started = time.monotonic()
    log.info("pulling %s onto the host's engine (at most %gs)", image, limit_s)
    job = _in_daemon_thread(pull.run, f"pull {image}")
    # An abandoned pull may still fail on its thread later: its end is read, never left
    # as "exception was never retrieved".
    job.add_done_callback(lambda ended: ended.cancelled() or ended.exception())
    try:
        await asyncio.wait_for(asyncio.shield(job), limit_s)
    except TimeoutError:
        pull.abort()
        await asyncio.wait({job}, timeout=_ABANDON_WAIT_S)
        log.warning("pulling %s: abandoned after %gs ([docker] pull_timeout)", image, limit_s)
        raise Unavailable(
            "image",
            f"pulling {image!r} onto the host's Docker engine did not finish within"
            f" [docker] pull_timeout = {limit_s:g}s: raise it, or {_fix(image)}",
        ) from None
    except asyncio.CancelledError:
        pull.abort()
        log.info("pulling %s: abandoned (the host stops, or its caller went away)", image)
        raise
    except PullFailed as exc:
        log.warning("pulling %s failed: %s", image, exc)
        unknown = any(word in str(exc).lower() for word in _NOT_FOUND_WORDS)
        # The image is unknown where it was asked for: a 404; anything else (no space
        # left, a registry or engine failing) is the host's trouble for now: a 503.
        refusal = NotFound if unknown else Unavailable
        raise refusal(
            "image",
            f"could not pull {image!r} onto the host's Docker engine ({exc}): check the name"
            " and tag, and that the host reaches the registry (a private one needs"
            f" `docker login` on the host); or {_fix(image)}",
        ) from None
    done = progress.summary()
    log.info(
        "pulled %s: %d layer(s), %s, in %.1fs",
        image,
        done["layers"],
        _size(done["total"]),
        time.monotonic() - started,
    )
