"""Private files and folders: the log, its WAL and snapshots are their owner's alone.

The host's data directory is 0700 and the files of the log in it 0600, whatever the
process's umask: a folder is made with its mode set explicitly (``mkdir`` is subject to
the umask), an existing one that others could enter is tightened with a log line, and
a file is made (or, when another program made it, such as DuckDB its database and WAL)
set to 0600 explicitly. The folder is the real barrier (nobody else can reach a file in
it, whatever that file's mode); the files' own modes keep them private when copied or
moved out of it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("hakuriver.files")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """Make ``path`` (and missing parents) a folder only its owner can enter.

    A folder that already exists with access for its group or others is tightened to
    0700, with a log line saying what it was.
    """
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, PRIVATE_DIR)  # mkdir's mode is filtered by the umask
        return path
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, mode & ~0o077 | PRIVATE_DIR)
        log.warning(
            "%s was open to other users (mode %03o); made it private (mode %03o)",
            path,
            mode,
            mode & ~0o077 | PRIVATE_DIR,
        )
    return path


def private_file(path: Path | str) -> bool:
    """Set an existing file to 0600 unless it already is; False when there is no file."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode != PRIVATE_FILE:
            os.chmod(path, PRIVATE_FILE)
    except FileNotFoundError:
        return False
    return True


def open_private(path: Path | str) -> int:
    """A new file for writing (truncated if it exists), mode 0600 regardless of the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # the umask, or an older file of that name's mode
    except BaseException:
        os.close(fd)
        raise
    return fd
