"""A job's files on the shared storage: its workdir copy and the named volumes.

``POST /api/jobs`` receives a job's workdir as a gzip'd tar of the folder's contents
(``hakuriver jobs submit`` makes it) and unpacks it into ``<shared_dir>/jobs/<id>/workdir``,
where every rank starts. The archive comes from a user, so it is unpacked by this module's
own loop, never by ``extractall``: only regular files and folders, each name relative and
without ``..``, no links, devices, FIFOs or sparse files, written with ``O_NOFOLLOW`` and
``O_EXCL`` into folders this loop made. The decompressed stream, the bytes unpacked and the
number of entries are bounded before anything is written past them (``max_bytes``: each
entry counts as at least one tar header, 512 bytes), so a small upload cannot expand into
a full disk or a full memory. A refusal removes whatever was unpacked.

Volumes are plain folders, ``<shared_dir>/volumes/<name>``, made by ``hakuriver volumes
create`` and mounted by the jobs that name them. They are made ``0o1777`` (as ``/tmp``):
every user's ranks, whatever Unix user they run as, may write there, and only a file's
owner may remove it (docs/jobs.md).

Everything here is blocking file I/O: the routes call it on a thread.
"""

from __future__ import annotations

import gzip
import io
import os
import pwd
import shutil
import stat
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from control_plane.commands.jobs import JOBS_DIR, VOLUMES_DIR, volume_name_problem
from control_plane.errors import InvalidRequest, TooLarge

WORKDIR = "workdir"
# What an entry counts for at least (its tar header): bounds the number of entries too.
ENTRY_BYTES = 512
# Folders and files of a workdir copy: readable by every rank, whoever it runs as.
_DIR_MODE = 0o755
_FILE_MODE = 0o644
VOLUME_MODE = 0o1777
_COPY_BLOCK = 1 << 20


def job_dir(shared_dir: Path, job_id: str) -> Path:
    """``<shared_dir>/jobs/<id>``: what the host keeps of a job (its workdir copy)."""
    return shared_dir / JOBS_DIR / job_id


def workdir_path(shared_dir: Path, job_id: str) -> Path:
    """Where a job's workdir copy is (ranks start there)."""
    return job_dir(shared_dir, job_id) / WORKDIR


def volume_path(shared_dir: Path, name: str) -> Path:
    """``<shared_dir>/volumes/<name>``."""
    return shared_dir / VOLUMES_DIR / name


def check_volume_name(name: object, field: str = "name") -> str:
    """``name`` if it can name a volume (``InvalidRequest`` naming ``field`` otherwise)."""
    if not isinstance(name, str):
        raise InvalidRequest(field, "must be a string")
    problem = volume_name_problem(name)
    if problem is not None:
        raise InvalidRequest(field, problem)
    return name


def volume_exists(shared_dir: Path, name: str) -> bool:
    """Whether the volume's folder exists (a folder, not a link to one)."""
    if volume_name_problem(name) is not None:
        return False
    try:
        return stat.S_ISDIR(os.lstat(volume_path(shared_dir, name)).st_mode)
    except OSError:
        return False


def create_volume(shared_dir: Path, name: str) -> Path:
    """Make the volume's folder (``FileExistsError`` if it exists); its path."""
    root = shared_dir / VOLUMES_DIR
    root.mkdir(parents=True, exist_ok=True)
    path = volume_path(shared_dir, name)
    path.mkdir()
    os.chmod(path, VOLUME_MODE)  # mkdir's mode is cut by the umask
    return path


def give_to_owner(workdir: Path, owner: str) -> bool:
    """Make a job's workdir copy its owner's when the host can (it runs as root and has a
    Unix account of that name; uids agree across the machines sharing the storage, as
    NFS needs): ranks that run as their owner (``run_tasks_as = "owner"``) can then write
    in it. Whether it did.

    Bottom up, through folder descriptors, the copy's top last: a folder becomes the
    owner's only once everything in it is done, so nothing the owner can change is ever
    walked or chowned again (top down, the owner could swap a folder for a link to /etc
    while the walk was inside it, and have /etc/shadow chowned to them)."""
    if os.geteuid() != 0:
        return False
    try:
        account = pwd.getpwnam(owner)
    except KeyError:
        return False
    uid, gid = account.pw_uid, account.pw_gid
    for _, dirs, files, folder in os.fwalk(workdir, topdown=False, follow_symlinks=False):
        for name in (*files, *dirs):
            os.chown(name, uid, gid, dir_fd=folder, follow_symlinks=False)
    os.chown(workdir, uid, gid, follow_symlinks=False)
    return True


def remove_job_dir(shared_dir: Path, job_id: str) -> None:
    """Remove a job's folder (a refused submit's workdir copy), if any."""
    shutil.rmtree(job_dir(shared_dir, job_id), ignore_errors=True)


