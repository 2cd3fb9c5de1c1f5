"""Environments on the host: persistent containers, packaged into versioned tarballs.

An environment ``NAME`` is a container on the host's engine (``hakuriver-env-NAME``,
labelled ``hakuriver.env=NAME``) that users change through ``docker-shell``, then
package with ``create-tar``: the container is committed as ``hakuriver/NAME:base``
(labelled ``hakuriver.env`` and ``hakuriver.env_timestamp``), saved to
``<shared_dir>/<container_dir>/NAME-<ts>.tar`` and described by ``NAME-<ts>.tar.sha256``
(written safely, older ones pruned: ``env_tarballs.py``; never a global ``docker image
prune``). The runner side is ``node_agent/images.py``. The container is kept up by a
keep-alive that needs nothing from its image (``env_keepalive.py``).

``create_container`` pulls an image the host's engine lacks (``env_pull.py``: bounded
by ``[docker] pull_timeout``, progress to the log and to the caller); a pull that fails
is a clear 404 naming the image and what to do. Every change is an ``env.*`` event.
Docker SDK calls block, so each runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec

from control_plane import env_keepalive
from control_plane.access import HOST, Principal
from control_plane.env_pull import pull_image
from control_plane.env_tarballs import (
    TarballOut,
    list_tarballs,
    next_timestamp,
    prune,
    write_tarball,
)
from control_plane.errors import Conflict, InvalidRequest, NotFound, Unavailable
from control_plane.settings import HostSettings
from events.config import is_no_container
from events.tarballs import ENV_NAME, LABEL_ENV, LABEL_TIMESTAMP, image_of, tarball_name
from events.types import (
    AnyEvent,
    EnvContainerCreated,
    EnvContainerDeleted,
    EnvContainerStarted,
    EnvContainerStopped,
    EnvPackaged,
)

log = logging.getLogger("hakuriver.environments")

T = TypeVar("T")

LABEL_ROLE = "hakuriver.role"
CONTAINER_PREFIX = "hakuriver-env-"
_CHUNK = 1 << 20

# Records the host's facts about its environments, caused by a principal's request.
Record = Callable[[Sequence[AnyEvent], Principal], Awaitable[object]]
Progress = Callable[[dict[str, Any]], None]


def check_name(name: str, field: str = "name") -> str:
    """``name`` if it is a valid environment name (it becomes a Docker repository)."""
    if not ENV_NAME.fullmatch(name):
        raise InvalidRequest(
            field,
            f"invalid environment name {name!r}: lowercase letters and digits, joined by"
            " single '.', '_' or '-' (a Docker repository name; at most 63 characters)",
        )
    if is_no_container(name):
        # `--container null` must keep meaning "no container", whatever exists.
        raise InvalidRequest(field, f"{name!r} means no container; choose another name")
    return name


class ContainerOut(msgspec.Struct, frozen=True, kw_only=True):
    """An environment's container, as listed."""

    name: str
    container: str
    container_id: str
    image: str
    status: str
    created: str


