"""A disk that fails on purpose: a slow FUSE passthrough (the small tmpfs to fill is
``support.small_disk``).

``SlowFs(backing, path, delay_ms)`` mounts ``backing`` at ``path`` through
``support/slowfs.py``, a FUSE passthrough that sleeps before each read, write and fsync
(see that file for why FUSE).

It needs root (mount); ``close()`` unmounts (lazily, so a process that still holds a file
cannot keep the mount) and is safe to call twice. The processes using the mount must be
this test's and stopped first: the fixtures stop the cluster before the mount.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from support.waiting import wait_until

SLOWFS = Path(__file__).with_name("slowfs.py")
# The FUSE binding: Debian's python3-fusepy (module ``fusepy``) for the system Python, which
# needs no compiler and no change to the project's lock file; ``fuse`` is PyPI's name.
SYSTEM_PYTHON = "/usr/bin/python3"


def _mounted(path: Path) -> bool:
    return os.path.ismount(path)


def mount_unavailable() -> str | None:
    """Why mounting a tmpfs is not possible here (None when it is)."""
    if os.geteuid() != 0:
        return "disk faults need root (mount)"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "disk faults need mount and umount (util-linux)"
    return None


def _umount(path: Path) -> None:
    if _mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def slowfs_unavailable() -> str | None:
    """Why the slow FUSE disk cannot be mounted here (None when it can)."""
    reason = mount_unavailable()
    if reason:
        return reason
    if not Path("/dev/fuse").exists():
        return "the slow disk needs /dev/fuse (the kernel's FUSE)"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import fusepy"], capture_output=True, timeout=30, check=False
    )
    if probe.returncode != 0:
        return (
            "the slow disk needs Debian's python3-fusepy (and libfuse2) for /usr/bin/python3:"
            " apt-get install python3-fusepy"
        )
    return None


class SlowFs:
    """``backing`` seen at ``path`` through a FUSE passthrough that waits ``delay_ms``
    before each read, write and fsync: a slow disk."""

    def __init__(self, backing: Path, path: Path, *, delay_ms: float, log: Path) -> None:
        self.backing = backing
        self.path = path
        self.delay_ms = delay_ms
        self.log = log
        self.server: subprocess.Popen[bytes] | None = None

    def mount(self) -> SlowFs:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.server = subprocess.Popen(
                [SYSTEM_PYTHON, str(SLOWFS), str(self.backing), str(self.path), str(self.delay_ms)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def up() -> bool:
            assert self.server is not None
            if self.server.poll() is not None:
                raise AssertionError(f"slowfs exited: {self.log.read_text()[-2000:]}")
            return _mounted(self.path)

        wait_until(up, timeout=20, interval=0.02)
        return self

    def measured_write_ms(self) -> float:
        """How long one small write and fsync take on the mount, in milliseconds."""
        probe = self.path / ".chaos-probe"
        started = time.monotonic()
        with probe.open("wb") as out:
            out.write(b"x")
            out.flush()
            os.fsync(out.fileno())
        elapsed = (time.monotonic() - started) * 1000
        probe.unlink()
        return elapsed

    def close(self) -> None:
        _umount(self.path)
        if self.server is not None:
            with contextlib.suppress(ProcessLookupError):
                self.server.kill()
            self.server.wait(30)
            self.server = None
