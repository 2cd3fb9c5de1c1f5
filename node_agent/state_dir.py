"""The runner's state directory: private to its user, and held by one runner at a time.

Private: the directory and those the executors keep inside it are mode 0700 and must
belong to the runner's user. They hold the outbox (every event not yet acknowledged,
task specs and their environment values included), the agent's credential, the shims'
records and the shim zygote's socket, whose reach is exactly who can enter the folder.

Held: two runners on one state directory would adopt the same tasks, share one outbox
and, under one node name, take the host's session from each other in turn (issue 14:
tasks ran two and three times). A runner takes an exclusive ``flock`` on
``runner.lock`` inside it for its whole life; the kernel drops it when the process
ends, however it ends, so a crash leaves nothing to clean up. The file says who holds
it (pid, command line) for the refusal. ``flock`` rather than ``fcntl`` record locks:
a second ``take`` in the same process is refused too (record locks are per process).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
import time
from pathlib import Path

LOCK_NAME = "runner.lock"
PRIVATE_MODE = 0o700


class StateDirError(Exception):
    """The state directory cannot be used; the message says why and what to do."""


class StateDirInUse(StateDirError):
    """Another runner holds the state directory; the message names it."""


def private_directory(path: Path | str) -> Path:
    """Make ``path`` (and missing parents) and leave it mode 0700, owned by this user.

    An existing directory with a wider mode (made by an older version) is narrowed; one
    owned by another user, or a symlink, is refused: whoever owns it could read or
    replace what the runner keeps there.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_MODE)
    found = os.lstat(path)
    if not stat.S_ISDIR(found.st_mode):
        raise StateDirError(f"{path} is not a directory (a symlink?): give the runner a real one")
    if found.st_uid != os.geteuid():
        raise StateDirError(
            f"{path} belongs to uid {found.st_uid}, not to the runner's user (uid"
            f" {os.geteuid()}): give the runner its own state directory, or chown it"
        )
    if stat.S_IMODE(found.st_mode) != PRIVATE_MODE:
        os.chmod(path, PRIVATE_MODE)
    return path


def holder_of(pid: int) -> str:
    """``pid 123: python -m cli.hakuriver.serve runner ...`` (as much as can be read)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return f"pid {pid}"
    command = " ".join(part.decode(errors="replace") for part in argv if part)
    return f"pid {pid}: {command}" if command else f"pid {pid}"


class StateLock:
    """The exclusive lock on a runner's state directory, held until ``release``."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def take(cls, state_dir: Path, *, wait_s: float = 0.0) -> StateLock:
        """Lock ``state_dir`` (made private first) for this runner.

        ``StateDirInUse`` names the holder if another runner keeps it for ``wait_s``
        seconds (0: do not wait). ``hakuriver up`` waits a little: the runner of an
        ``up`` that crashed is stopping by itself, and lets go within moments.
        """
        private_directory(state_dir)
        path = state_dir / LOCK_NAME
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(path, flags, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    os.close(fd)
                    raise StateDirError(f"cannot lock {path}: {exc.strerror}") from None
            if time.monotonic() >= deadline:
                pid = _recorded_pid(fd)
                os.close(fd)
                who = holder_of(pid) if pid is not None else "starting; its pid is not written yet"
                raise StateDirInUse(
                    f"the runner state directory {state_dir} is in use by another runner"
                    f" ({who}): stop that one first, or give this one another --name or"
                    " [runner] state_dir"
                )
            time.sleep(0.05)  # polling another process's lifetime: nothing to wait on
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{' '.join(sys.argv)}\n".encode(), 0)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let go (the file stays: removing it would race with the next taker)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _recorded_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).split(b"\n", 1)[0])
    return None