class Environments:
    """The host's environment operations; see the module docstring."""

    def __init__(
        self,
        settings: HostSettings,
        record: Record,
        client: Any = None,
        machine: str | None = None,
    ) -> None:
        self.settings = settings
        self.record = record
        self._client = client
        self.machine = machine  # whose keep-alive to use (None: this host's architecture)
        self.tar_dir = settings.tarball_dir
        self._locks: dict[str, asyncio.Lock] = {}

    # -- plumbing ------------------------------------------------------------------------

    @staticmethod
    async def _call(function: Callable[[], T]) -> T:
        return await asyncio.to_thread(function)

    def engine(self) -> Any:
        """The Docker client (connected on first use); 503 when no engine answers."""
        if self._client is None:
            try:
                import docker

                client = docker.from_env(timeout=600)
                client.ping()
            except Exception as exc:
                raise Unavailable(
                    "docker",
                    f"no Docker engine answers on the host ({type(exc).__name__}: {exc});"
                    " environments need one there",
                ) from None
            self._client = client
        return self._client

    def lock(self, name: str) -> asyncio.Lock:
        """One operation at a time per environment (only valid names get a lock)."""
        return self._locks.setdefault(check_name(name), asyncio.Lock())

    async def _engine_call(self, name: str, function: Callable[[], T]) -> T:
        """An engine call on an environment's container; its refusal is a 409 on ``name``."""
        import docker.errors

        try:
            return await self._call(function)
        except docker.errors.NotFound:
            raise NotFound("name", f"environment container {name!r} is gone") from None
        except docker.errors.APIError as exc:
            raise Conflict("name", f"{name}: {exc.explanation or exc}") from None

    def container(self, name: str) -> Any:
        """The environment's container; 404 when there is none."""
        import docker.errors

        check_name(name)
        try:
            return self.engine().containers.get(CONTAINER_PREFIX + name)
        except docker.errors.NotFound:
            raise NotFound(
                "name",
                f"no environment container {name!r} on the host"
                f" (create it: hakuriver docker create-container IMAGE {name})",
            ) from None

    # -- containers ----------------------------------------------------------------------

    async def list_containers(self) -> list[ContainerOut]:
        """Every environment container on the host's engine."""

        def listing() -> list[ContainerOut]:
            import docker.errors

            engine, found = self.engine(), []
            # One by one: containers.list would raise for one deleted while it lists.
            for listed in engine.api.containers(all=True, filters={"label": LABEL_ENV}):
                with contextlib.suppress(docker.errors.NotFound):
                    found.append(_container_out(engine.containers.get(listed["Id"])))
            return sorted(found, key=lambda c: c.name)

        return await self._call(listing)

    async def create_container(
        self,
        image: str,
        name: str,
        by: Principal = HOST,
        progress: Progress | None = None,
    ) -> ContainerOut:
        """Create and start ``hakuriver-env-NAME`` from ``image``, pulled if the engine
        lacks it (``progress`` gets the pull's summaries, from a worker thread)."""
        check_name(name)
        if not image.strip():
            raise InvalidRequest("image", "give the image to create the environment from")
        async with self.lock(name):
            # A name already taken is refused before a pull that could take minutes.
            await self._call(lambda: self.check_free(name))
            if not await self._call(lambda: self._has_image(image)):
                await pull_image(image, limit_s=self.settings.docker.pull_timeout, report=progress)
            # Once the engine is asked to create it, the container is recorded even if the
            # caller goes away (a client that left, a cancelled request): never one on
            # the engine without its env.container_created.
            return await asyncio.shield(self._create_and_record(image, name, by))

    async def _create_and_record(self, image: str, name: str, by: Principal) -> ContainerOut:
        container = await self._call(lambda: self._create(image, name))
        await self.record(
            [
                EnvContainerCreated(
                    name=name,
                    image=image,
                    container_id=container.id,
                    requested_by=by.user,
                )
            ],
            by,
        )
        return _container_out(container)

    def check_free(self, name: str) -> None:
        """A 409 on ``name`` when its environment container exists already."""
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):
            self.engine().containers.get(CONTAINER_PREFIX + name)
            raise Conflict("name", f"environment container {name!r} already exists on the host")

    def _has_image(self, image: str) -> bool:
        """Whether the host's engine has ``image`` (a malformed reference is a 400)."""
        import docker.errors

        try:
            self.engine().images.get(image)
            return True
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.APIError as exc:
            raise InvalidRequest("image", f"image {image!r}: {exc.explanation}") from None

    def _create(self, image: str, name: str) -> Any:
        import docker.errors

        client = self.engine()
        try:
            base = client.images.get(image)
        except docker.errors.ImageNotFound:
            # Removed between the pull and now (an operator's `docker rmi`).
            raise NotFound(
                "image",
                f"image {image!r} is not on the host's Docker engine (removed meanwhile?):"
                f" run `docker pull {image}` (or `docker load`) on the host, and try again",
            ) from None
        except docker.errors.APIError as exc:
            raise InvalidRequest("image", f"image {image!r}: {exc.explanation}") from None
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(CONTAINER_PREFIX + name)
            raise Conflict("name", f"environment container {name!r} already exists on the host")
        config = base.attrs.get("Config") or {}
        keep_alive = env_keepalive.prepare(self.settings.path("bin"), self.machine)
        options: dict[str, Any] = {
            "name": CONTAINER_PREFIX + name,
            "labels": {
                LABEL_ENV: name,
                LABEL_ROLE: "environment",
                "hakuriver.base_image": image,
                # What to restore when committing: the keep-alive below is not the image's.
                "hakuriver.entrypoint": json.dumps(config.get("Entrypoint") or []),
                "hakuriver.cmd": json.dumps(config.get("Cmd") or []),
            },
            "init": True,  # a small init reaps shell children and stops on SIGTERM
            "detach": True,
            "tty": False,
            **keep_alive.container_options(bool(config.get("Entrypoint"))),
        }
        container = None
        try:
            container = client.containers.create(base.id, **options)
            container.start()
        except docker.errors.APIError as exc:
            if container is not None:  # created but not started: nothing is left behind
                with contextlib.suppress(docker.errors.APIError):
                    container.remove(force=True)
            raise InvalidRequest(
                "image", f"could not create a container from {image!r}: {exc.explanation}"
            ) from None
        problem = env_keepalive.wait_running(container)
        if problem is not None:
            # Nothing is left behind and nothing recorded: the environment does not exist.
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
            raise InvalidRequest(
                "image", f"the container from {image!r} did not stay up: {problem}"
            )
        return container

    def _start(self, name: str, container: Any) -> None:
        """Start an environment's container and wait until its keep-alive really runs."""
        labels = container.labels or {}
        if container.attrs.get("Path") == env_keepalive.MOUNT_POINT:
            # Its keep-alive lives in the data dir: put it back if it was removed.
            env_keepalive.prepare(self.settings.path("bin"), self.machine)
        container.start()
        problem = env_keepalive.wait_running(container)
        if problem is not None:
            image = labels.get("hakuriver.base_image", "its image")
            raise Conflict(
                "name", f"environment {name!r} (from {image}) did not stay up: {problem}"
            )

    async def start_container(self, name: str, by: Principal = HOST) -> ContainerOut:
        """Start a stopped environment container (no-op when running)."""
        async with self.lock(name):
            container = await self._call(lambda: self.container(name))
            await self._engine_call(name, lambda: self._start(name, container))
            await self._call(container.reload)
            await self.record([EnvContainerStarted(name=name, requested_by=by.user)], by)
            return _container_out(container)

    async def stop_container(self, name: str, by: Principal = HOST) -> ContainerOut:
        """Stop an environment container (its changes stay until it is deleted)."""
        async with self.lock(name):
            container = await self._call(lambda: self.container(name))
            await self._engine_call(name, lambda: container.stop(timeout=10))
            await self._call(container.reload)
            await self.record([EnvContainerStopped(name=name, requested_by=by.user)], by)
            return _container_out(container)

    async def delete_container(self, name: str, by: Principal = HOST) -> None:
        """Remove an environment container; its image and tarballs stay."""
        async with self.lock(name):
            container = await self._call(lambda: self.container(name))
            await self._engine_call(name, lambda: container.remove(force=True))
            await self.record([EnvContainerDeleted(name=name, requested_by=by.user)], by)

    # -- packaging -----------------------------------------------------------------------

    async def package(
        self, name: str, progress: Progress | None = None, by: Principal = HOST
    ) -> EnvPackaged:
        """``create-tar``: commit, save under a temporary name, digest, rename, prune."""
        check_name(name)
        report = progress or (lambda _: None)
        async with self.lock(name):
            container = await self._call(lambda: self.container(name))
            event = await self._call(lambda: self._package(name, container, report))
            event = msgspec.structs.replace(event, requested_by=by.user)
            await self.record([event], by)
            return event

    def _package(self, name: str, container: Any, report: Progress) -> EnvPackaged:
        import docker.errors

        client = self.engine()
        self.tar_dir.mkdir(parents=True, exist_ok=True)
        ts = next_timestamp(self.tar_dir, name)
        labels = container.labels or {}
        changes = [
            f"LABEL {LABEL_ENV}={name}",
            f"LABEL {LABEL_TIMESTAMP}={ts}",
            f"CMD {labels.get('hakuriver.cmd', '[]')}",
        ]
        entrypoint = labels.get("hakuriver.entrypoint", "[]")
        if entrypoint != "[]":
            changes.append(f"ENTRYPOINT {entrypoint}")
        report({"step": "commit", "message": f"committing {CONTAINER_PREFIX}{name}"})
        try:
            previous = client.images.get(image_of(name)).id
        except docker.errors.APIError:  # ImageNotFound included
            previous = None
        try:
            image = container.commit(repository=f"hakuriver/{name}", tag="base", changes=changes)
        except docker.errors.APIError as exc:
            raise Conflict("name", f"could not commit {name!r}: {exc.explanation}") from None
        total = int(image.attrs.get("Size") or 0)
        saving = f"saving {tarball_name(name, ts)}"
        report({"step": "save", "bytes": 0, "total": total, "message": saving})
        written, sha, final = write_tarball(
            self.tar_dir,
            name,
            ts,
            client.api.get_image(image_of(name), chunk_size=_CHUNK),
            lambda done: report({"step": "save", "bytes": done, "total": max(total, done)}),
        )
        pruned = prune(self.tar_dir, name, keep=ts)
        report({"step": "prune", "message": f"pruned {len(pruned)} older tarball(s)"})
        if previous is not None and previous != image.id:
            # The old image lost its tag; remove it unless something still uses it.
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(previous, noprune=False)
        return EnvPackaged(
            name=name,
            image=image_of(name),
            tarball=final,
            timestamp=ts,
            size_bytes=written,
            sha256=sha,
        )

    def tarballs(self) -> list[TarballOut]:
        """Every packaged tarball in the shared folder."""
        return list_tarballs(self.tar_dir)

    def close(self) -> None:
        """Close the engine connection."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()


def _container_out(container: Any) -> ContainerOut:
    labels = container.labels or {}
    return ContainerOut(
        name=labels.get(LABEL_ENV, container.name.removeprefix(CONTAINER_PREFIX)),
        container=container.name,
        container_id=container.id,
        image=labels.get("hakuriver.base_image", ""),
        status=container.status,
        created=str(container.attrs.get("Created", "")),
    )
