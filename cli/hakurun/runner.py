"""Running the combinations: one at a time, or up to N at once, and stopping them all.

Every child starts in its own session (so its own process group): a Ctrl-C
at the terminal reaches hakurun alone, and hakurun stops each child's whole
group, grandchildren included, first with the signal it got and, after a
grace period or a second Ctrl-C, with SIGKILL.

Sequentially, children inherit hakurun's stdin, stdout and stderr, so output
passes through untouched. In parallel, each child's stdout and stderr go to
temporary files and are copied out whole when it ends, so its output stays
together; the label naming the combination goes to stderr, keeping stdout
exactly the children's output (``hakurun --parallel echo ... | bash`` works).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any, BinaryIO, NoReturn

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

# How long children get to exit after the stop signal before SIGKILL.
GRACE_SECONDS = 2.0
# How long to wait for SIGKILLed children to be reaped (only D-state ones take time).
KILL_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class Job:
    """One combination to run: its 1-based position, the process argv and its label."""

    index: int
    argv: tuple[str, ...]
    label: str


@dataclass(frozen=True)
class Result:
    """How one combination ended: its exit status, or why it could not start."""

    job: Job
    returncode: int | None
    problem: str | None = None

    @property
    def failed(self) -> bool:
        """Whether the combination counts as failed."""
        return self.returncode != 0

    def status(self) -> str:
        """A short human description: ``ok``, ``exit 3``, ``killed by SIGKILL``..."""
        if self.problem is not None:
            return self.problem
        if self.returncode is None:
            return "did not run"
        if self.returncode < 0:
            return f"killed by {_signal_name(-self.returncode)}"
        return "ok" if self.returncode == 0 else f"exit {self.returncode}"


class Interrupted(Exception):
    """A stop signal arrived; every running child has been stopped."""

    def __init__(self, signum: int, stopped: int = 0) -> None:
        super().__init__(_signal_name(signum))
        self.signum = signum
        self.stopped = stopped


def _signal_name(signum: int) -> str:
    """``SIGINT`` for 2, the number itself for an unknown signal."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _StopSignals:
    """Turns the first stop signal into ``Interrupted``; later ones are only recorded.

    Inside ``deferred()`` the first signal waits until a child is registered,
    so none is orphaned. Once stopping has begun nothing raises any more: a
    repeated signal only cuts the grace period short.
    """

    def __init__(self) -> None:
        self.pending: int | None = None
        self._deferring = False
        self._stopping = False
        self._previous: dict[int, _Handler] = {}

    def __enter__(self) -> _StopSignals:
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave the defaults alone
                break
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            if previous is not None:  # None: a handler not set from Python, left alone
                signal.signal(signum, previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._deferring or self._stopping:
            self.pending = self.pending or signum
            return
        self.interrupt(signum)

    def interrupt(self, signum: int) -> NoReturn:
        """Enter the stopping state and raise ``Interrupted``."""
        self.begin_stopping()
        raise Interrupted(signum)

    def begin_stopping(self) -> None:
        """From now on, record stop signals instead of raising."""
        self._stopping = True
        self.pending = None

    @property
    def repeated(self) -> bool:
        """Whether another stop signal arrived since stopping began."""
        return self._stopping and self.pending is not None

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold stop signals while a child is started and registered."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.pending is not None and not self._stopping:
            self.interrupt(self.pending)


@dataclass
class _Running:
    """A started child, and the files holding its output when captured."""

    job: Job
    process: subprocess.Popen[bytes]
    out: IO[bytes] | None
    err: IO[bytes] | None


class _Pool:
    """The children now running; a watcher thread per child reports its exit on a queue."""

    def __init__(self, *, capture: bool, report: _Report) -> None:
        self._capture = capture
        self._report = report
        self._running: dict[int, _Running] = {}
        self._done: queue.Queue[int] = queue.Queue()

    def __len__(self) -> int:
        return len(self._running)

    def start(self, job: Job) -> Result | None:
        """Start a child; a ``Result`` right away when it could not start."""
        out, err = self._capture_file(), self._capture_file()
        self._report.before_start()
        try:
            process = subprocess.Popen(
                job.argv,
                # Parallel children must not fight over one terminal's input.
                stdin=subprocess.DEVNULL if self._capture else None,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        except OSError as error:
            for file in (out, err):
                if file is not None:
                    file.close()
            return Result(job, None, f"could not start: {error.strerror or error}")
        running = _Running(job, process, out, err)
        self._running[job.index] = running
        threading.Thread(
            target=self._watch, args=(running,), name=f"hakurun-{job.index}", daemon=True
        ).start()
        return None

    def _capture_file(self) -> IO[bytes] | None:
        # It outlives this call (until the output is copied out), so no with-block owns it.
        return tempfile.TemporaryFile() if self._capture else None

    def _watch(self, running: _Running) -> None:
        running.process.wait()
        self._done.put(running.job.index)

    def next_finished(self, timeout: float | None = None) -> Result | None:
        """Wait for any child to end (``None`` on timeout) and hand over its output."""
        # The queue only wakes us up; the children themselves say who ended, so a
        # wake-up lost to a signal raised mid-way can never hide a finished child.
        finished = self._take_finished()
        if finished is None:
            try:
                self._done.get(timeout=timeout)
            except queue.Empty:
                return None
            finished = self._take_finished()
            if finished is None:
                return None
        result = Result(finished.job, finished.process.returncode)
        self._report.finished(result, finished.out, finished.err)
        return result

    def _take_finished(self) -> _Running | None:
        for index, running in self._running.items():
            if running.process.returncode is not None:
                return self._running.pop(index)
        return None

    def stop(self, signum: int, stops: _StopSignals) -> int:
        """Stop every running child's process group; the number of children stopped."""
        stops.begin_stopping()
        stopping = list(self._running.values())
        self._signal_groups(stopping, signum)
        self._drain(time.monotonic() + GRACE_SECONDS, cut_short=lambda: stops.repeated)
        # Also the groups whose leader has already gone: grandchildren may linger.
        self._signal_groups(stopping, signal.SIGKILL)
        self._drain(time.monotonic() + KILL_WAIT_SECONDS)
        return len(stopping)

    def _drain(self, deadline: float, cut_short: Callable[[], bool] = lambda: False) -> None:
        """Collect children until none runs, the deadline passes, or ``cut_short()``."""
        while self._running and not cut_short():
            left = deadline - time.monotonic()
            # Short waits, so that a second Ctrl-C is noticed promptly.
            if left <= 0:
                return
            self.next_finished(timeout=min(left, 0.05))

    @staticmethod
    def _signal_groups(children: Iterable[_Running], signum: int) -> None:
        for running in children:
            # start_new_session made each child the leader of a group with its own pid.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                _killpg(running.process.pid, signum)


def _killpg(pgid: int, signum: int) -> None:
    """Signal a whole process group; never group 0 or 1 (ourselves, init)."""
    if pgid > 1:
        os.killpg(pgid, signum)


class _Report:
    """Writes what each finished child leaves behind, and its label when captured."""

    def __init__(self, *, total: int, capture: bool, stdout: BinaryIO, stderr: BinaryIO) -> None:
        self._total = total
        self._capture = capture
        self._stdout = stdout
        self._stderr = stderr

    def before_start(self) -> None:
        """Flush our own writes so they come before the next child's."""
        self._stdout.flush()
        self._stderr.flush()

    def finished(self, result: Result, out: IO[bytes] | None, err: IO[bytes] | None) -> None:
        """Emit a captured child's label and output as one block."""
        if not self._capture:
            return
        status = "" if not result.failed else f": {result.status()}"
        header = f"[hakurun {result.job.index}/{self._total}{status}] {result.job.label}\n"
        self._stderr.write(header.encode(errors="replace"))
        self._stderr.flush()
        for captured, stream in ((out, self._stdout), (err, self._stderr)):
            if captured is None:
                continue
            captured.seek(0)
            shutil.copyfileobj(captured, stream)
            stream.flush()
            captured.close()


def run_jobs(
    jobs: Iterable[Job],
    *,
    total: int,
    parallel: bool,
    limit: int,
    stdout: BinaryIO,
    stderr: BinaryIO,
) -> list[Result]:
    """Run every job, at most ``limit`` at once when parallel; the results in finishing order.

    Raises ``Interrupted`` after stopping every child when SIGINT, SIGTERM or
    SIGHUP arrives.
    """
    report = _Report(total=total, capture=parallel, stdout=stdout, stderr=stderr)
    pool = _Pool(capture=parallel, report=report)
    slots = limit if parallel else 1
    results: list[Result] = []
    with _StopSignals() as stops:
        try:
            for job in jobs:
                while len(pool) >= slots:
                    _append(results, pool.next_finished())
                with stops.deferred():
                    refused = pool.start(job)
                if refused is not None:
                    report.finished(refused, None, None)
                    results.append(refused)
            while len(pool):
                _append(results, pool.next_finished())
        except (Interrupted, KeyboardInterrupt) as stop:
            # KeyboardInterrupt: no handlers could be installed (not the main thread).
            signum = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
            raise Interrupted(signum, pool.stop(signum, stops)) from None
        except BaseException:
            # Whatever went wrong here (a closed stdout...), leave no child behind.
            pool.stop(signal.SIGTERM, stops)
            raise
    return results


def _append(results: list[Result], result: Result | None) -> None:
    if result is not None:
        results.append(result)
