"""VPS test images, built with no network from what this machine has (nothing pulled).

- ``hakuriver/vps-sshd:<hash>``: busybox-static plus the machine's own OpenSSH server
  (``/usr/sbin/sshd``, ``ssh-keygen``, ``sftp-server``, and ``rsync`` when present) with
  every library ``ldd`` names, at their own paths (the dynamic loader included); an
  ``/etc/passwd`` with root (shell ``/bin/sh``) and the ``sshd`` privilege-separation
  user; a minimal ``/etc/ssh/sshd_config``. Tagged by a hash of what went in, so a changed
  recipe (or an upgraded OpenSSH) builds a new image; ``VPS_SSHD_IMAGE`` is its alias.
- ``hakuriver/vps-nossh:base``: busybox only (a VPS image without sshd).

``vps_images_or_skip()`` returns a client with both, or skips saying why; with
``HAKURIVER_REQUIRE_SSH=1`` (CI) a missing OpenSSH fails instead.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from support.docker_images import engine_or_skip, unavailable

VPS_SSHD_IMAGE = "hakuriver/vps-sshd:base"
VPS_NOSSH_IMAGE = "hakuriver/vps-nossh:base"
# The environment names a TaskSpec gives for them (``image_for`` keeps a full reference).
VPS_SSHD_ENV = VPS_SSHD_IMAGE
VPS_NOSSH_ENV = VPS_NOSSH_IMAGE

SSHD = "/usr/sbin/sshd"
PROGRAMS = (SSHD, "ssh-keygen", "/usr/lib/openssh/sftp-server", "rsync")
RECIPE_VERSION = "1"

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "sshd:x:74:65534:privilege separation:/run/sshd:/bin/false\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\n"
SSHD_CONFIG = (
    "Port 22\n"
    "PermitRootLogin prohibit-password\n"
    "UsePAM no\n"
    "PasswordAuthentication no\n"
    "KbdInteractiveAuthentication no\n"
    "Subsystem sftp /usr/lib/openssh/sftp-server\n"
)


def _programs() -> list[str]:
    """Absolute paths of the OpenSSH programs (and rsync) this machine has."""
    found = []
    for program in PROGRAMS:
        path = program if program.startswith("/") else shutil.which(program)
        if path and os.path.exists(path):
            found.append(os.path.realpath(path) if not program.startswith("/") else path)
    return found


def _libraries(programs: list[str]) -> set[str]:
    """Every library ``ldd`` names for ``programs``, the dynamic loader included."""
    libraries: set[str] = set()
    for program in programs:
        listing = subprocess.run(["ldd", program], capture_output=True, text=True).stdout
        for line in listing.splitlines():
            match = re.search(r"(/\S+) \(0x", line)
            if match:
                libraries.add(match.group(1))
    return libraries


def _file(tar: tarfile.TarFile, name: str, text: str, mode: int = 0o644) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def _directory(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    tar.addfile(info)


def _busybox_rootfs(tar: tarfile.TarFile, busybox: str) -> None:
    for name in ("bin", "etc", "root", "tmp", "shared", "local_temp", "run", "var", "usr"):
        _directory(tar, name, 0o1777 if name == "tmp" else 0o700 if name == "root" else 0o755)
    _directory(tar, "var/empty")
    tar.add(busybox, arcname="bin/busybox")
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet == "busybox":
            continue
        link = tarfile.TarInfo(f"bin/{applet}")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(link)


def _add_with_parents(tar: tarfile.TarFile, path: str, added: set[str]) -> None:
    """Add ``path`` (a file; a symlink is followed) with its directories, once each."""
    parts = Path(path).parts[1:]
    for depth in range(1, len(parts)):
        directory = "/".join(parts[:depth])
        if directory not in added and directory not in ("bin", "etc", "run", "var", "usr"):
            _directory(tar, directory)
            added.add(directory)
    name = "/".join(parts)
    if name not in added:
        tar.add(os.path.realpath(path), arcname=name)
        added.add(name)


def sshd_rootfs(busybox: str, programs: list[str]) -> bytes:
    """The sshd image's rootfs as a tar."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        _busybox_rootfs(tar, busybox)
        added: set[str] = set()
        for path in sorted({*programs, *_libraries(programs)}):
            _add_with_parents(tar, path, added)
        for link in ("usr/bin/ssh-keygen", "usr/sbin/sshd"):
            if link not in added:
                raise RuntimeError(f"/{link} is missing from the sshd image")
        _file(tar, "etc/passwd", PASSWD)
        _file(tar, "etc/group", GROUP)
        _directory(tar, "etc/ssh")
        _file(tar, "etc/ssh/sshd_config", SSHD_CONFIG)
    return buffer.getvalue()


def nossh_rootfs(busybox: str) -> bytes:
    """The no-sshd image's rootfs as a tar."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        _busybox_rootfs(tar, busybox)
        _file(tar, "etc/passwd", PASSWD)
    return buffer.getvalue()


def _recipe_hash(busybox: str, programs: list[str]) -> str:
    digest = hashlib.sha256(RECIPE_VERSION.encode())
    digest.update(Path(__file__).read_bytes())
    for path in [busybox, *programs]:
        stat = os.stat(path)
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def _import(client: Any, rootfs: bytes, reference: str) -> None:
    repository, tag = reference.split(":")
    client.api.import_image_from_data(
        rootfs, repository=repository, tag=tag, changes=["ENV PATH=/usr/sbin:/usr/bin:/bin"]
    )


def build_vps_images(client: Any) -> tuple[str, str]:
    """Build both images when missing or out of date; their references."""
    import docker.errors

    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox is not installed (apt-get install busybox-static)")
    busybox = os.path.realpath(busybox)
    try:
        client.images.get(VPS_NOSSH_IMAGE)
    except docker.errors.ImageNotFound:
        _import(client, nossh_rootfs(busybox), VPS_NOSSH_IMAGE)
    programs = _programs()
    hashed = f"hakuriver/vps-sshd:{_recipe_hash(busybox, programs)}"
    try:
        client.images.get(hashed)
    except docker.errors.ImageNotFound:
        _import(client, sshd_rootfs(busybox, programs), hashed)
    client.images.get(hashed).tag(*VPS_SSHD_IMAGE.split(":"))
    return VPS_SSHD_IMAGE, VPS_NOSSH_IMAGE


def ssh_missing() -> str | None:
    """What this machine lacks to run the SSH tests; None when it has it all."""
    for program in ("ssh", "ssh-keygen"):
        if shutil.which(program) is None:
            return f"no `{program}` here (apt-get install openssh-client)"
    if not os.access(SSHD, os.X_OK):
        return f"no {SSHD} here to build the VPS image from (apt-get install openssh-server)"
    return None


def vps_images_or_skip() -> Any:
    """A Docker client with both VPS images, or skip (fail under HAKURIVER_REQUIRE_SSH=1)."""
    client = engine_or_skip()
    missing = ssh_missing()
    if missing is not None:
        unavailable(missing, "HAKURIVER_REQUIRE_SSH")
    try:
        build_vps_images(client)
    except Exception as exc:
        unavailable(f"cannot build the VPS test images: {exc}", "HAKURIVER_REQUIRE_SSH")
    return client


if __name__ == "__main__":
    from support.docker_images import engine

    found = engine()
    if found is None:
        raise SystemExit("no Docker engine answers")
    print(*build_vps_images(found))
