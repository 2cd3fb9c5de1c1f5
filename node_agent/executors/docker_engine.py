"""Engine calls that survive an overloaded engine: retried when the failure is transient.

On a small, busy node the engine answers slowly: a create or a start can outlast the
client's timeout (10 s, node_agent/agent.py) and still take effect, and under load the
engine answers some calls with a 500 (``context deadline exceeded`` from containerd) or
drops the connection. Each of those once ended a ``true`` task ``failed`` (issue 19).

What is retried, and why it is safe to:

- a create, by the container's name: when an attempt whose answer was lost did make it,
  the next attempt's 409 finds it (``previous``), and it is used, started or not;
- a start, only after an inspect says the container is still ``created``: a start that
  timed out may have run the container already, and starting an exited container again
  would run the task twice (the inspect waits for the engine's lock on the container, so
  it sees the end of a start still in progress);
- a pause or an unpause, only after an inspect says it did not take effect (the engine
  refuses a second one): node_agent/executors/docker.py ``_freeze``;
- an inspect, a wait, a stop: idempotent.

A 4xx is the task's own fault (an executable not in the image, a bad mount) and is never
retried. When the tries are spent the task fails with the engine's own words.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from node_agent.executors.base import StartFailed

T = TypeVar("T")

# Tries of one engine call before the task fails, and the first pause between two
# (doubling): about 8 s of pauses in all, on top of the calls' own timeouts.
ENGINE_TRIES = 6
ENGINE_PAUSE_S = 0.25


def transient(exc: BaseException) -> bool:
    """Whether an engine call's failure may pass if asked again: no answer in time, a
    dropped connection, or the engine's own error (5xx), not the request's (4xx)."""
    import docker.errors
    import requests.exceptions

    if isinstance(exc, docker.errors.APIError):
        return exc.status_code is not None and exc.status_code >= 500
    return isinstance(exc, (requests.exceptions.Timeout, requests.exceptions.ConnectionError))


def describe(exc: BaseException) -> str:
    """An engine failure in words for a task's message."""
    import docker.errors
    import requests.exceptions

    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    if isinstance(exc, requests.exceptions.Timeout):
        return f"the engine did not answer in time ({exc})"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return f"the connection to the engine failed ({exc})"
    return repr(exc)


def pause(attempt: int) -> float:
    """The pause after failed try ``attempt`` (0-based)."""
    return float(ENGINE_PAUSE_S * 2**attempt)


def retrying(call: Callable[[], T], *, sleep: Callable[[float], Any] = time.sleep) -> T:
    """``call()`` (an idempotent engine call), asked again while it fails transiently."""
    for attempt in range(ENGINE_TRIES - 1):
        try:
            return call()
        except Exception as exc:
            if not transient(exc):
                raise
        sleep(pause(attempt))
    return call()


def create(
    client: Any, image: str, options: dict[str, Any], previous: Callable[[], Any | None]
) -> tuple[Any, bool]:
    """Create the task's container: it, and whether it was there already and started
    (by a previous agent). ``previous()`` is this executor's container of that name, or
    None. Raises ``StartFailed`` with the engine's words, and ``ImageNotFound``."""
    import docker.errors

    last: BaseException | None = None
    for attempt in range(ENGINE_TRIES):
        if attempt:
            time.sleep(pause(attempt - 1))
        try:
            return client.containers.create(image, **options), False
        except docker.errors.ImageNotFound:
            raise
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                if transient(exc):
                    last = exc
                    continue
                raise StartFailed(
                    f"docker could not create the container: {describe(exc)}"
                ) from None
            try:
                found = previous()
            except Exception as lookup:
                if not transient(lookup):
                    raise
                last = lookup
                continue
            if found is None:  # another executor's container holds the name
                raise StartFailed(
                    f"docker could not create the container: {describe(exc)}"
                ) from None
            # Made by an attempt whose answer was lost (never started: start it now), or
            # by a previous agent (started: followed from its last mark).
            return found, found.status != "created"
        except Exception as exc:
            if not transient(exc):
                raise
            last = exc
    assert last is not None
    raise StartFailed(
        f"docker could not create the container ({ENGINE_TRIES} tries): {describe(last)}"
    )


def start(container: Any) -> None:
    """Start a created container once, retrying what is transient; a 4xx and the last
    transient failure are raised as they came (the caller words them)."""
    for attempt in range(ENGINE_TRIES):
        try:
            container.start()
            return
        except Exception as exc:
            if not transient(exc) or attempt == ENGINE_TRIES - 1:
                raise
            time.sleep(pause(attempt))
        # Did the lost start take effect? Only a container still `created` is started again.
        retrying(container.reload)
        if container.status != "created":
            return
