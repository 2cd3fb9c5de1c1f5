"""A real image registry on loopback, for the tests of image pulls (nothing from the
internet): Debian's ``docker-registry`` (distribution v2) with its storage in a temporary
folder. Docker trusts registries on 127.0.0.0/8 over plain HTTP by default.

``LocalRegistry`` starts it and waits until ``GET /v2/`` answers; ``push_unique_image``
pushes an image of one layer that exists nowhere else (a marker file holds its tag), then
removes it from the engine, so a pull must really download it.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from support.cluster import free_port
from support.docker_images import _rootfs_tar, engine_or_skip, unavailable
from support.waiting import wait_until

MARKER = "/hakuriver-pull-marker"


def registry_binary() -> str:
    """The registry's executable, or skip (fail where Docker is required) saying why."""
    found = shutil.which("docker-registry") or (
        "/usr/bin/docker-registry" if Path("/usr/bin/docker-registry").exists() else None
    )
    if found is None:
        unavailable(
            "docker-registry is not installed (apt-get install docker-registry)",
            "HAKURIVER_REQUIRE_DOCKER",
        )
    return found


class LocalRegistry:
    """``docker-registry serve`` on 127.0.0.1:<free port>; ``address`` is host:port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalRegistry:
        binary = registry_binary()
        config = self.root / "registry.yml"
        self.root.mkdir(parents=True, exist_ok=True)
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'storage'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.address}\n"
        )
        log = (self.root / "registry.log").open("ab")
        self.process = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        try:
            wait_until(self._answers, timeout=30, interval=0.05)
        except BaseException:  # never answered: not left running behind the failure
            self.__exit__(None, None, None)
            raise
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            log = (self.root / "registry.log").read_text(errors="replace")
            raise AssertionError(f"docker-registry exited ({self.process.returncode}):\n{log}")
        try:
            return httpx.get(f"http://{self.address}/v2/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def push_unique_image(client: Any, registry: LocalRegistry) -> str:
    """Push an image found nowhere else to ``registry`` and remove it from the engine;
    its reference (``MARKER`` in it holds the tag)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        unavailable("busybox is not installed", "HAKURIVER_REQUIRE_DOCKER")
    tag = f"t{uuid.uuid4().hex[:12]}"
    repository = f"{registry.address}/hakuriver-test/base"
    buffer = io.BytesIO()
    rootfs_bytes = io.BytesIO(_rootfs_tar(busybox))
    with (
        tarfile.open(fileobj=buffer, mode="w") as tar,
        tarfile.open(fileobj=rootfs_bytes) as rootfs,
    ):
        for member in rootfs.getmembers():
            tar.addfile(member, rootfs.extractfile(member) if member.isfile() else None)
        marker = tag.encode() + b"\n"
        info = tarfile.TarInfo(MARKER.lstrip("/"))
        info.size = len(marker)
        tar.addfile(info, io.BytesIO(marker))
    client.api.import_image_from_data(
        buffer.getvalue(),
        repository=repository,
        tag=tag,
        changes=["ENV PATH=/bin", 'CMD ["/bin/sh"]'],
    )
    reference = f"{repository}:{tag}"
    try:
        for line in client.api.push(repository, tag=tag, stream=True, decode=True):
            assert "error" not in line, line
    finally:  # pushed or not, the engine keeps no copy
        remove_image(client, reference)
    return reference


def remove_image(client: Any, reference: str, environment: str | None = None) -> None:
    """Remove ``reference`` from the engine if it is there, after the containers and
    images of ``environment`` (made from it): while one exists, a removal would only
    untag it and leave a nameless image behind."""
    import docker.errors

    if environment is not None:
        for container in client.containers.list(
            all=True, sparse=True, filters={"label": f"hakuriver.env={environment}"}
        ):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        # Its packaged image is a child of ``reference``'s: it goes first.
        for child in client.images.list(filters={"label": f"hakuriver.env={environment}"}):
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(child.id, force=True)
    with contextlib.suppress(docker.errors.ImageNotFound):
        image = client.images.get(reference)
        client.images.remove(image.id, force=True)


@contextlib.contextmanager
def registry_with_unique_image(root: Path) -> Iterator[tuple[Any, LocalRegistry, str]]:
    """The engine, a registry on loopback under ``root``, and the reference of an image
    found only there (removed from the engine afterwards): what the pull tests pull."""
    client = engine_or_skip()
    with LocalRegistry(root) as running:
        reference = push_unique_image(client, running)
        try:
            yield client, running, reference
        finally:
            remove_image(client, reference)