class _Bounded(io.RawIOBase):
    """A stream read through, refusing once more than ``limit`` bytes came out of it:
    the decompressed archive, so that no header (a pax header's declared size) makes
    ``tarfile`` inflate more than the limit allows."""

    def __init__(self, inner: IO[bytes] | gzip.GzipFile, limit: int, max_bytes: int) -> None:
        self._inner = inner
        self._left = limit
        self._max_bytes = max_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(min(len(buffer), self._left + 1))
        if len(data) > self._left:
            raise TooLarge("workdir", _too_large(self._max_bytes))
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)


def _too_large(max_bytes: int) -> str:
    return (
        f"the workdir holds more than this host takes ({max_bytes} bytes unpacked, each file"
        f" or folder counting at least {ENTRY_BYTES}; [jobs] max_workdir_bytes)"
    )


def unpack_workdir(data: bytes, dest: Path, *, max_bytes: int) -> int:
    """Unpack a gzip'd tar of a workdir's contents into ``dest`` (made here, must not
    exist); the bytes of its files. Refused (``InvalidRequest``, ``TooLarge`` naming
    ``workdir``) at the first entry that is not a plain file or folder with a safe
    relative name, or once over ``max_bytes``; ``dest`` is then removed."""
    dest.mkdir(parents=True, mode=_DIR_MODE)
    try:
        return _unpack(data, dest, max_bytes)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _unpack(data: bytes, dest: Path, max_bytes: int) -> int:
    # The tar stream of a workdir within the limit is at most twice it (each entry's
    # padding is less than the 512 bytes it is charged) plus the end-of-archive blocks.
    stream = _Bounded(gzip.GzipFile(fileobj=io.BytesIO(data)), 2 * max_bytes + 64 * 1024, max_bytes)
    charged = 0
    total = 0
    made: set[PurePosixPath] = set()
    try:
        with tarfile.open(fileobj=io.BufferedReader(stream), mode="r|") as tar:
            for member in tar:
                charged += ENTRY_BYTES + max(member.size, 0)
                if charged > max_bytes:
                    raise TooLarge("workdir", _too_large(max_bytes))
                name = _safe_name(member)
                if member.isdir():
                    _make_dirs(dest, name, made)
                    continue
                _make_dirs(dest, name.parent, made)
                source = tar.extractfile(member)
                assert source is not None  # a regular file (_safe_name checked)
                total += _write_file(dest / name, source, member)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        if isinstance(exc, (FileExistsError, IsADirectoryError, NotADirectoryError)):
            raise InvalidRequest("workdir", f"the archive names a path twice ({exc})") from None
        raise InvalidRequest(
            "workdir", f"not a gzip'd tar archive of a folder ({type(exc).__name__}: {exc})"
        ) from None
    return total


def _safe_name(member: tarfile.TarInfo) -> PurePosixPath:
    """The member's name as a relative path, if it is a file or folder safe to write."""
    shown = member.name[:200]
    if not (member.isreg() or member.isdir()) or member.type == tarfile.GNUTYPE_SPARSE:
        kind = (
            "a symbolic link"
            if member.issym()
            else "a hard link"
            if member.islnk()
            else "a device"
            if member.ischr() or member.isblk()
            else "a special file"
        )
        raise InvalidRequest(
            "workdir", f"{shown!r} is {kind}: a workdir may hold only files and folders"
        )
    name = member.name
    if "\0" in name or name.startswith("/") or "\\" in name:
        raise InvalidRequest("workdir", f"{shown!r} is not a relative path")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InvalidRequest("workdir", f"{shown!r} leads outside the workdir ('..')")
    if not parts:
        if member.isdir():
            return PurePosixPath(".")
        raise InvalidRequest("workdir", f"{shown!r} names no file")
    return PurePosixPath(*parts)


def _make_dirs(dest: Path, name: PurePosixPath, made: set[PurePosixPath]) -> None:
    """Make the folders of ``name`` under ``dest`` (none of them a link: each was made
    here, or is refused)."""
    path = PurePosixPath(".")
    for part in name.parts:
        path = path / part
        if path in made or path == PurePosixPath("."):
            continue
        target = dest / path
        try:
            os.mkdir(target, _DIR_MODE)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(target).st_mode):
                raise
        made.add(path)


def _write_file(target: Path, source: IO[bytes], member: tarfile.TarInfo) -> int:
    """Copy a member's bytes to a new file (never through a link; never over a file)."""
    mode = _FILE_MODE | (0o111 if member.mode & 0o100 else 0)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    written = 0
    with os.fdopen(fd, "wb") as out:
        os.fchmod(fd, mode)  # the umask may have cut the exec bits
        while block := source.read(_COPY_BLOCK):
            out.write(block)
            written += len(block)
    return written
