"""When the log cannot be written: the error callers get, and the outage the store reports.

A full disk (or a quota, a read-only remount, an I/O error) makes a commit fail. The
store fails that commit's callers with ``StoreUnavailable`` (nothing of their batches
was stored: they may send them again), keeps what went wrong as a ``WriteFailure`` for
the host's health answer, and logs the outage once as it starts and once as it ends
(``Outage``), not once per failed commit: a retrying producer fails many times a minute.
"""

from __future__ import annotations

import errno
import logging
import os
import time

import duckdb
import msgspec

from events.envelope import now_us

# The errors of a storage that cannot take a write now (rather than of a wrong value).
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES)
_STORAGE_ERRORS = (
    duckdb.IOException,
    duckdb.FatalException,
    duckdb.TransactionException,
    duckdb.OperationalError,
    duckdb.ConnectionException,
)


class StoreUnavailable(Exception):
    """The log cannot be written now; nothing of the batch was stored (send it again later)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"the event log cannot be written: {reason}")
        self.reason = reason
        self.detail = detail or reason


class WriteFailure(msgspec.Struct, frozen=True, kw_only=True):
    """An outage of the log's storage: what failed, why, since when, how many times."""

    what: str  # "commit", "checkpoint" or "open"
    reason: str  # short, without paths: fit for a public health answer
    detail: str  # the storage's own message (may name files): for operators
    since_us: int
    failures: int


def is_storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the storage could not take a write (not that a value was wrong)."""
    if isinstance(exc, (OSError, StoreUnavailable, *_STORAGE_ERRORS)):
        return True
    return isinstance(exc, duckdb.Error) and _known_errno(str(exc)) is not None


def reason_of(exc: BaseException) -> str:
    """A short, path-free reason: ``no space left on device``, ``I/O error``..."""
    if isinstance(exc, StoreUnavailable):
        return exc.reason
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return _words(exc.errno)
    code = _known_errno(str(exc))
    if code is not None:
        return _words(code)
    if "invalidated" in str(exc):
        return "the database was invalidated by an earlier failed write"
    return f"write failed ({type(exc).__name__})"


def _known_errno(message: str) -> int | None:
    for code in _STORAGE_ERRNOS:
        if os.strerror(code) in message:
            return code
    return None


def _words(code: int) -> str:
    text = os.strerror(code)
    return "I/O error" if code == errno.EIO else text[0].lower() + text[1:]


class Outage:
    """One kind of write (``what``) failing: logged as the outage starts and ends.

    On a full disk small writes may still land (in the last page of a file) while bigger
    ones fail, so one success does not end an outage: it ends once writes have succeeded
    and none has failed for ``hold_s`` seconds (checked as writes come and as it is read).
    """

    def __init__(self, what: str, log: logging.Logger, where: str, hold_s: float) -> None:
        self.what = what
        self.log = log
        self.where = where
        self.hold_s = hold_s
        self._current: WriteFailure | None = None
        self._last_failure = 0.0
        self._last_success = 0.0

    @property
    def current(self) -> WriteFailure | None:
        """The outage under way, if any."""
        if self._current is not None and self._over(time.monotonic()):
            self._end()
        return self._current

    def failed(self, exc: BaseException) -> WriteFailure:
        """Note one more failure; the first of an outage is logged (a warning)."""
        self._last_failure = time.monotonic()
        previous = self._current
        reason, detail = reason_of(exc), str(exc).strip()
        if previous is None:
            self.log.warning(
                "the event log %s cannot be written (%s): %s; retrying as writes come",
                self.where,
                reason,
                detail,
            )
            self._current = WriteFailure(
                what=self.what, reason=reason, detail=detail, since_us=now_us(), failures=1
            )
        else:
            self._current = msgspec.structs.replace(
                previous, reason=reason, detail=detail, failures=previous.failures + 1
            )
        return self._current

    def succeeded(self) -> None:
        """A write of this kind succeeded: the outage ends once that lasts (``hold_s``)."""
        self._last_success = now = time.monotonic()
        if self._current is not None and self._over(now):
            self._end()

    def _over(self, now: float) -> bool:
        return self._last_success > self._last_failure and now - self._last_failure >= self.hold_s

    def _end(self) -> None:
        previous, self._current = self._current, None
        if previous is not None:
            self.log.warning(
                "the event log %s is written again (%s failed %d times in %.1fs)",
                self.where,
                self.what,
                previous.failures,
                (now_us() - previous.since_us) / 1e6,
            )
