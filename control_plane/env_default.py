"""The default environment: the one tasks without ``--container`` run in.

Seeds 001/003: at start the host makes ``[docker] default_container_name`` (built-in
``hakuriver-base``) from ``[docker] initial_base_image`` when it has no tarball yet,
pulling the image if its engine lacks it (``env_pull.py``: progress in the log, bounded
by ``[docker] pull_timeout``, abandoned at host stop). This runs in the background from
the host's start; a submission without ``--container`` waits for it (``ready``) and is
refused with what to do when it could not be made.

Where no Docker engine answers the host (``resolve``, at start), the built-in default
becomes ``NULL``, plain processes, with a one-line notice; a name the operator chose
stays, and is refused clearly (docs/decisions.md, "Docker is the default environment
where the host has an engine...").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec

from control_plane.access import HOST
from control_plane.environments import CONTAINER_PREFIX, Environments, check_name
from control_plane.errors import DomainError, Unavailable
from control_plane.settings import DEFAULT_ENVIRONMENT, HostSettings
from events.config import NO_CONTAINER, is_no_container
from events.tarballs import image_of

log = logging.getLogger("hakuriver.host.environments")


def engine_problem(timeout: float = 5.0) -> str | None:
    """Why no Docker engine answers this machine (``DOCKER_HOST`` and the rest of the
    environment, as the host's own client); None when one does."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return None


def resolve(
    settings: HostSettings, *, local_runner_docker: bool = True
) -> tuple[HostSettings, str | None]:
    """The settings the host runs with, and the one-line notice when the default
    environment falls back to ``NULL``.

    Only the built-in default (``hakuriver-base``) falls back, and only when no Docker
    engine answers the host (or, for ``hakuriver up``, when its local runner is told
    not to use one: ``local_runner_docker``). A name the operator chose is kept, so a
    task never runs outside an environment its owner was promised.
    """
    docker = settings.docker
    if docker.default_container_name != DEFAULT_ENVIRONMENT:
        return settings, None
    why: str | None = "the local runner does not use Docker: [runner] docker = false"
    if local_runner_docker:
        why = engine_problem()
    if why is None:
        return settings, None
    plain = msgspec.structs.replace(docker, default_container_name=NO_CONTAINER)
    notice = (
        f"no Docker engine for the default environment {DEFAULT_ENVIRONMENT!r} ({why}):"
        " tasks without --container run as plain processes (NULL); start Docker and"
        " restart the host to get it"
    )
    return msgspec.structs.replace(settings, docker=plain), notice


class DefaultEnvironment:
    """Prepares the default environment once, and says whether it is usable."""

    def __init__(self, envs: Environments) -> None:
        self.envs = envs
        self.name = envs.settings.docker.default_container_name
        self.problem: str | None = None  # why the default environment is missing
        self._preparing: asyncio.Task[None] | None = None
        self.stage = "starting"  # what the making is doing now, for a 503's message

    def prepare_soon(self) -> None:
        """Start preparing it in the background (host start)."""
        if is_no_container(self.name) or self._preparing is not None:
            return
        self._preparing = asyncio.create_task(self._prepare(self.name))

    async def ready(self) -> str | None:
        """Wait for the default environment; None when usable, else what to do.

        Still being made after ``[docker] default_wait``: ``Unavailable`` (503,
        retryable) naming the stage (the pull's layers and bytes), so a first pull never
        holds a request open for minutes; the making goes on.
        """
        self.prepare_soon()  # a request may come before the start hook ran
        if self._preparing is not None:
            try:
                wait_s = self.envs.settings.docker.default_wait
                await asyncio.wait_for(asyncio.shield(self._preparing), wait_s)
            except TimeoutError:
                raise Unavailable(
                    "container",
                    f"the default environment {self.name!r} is still being made"
                    f" ({self.stage}); submit again in a moment, or pass --container NULL"
                    " to run the task as a plain process",
                ) from None
        if self.problem is not None and await asyncio.to_thread(self._packaged):
            # The user followed the refusal's advice (create-container, create-tar), or
            # copied a tarball in: served from now on, no restart needed.
            self.problem = None
        return self.problem

    def _packaged(self) -> bool:
        return any(t.name == self.name for t in self.envs.tarballs())

    def close(self) -> None:
        """Stop preparing (host stop)."""
        if self._preparing is not None:
            self._preparing.cancel()

    async def _prepare(self, name: str) -> None:
        """Package the default environment from ``initial_base_image`` if it has no tarball.

        With a tarball already there nothing happens. Otherwise the host creates the
        container from ``hakuriver/NAME:base`` if its engine has it, else from
        ``initial_base_image`` (pulled if missing), and packages it. If it cannot,
        ``problem`` says what to do, and submissions without ``--container`` are refused
        with it.
        """
        envs = self.envs
        try:
            check_name(name, "default_container_name")
        except DomainError as exc:
            self.problem = f"[docker] default_container_name: {exc.message}"
            return
        if await asyncio.to_thread(self._packaged):
            self.problem = None
            return
        base = envs.settings.docker.initial_base_image
        hint = (
            f"the default environment {name!r} has no tarball in {envs.tar_dir} yet and the"
            f" host could not create it from initial_base_image {base!r}"
        )
        fix = (
            f"; make the image reachable (or `docker load` it on the host) and restart the"
            f" host, or build the environment yourself: hakuriver docker create-container"
            f" IMAGE {name} && hakuriver docker create-tar {name}; or pass --container NULL"
            " to run the task as a plain process"
        )
        try:
            engine = await asyncio.to_thread(envs.engine)
            if not await asyncio.to_thread(_has_container, engine, name):
                source = await asyncio.to_thread(_local_image, engine, image_of(name))
                log.info("making the default environment %r from %s", name, source or base)
                self.stage = f"creating its container from {source or base}"
                # create_container pulls initial_base_image if the engine lacks it.
                await envs.create_container(source or base, name, by=HOST, progress=self._pulled)
            self.stage = "packaging it into a tarball"
            await envs.package(name, by=HOST)
            self.problem = None
            log.info("packaged the default environment %r", name)
        except DomainError as exc:
            self.problem = f"{hint} ({exc.message}){fix}"
            log.warning("%s", self.problem)
        except Exception as exc:  # an engine failure must not stop the host
            self.problem = f"{hint} ({type(exc).__name__}: {exc}){fix}"
            log.exception("preparing the default environment failed")

    def _pulled(self, step: dict[str, Any]) -> None:
        """The pull's summary (from its worker thread): kept as the stage a 503 names."""
        done, total = int(step.get("bytes") or 0), int(step.get("total") or 0)
        size = f", {done >> 20} of {total >> 20} MiB" if total else ""
        self.stage = (
            f"pulling {step.get('image')}: {step.get('layers_done', 0)} of"
            f" {step.get('layers', 0)} layers{size}"
        )


def _has_container(client: Any, name: str) -> bool:
    import docker.errors

    try:
        client.containers.get(CONTAINER_PREFIX + name)
        return True
    except docker.errors.NotFound:
        return False


def _local_image(client: Any, reference: str) -> str | None:
    import docker.errors

    try:
        client.images.get(reference)
        return reference
    except (docker.errors.ImageNotFound, docker.errors.APIError):
        return None
