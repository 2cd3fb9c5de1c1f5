"""Following a container: the engine calls that last as long as it runs.

Its ``wait`` and its output stream each block for the container's whole life, so
each gets a daemon thread of its own (``hold``), never a slot of a shared pool.

Output is copied into the task's files line by line, both streams from one engine
request, each line fetched with its engine timestamp; the last one written per stream is
kept in a small position file beside the executor's state, so the follower of an adopted
container resumes where the previous agent stopped, without repeating a line or losing one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import threading
from collections.abc import Callable, Iterator
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


def copy_output(
    container: Any,
    *,
    paths: dict[str, Path],
    position: Path,
    marks: dict[str, str],
    resume: bool,
    stopped: Callable[[], bool],
    owner: tuple[int, int] | None = None,
) -> None:
    """Copy the container's output into ``paths["out"]`` and ``paths["err"]`` until it ends.

    Both streams come in one engine request, multiplexed (a request per stream cost the
    engine a second log reader per container, measurable in a batch's throughput on a
    small node). ``marks`` (stream -> last timestamp written) is saved to ``position``
    after each line; with ``resume`` the copy appends, from each stream's saved mark on.
    It stops early once ``stopped()`` says so (the executor closed: a successor will
    stream from the last mark). The files are mode 0600, given to ``owner`` (uid, gid)
    when the task runs as its owner's account.
    """
    since: dict[str, str] = {}
    if resume:
        with contextlib.suppress(OSError, ValueError):
            for line in position.read_text().splitlines():
                name, _, saved = line.partition(" ")
                marks.setdefault(name, saved)
        since = dict(marks)
    pending = {"out": b"", "err": b""}
    with contextlib.ExitStack() as files:
        out = {
            key: files.enter_context(open_output(paths[key], append=resume, owner=owner))
            for key in ("out", "err")
        }

        def write(key: str, raw: bytes) -> None:
            stamp, _, text = raw.partition(b" ")
            stamp_text = stamp.decode(errors="replace")
            if key in since and _ns(stamp_text) <= _ns(since[key]):
                return
            out[key].write(text)
            out[key].flush()
            marks[key] = stamp_text
            with contextlib.suppress(OSError):
                _write_marks(position, marks)

        for key, chunk in _frames(container):
            if stopped():
                return
            pending[key] += chunk
            *complete, pending[key] = pending[key].split(b"\n")
            for whole in complete:
                write(key, whole + b"\n")
        for key, rest in pending.items():
            if rest and not stopped():
                write(key, rest)


def _frames(container: Any) -> Iterator[tuple[str, bytes]]:
    """The container's output with timestamps, followed, as ("out" | "err", bytes) frames
    (the engine's multiplexed stream: an 8-byte header naming the stream and the length;
    docker-py's own reader drops the stream's name)."""
    api = container.client.api
    params = {"stdout": 1, "stderr": 1, "follow": 1, "timestamps": 1, "tail": "all"}
    response = api._get(api._url("/containers/{0}/logs", container.id), params=params, stream=True)
    api._raise_for_status(response)
    # No read timeout: a task may print nothing for hours.
    api._disable_socket_timeout(api._get_raw_response_socket(response))
    try:
        while True:
            header = response.raw.read(8)
            if len(header) < 8:
                return
            kind, length = struct.unpack(">BxxxL", header)
            data = response.raw.read(length) if length else b""
            if length and not data:
                return
            if data:
                yield ("err" if kind == 2 else "out"), data
    finally:
        response.close()


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
