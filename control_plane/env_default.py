"""The default environment: the one tasks without ``--container`` run in.

Seeds 001/003: at start the host makes ``[docker] default_container_name`` from
``[docker] initial_base_image`` when it has no tarball yet. This runs in the
background from the host's start; a submission without ``--container`` waits for it
(``ready``) and is refused with what to do when it could not be made
(docs/decisions.md, "The default environment stays NULL...").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from control_plane.access import HOST
from control_plane.environments import CONTAINER_PREFIX, Environments, check_name
from control_plane.errors import DomainError
from events.config import is_no_container
from events.tarballs import image_of

log = logging.getLogger("hakuriver.host.environments")


class DefaultEnvironment:
    """Prepares the default environment once, and says whether it is usable."""

    def __init__(self, envs: Environments) -> None:
        self.envs = envs
        self.name = envs.settings.docker.default_container_name
        self.problem: str | None = None  # why the default environment is missing
        self._preparing: asyncio.Task[None] | None = None

    def prepare_soon(self) -> None:
        """Start preparing it in the background (host start)."""
        if is_no_container(self.name) or self._preparing is not None:
            return
        self._preparing = asyncio.create_task(self._prepare(self.name))

    async def ready(self) -> str | None:
        """Wait for the default environment; None when usable, else what to do."""
        self.prepare_soon()  # a request may come before the start hook ran
        if self._preparing is not None:
            await asyncio.shield(self._preparing)
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

        With a tarball already there nothing happens. Otherwise, when the host's engine
        has the image ``hakuriver/NAME:base`` or ``initial_base_image`` locally, the host
        creates the container and packages it. If it cannot, ``problem`` says what to
        do, and submissions without ``--container`` are refused with it.
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
            f"; load that image on the host (`docker pull {base}` or `docker load`) and"
            f" restart the host, or build it yourself: hakuriver docker create-container"
            f" IMAGE {name} && hakuriver docker create-tar {name}; or pass --container NULL"
            " to run the task as a plain process"
        )
        try:
            engine = await asyncio.to_thread(envs.engine)
            if not await asyncio.to_thread(_has_container, engine, name):
                source = await asyncio.to_thread(_local_image, engine, image_of(name))
                source = source or await asyncio.to_thread(_local_image, engine, base)
                if source is None:
                    self.problem = f"{hint} (not on the host's engine){fix}"
                    log.warning("%s", self.problem)
                    return
                await envs.create_container(source, name, by=HOST)
            await envs.package(name, by=HOST)
            self.problem = None
            log.info("packaged the default environment %r", name)
        except DomainError as exc:
            self.problem = f"{hint} ({exc.message}){fix}"
            log.warning("%s", self.problem)
        except Exception as exc:  # an engine failure must not stop the host
            self.problem = f"{hint} ({type(exc).__name__}: {exc}){fix}"
            log.exception("preparing the default environment failed")


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
