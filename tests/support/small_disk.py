"""A small, real file system that tests can fill: a tmpfs mounted on a test's folder.

``small_disk(path, mib)`` mounts a tmpfs of that size on ``path`` (root, or a
mount-capable container, is needed: the test is skipped saying so otherwise) and
unmounts it afterwards. ``Filler`` fills it to the last byte with one file, and frees it
again, so a test can make the disk full while the processes under test keep running.

Once full, a small write may still land: a file whose last page is not full (a WAL)
can grow inside it. Tests fill, then write until the failure shows.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

CHUNK = 1 << 16


@contextlib.contextmanager
def small_disk(path: Path, mib: int) -> Iterator[Path]:
    """``path`` as a tmpfs of ``mib`` MiB for the block; skips the test where mount is refused."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a small disk is a tmpfs mount: needs root (run the suite as root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        # Lazy: a process that still holds a file there (a killed task) must not keep it.
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


class Filler:
    """One file that takes all the free space of a file system, until ``free()``."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "filler"

    def fill(self) -> int:
        """Write until the file system refuses (ENOSPC); the bytes written."""
        written = 0
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            block = b"\0" * CHUNK
            size = CHUNK
            while size:
                try:
                    written += os.write(fd, block[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    size //= 2  # the last pages, down to the last byte
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        """Give the space back."""
        self.path.unlink(missing_ok=True)


def free_bytes(folder: Path) -> int:
    """The bytes free on the file system of ``folder``."""
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize
