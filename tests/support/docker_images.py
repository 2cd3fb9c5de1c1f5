"""Test images built locally (no registry is reachable): a busybox rootfs, imported.

``python tests/support/docker_images.py`` builds them (``.ci/run`` does); tests call
``engine_or_skip()`` which returns a client, or skips with the reason (fails instead
when ``HAKURIVER_REQUIRE_DOCKER=1``, as in CI).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

BUSYBOX_IMAGE = "hakuriver/busybox:base"
# One static binary and nothing else (no shell, no tail, no sleep), run as a user that is
# not root: what a distroless or `FROM scratch` image looks like to HakuRiver.
ONE_BINARY_IMAGE = "hakuriver/one-binary:base"


def engine() -> Any | None:
    """A Docker client whose engine answers, or None."""
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
        return client
    except Exception:
        return None


def _rootfs_tar(busybox: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "tmp", "etc", "shared", "local_temp", "root"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        applets = subprocess.run(
            [busybox, "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        passwd = b"root:x:0:0:root:/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    return buffer.getvalue()


def build_images(client: Any) -> str:
    """Import the busybox image if it is missing; its reference."""
    import docker.errors

    try:
        client.images.get(BUSYBOX_IMAGE)
        return BUSYBOX_IMAGE
    except docker.errors.ImageNotFound:
        pass
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox is not installed (apt-get install busybox-static)")
    repository, tag = BUSYBOX_IMAGE.split(":")
    client.api.import_image_from_data(
        _rootfs_tar(busybox),
        repository=repository,
        tag=tag,
        changes=["ENV PATH=/bin", 'CMD ["/bin/sh"]'],
    )
    return BUSYBOX_IMAGE


def build_one_binary_image(client: Any) -> str:
    """Import ``ONE_BINARY_IMAGE`` (busybox as ``/server``, no applet links) if missing."""
    import docker.errors

    try:
        client.images.get(ONE_BINARY_IMAGE)
        return ONE_BINARY_IMAGE
    except docker.errors.ImageNotFound:
        pass
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox is not installed (apt-get install busybox-static)")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(busybox, arcname="server")
    repository, tag = ONE_BINARY_IMAGE.split(":")
    client.api.import_image_from_data(
        buffer.getvalue(),
        repository=repository,
        tag=tag,
        changes=['ENTRYPOINT ["/server"]', "USER 65532"],
    )
    return ONE_BINARY_IMAGE


def unavailable(reason: str, required_by: str) -> NoReturn:
    """Skip the test saying why, or fail it where ``$required_by`` is 1 (as in CI)."""
    if os.environ.get(required_by) == "1":
        pytest.fail(f"{reason} ({required_by}=1 requires it)")
    pytest.skip(reason)


def engine_or_skip() -> Any:
    """A client with the test images, or skip (fail in CI) saying why."""
    client = engine()
    if client is None:
        unavailable("no Docker engine answers (start dockerd; CI does)", "HAKURIVER_REQUIRE_DOCKER")
    try:
        build_images(client)
    except Exception as exc:
        unavailable(f"cannot build the test image: {exc}", "HAKURIVER_REQUIRE_DOCKER")
    return client


def unique_environment() -> Iterator[str]:
    """A fixture's body: a unique environment name (skips without an engine); its
    containers and images are removed afterwards."""
    import docker.errors

    client = engine_or_skip()
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    for container in client.containers.list(
        all=True, sparse=True, filters={"label": f"hakuriver.env={name}"}
    ):
        container.remove(force=True)
    for image in client.images.list(filters={"label": f"hakuriver.env={name}"}):
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(image.id, force=True)


if __name__ == "__main__":
    found = engine()
    if found is None:
        raise SystemExit("no Docker engine answers")
    print(build_images(found))
