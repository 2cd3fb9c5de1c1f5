"""Packaged environments on disk: listing, writing and pruning ``NAME-<ts>.tar`` files.

The tarball and its ``sha256sum``-format digest are written under dot-names ending
``.tmp``, flushed to disk and renamed, the digest first, so a runner never sees a
``.tar`` without its digest; a crash leaves only dot-named temporaries, which nothing
reads. Pruning removes only that name's older files. ``environments.py`` commits the
container and streams ``docker save`` into ``write_tarball``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from events.tarballs import (
    DIGEST_SUFFIX,
    digest_line,
    parse_digest,
    parse_tarball_name,
    tarball_name,
)


class TarballOut(msgspec.Struct, frozen=True, kw_only=True):
    """One packaged tarball."""

    name: str
    timestamp: int
    file: str
    path: str
    size_bytes: int
    sha256: str
    newest: bool


def read_digest(tarball: Path) -> str:
    """The hex digest written beside a tarball ('' when missing or malformed)."""
    try:
        text = tarball.with_name(tarball.name + DIGEST_SUFFIX).read_text()
    except (OSError, UnicodeDecodeError):
        return ""
    return parse_digest(text, tarball.name) or ""


def list_tarballs(folder: Path) -> list[TarballOut]:
    """Every packaged tarball in ``folder``, by name then newest first."""
    found: list[tuple[str, int, Path]] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            parsed = parse_tarball_name(entry.name)
            if parsed is not None and entry.is_file():
                found.append((parsed[0], parsed[1], Path(entry.path)))
    found.sort(key=lambda item: (item[0], -item[1]))
    out: list[TarballOut] = []
    for name, ts, path in found:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        newest = not out or out[-1].name != name
        out.append(
            TarballOut(
                name=name,
                timestamp=ts,
                file=path.name,
                path=str(path),
                size_bytes=size,
                sha256=read_digest(path),
                newest=newest,
            )
        )
    return out


def next_timestamp(folder: Path, name: str) -> int:
    """Now, or one more than ``name``'s newest tarball: strictly newer within a second."""
    newest = max((t.timestamp for t in list_tarballs(folder) if t.name == name), default=0)
    return max(int(time.time()), newest + 1)


def write_tarball(
    folder: Path,
    name: str,
    ts: int,
    chunks: Iterable[bytes],
    progress: Callable[[int], None],
) -> tuple[int, str, str]:
    """Write ``NAME-<ts>.tar`` and its digest safely (see the module docstring).

    Returns the bytes written, the hex digest and the tarball's file name.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / tarball_name(name, ts)
    temp = folder / f".{final.name}.tmp"
    digest_file = final.with_name(final.name + DIGEST_SUFFIX)
    digest_temp = folder / f".{digest_file.name}.tmp"
    hasher = hashlib.sha256()
    written = 0
    try:
        with open(temp, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                hasher.update(chunk)
                written += len(chunk)
                progress(written)
            out.flush()
            os.fsync(out.fileno())
        sha = hasher.hexdigest()
        with open(digest_temp, "w") as out:
            out.write(digest_line(sha, final.name))
            out.flush()
            os.fsync(out.fileno())
        os.replace(digest_temp, digest_file)
        os.replace(temp, final)
        _fsync_dir(folder)
    except BaseException:
        for leftover in (temp, digest_temp):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        raise
    return written, sha, final.name


def prune(folder: Path, name: str, keep: int) -> list[str]:
    """Remove ``name``'s tarballs (and digests) older than ``keep``; their file names."""
    pruned: list[str] = []
    for tar in list_tarballs(folder):
        if tar.name == name and tar.timestamp < keep:
            path = Path(tar.path)
            with contextlib.suppress(FileNotFoundError):
                path.with_name(path.name + DIGEST_SUFFIX).unlink()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            pruned.append(tar.file)
    return pruned


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
