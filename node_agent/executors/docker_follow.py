"""Following a container: the engine calls that last as long as it runs.

Its ``wait`` and its two output streams each block for the container's whole life, so
each gets a daemon thread of its own (``hold``), never a slot of a shared pool.

Output is copied into the task's files line by line, each fetched with its engine
timestamp; the last one written per stream is kept in a small position file beside the
executor's state, so the follower of an adopted container resumes where the previous
agent stopped, without repeating a line or losing one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

T = TypeVar("T")


async def hold(function: Callable[[], T], name: str) -> T:
    """Run a call that lasts as long as a container in a daemon thread of its own."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = function(), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


def copy_stream(
    container: Any,
    *,
    stdout: bool,
    path: Path,
    position: Path,
    marks: dict[str, str],
    resume: bool,
    stopped: Callable[[], bool],
    owner: tuple[int, int] | None = None,
) -> None:
    """Copy one stream of the container's output into ``path`` until it ends.

    ``marks`` (stream -> last timestamp written) is shared by the container's two
    followers and saved to ``position`` after each line; with ``resume`` the copy
    appends, from the saved mark on. It stops early once ``stopped()`` says so (the
    executor closed: a successor will stream from the last mark). The file is mode 0600,
    given to ``owner`` (uid, gid) when the task runs as its owner's account.
    """
    key = "out" if stdout else "err"
    since = None
    if resume:
        with contextlib.suppress(OSError, ValueError):
            for line in position.read_text().splitlines():
                name, _, saved = line.partition(" ")
                marks.setdefault(name, saved)
        since = marks.get(key)
    chunks = container.logs(
        stdout=stdout, stderr=not stdout, stream=True, follow=True, timestamps=True
    )
    with open_output(path, append=resume, owner=owner) as out:
        for raw in _lines(chunks):
            if stopped():
                return
            stamp, _, text = raw.partition(b" ")
            stamp_text = stamp.decode(errors="replace")
            if since is not None and _ns(stamp_text) <= _ns(since):
                continue
            out.write(text)
            out.flush()
            marks[key] = stamp_text
            with contextlib.suppress(OSError):
                _write_marks(position, marks)


def open_output(path: Path, *, append: bool, owner: tuple[int, int] | None) -> BinaryIO:
    """A task's output file for writing: mode 0600, its owner's when it has one, and
    never through a symlink planted in the shared folder."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_APPEND if append else os.O_TRUNC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        if owner is not None:
            os.fchown(fd, *owner)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab" if append else "wb")


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Whole lines from the engine's chunks (each line starts with its timestamp)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line + b"\n"
    if pending:
        yield pending


def _ns(stamp: str) -> int:
    """An engine timestamp (RFC 3339, up to 9 fractional digits) as comparable nanoseconds."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    return int(seconds) * 1_000_000_000 + int((frac + "000000000")[:9])


def _write_marks(path: Path, marks: dict[str, str]) -> None:
    """Both streams' last timestamps, replaced atomically (no read back per line)."""
    tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
    lines = [f"{k} {v}\n" for k, v in list(marks.items())]  # the other stream may add a key
    tmp.write_text("".join(lines))
    os.replace(tmp, path)
