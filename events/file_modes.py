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


def private_dir(path: Path, *, traverse: bool | None = False) -> Path:
    """Make ``path`` (and missing parents) a folder only its owner can list or write.

    A folder that already exists with read or write access for its group or others is
    tightened, with a log line saying what it was, if it is this user's and not a sticky
    shared one (/tmp); another's is left as it is, with a log line.

    ``traverse=True``: others may still pass through it (0711: they reach a path they
    already know, never list the folder), as they must when the shared directory lies
    inside it and tasks run as their owners; the log's files in it are 0600 themselves.
    ``None``: an existing folder others may only pass through (the host's doing) stays
    so; any other is made 0700, as new ones are.
    """
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, PRIVATE_DIR | (0o011 if traverse else 0))  # mkdir obeys the umask
        return path
    found = path.stat()
    mode = stat.S_IMODE(found.st_mode)
    if found.st_uid != os.geteuid() or mode & stat.S_ISVTX:
        # Not ours to narrow (an admin's group folder, a shared /tmp): the log's files are
        # 0600 whatever their folder is, and the folder's owner decides its mode.
        if mode & 0o077:
            log.warning(
                "%s is open to other users (mode %03o) and not this user's own folder: left"
                " as it is (the log's files in it are 0600); give the log a folder of its own",
                path,
                mode,
            )
        return path
    if traverse is None:
        traverse = mode & 0o077 == 0o011
    through = 0o011 if traverse else 0
    wanted = mode & ~0o077 | PRIVATE_DIR | through
    if wanted != mode:
        os.chmod(path, wanted)
        if mode & 0o077 & ~through:
            log.warning(
                "%s was open to other users (mode %03o); made it private (mode %03o)",
                path,
                mode,
                wanted,
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
