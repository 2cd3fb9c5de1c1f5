"""Points of history as users write them: a seq (``1200``) or a time.

Times are ISO 8601 (``2026-11-21T10:00:00Z``, ``2026-11-21 10:00``, ``2026-11-21``; a
time without an offset is UTC), ``now``, or relative to now (``-10m`` or ``10m ago``;
units s, m, h, d, w). A bare integer is always a seq. Every time is Unix
microseconds, compared with the store's clock (``recorded_at``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import msgspec

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RELATIVE = re.compile(r"^(?:-\s*)?(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)(?:\s+ago)?$")
_UNIT_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# What DuckDB's timestamps hold: years 1 to 9999, as Unix microseconds; seqs are BIGINT.
MIN_US = -62_135_596_800_000_000
MAX_US = 253_402_300_799_999_999
MAX_SEQ = 2**63 - 1


class Point(msgspec.Struct, frozen=True, kw_only=True):
    """A seq or a time (Unix microseconds); exactly one is set."""

    seq: int | None = None
    at_us: int | None = None

    def __str__(self) -> str:
        return f"seq {self.seq}" if self.seq is not None else f"{iso(self.at_us)}"


def iso(us: int | None) -> str | None:
    """Unix microseconds as RFC 3339 UTC (``2026-11-21T10:00:00.123456Z``), exactly."""
    if us is None:
        return None
    return (_EPOCH + timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")


def parse_time(text: str, *, now_us: int) -> int:
    """A time as Unix microseconds (ISO 8601, ``now`` or ``-10m``); ValueError if not one."""
    word = text.strip()
    if word.lower() == "now":
        return now_us
    relative = _RELATIVE.match(word.lower())
    if relative and (word.startswith("-") or word.lower().endswith("ago")):
        amount, unit = relative.groups()
        try:
            back = round(float(amount) * _UNIT_S[unit] * 1_000_000)
        except OverflowError:
            raise ValueError(f"{text!r} is out of range") from None
        return _in_range(text, now_us - back)
    # A "+02:00" offset in an unencoded query string arrives as " 02:00".
    word = re.sub(r"(T[\d:.]+) (\d\d:?\d\d)$", r"\1+\2", word)
    try:
        when = datetime.fromisoformat(word)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give ISO 8601 (2026-11-21T10:00:00Z), now,"
            " or a relative time like -10m (or 10m ago), -2h, -1d"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - _EPOCH
    return _in_range(text, (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)


def _in_range(text: str, us: int) -> int:
    if not MIN_US <= us <= MAX_US:
        raise ValueError(f"{text!r} is out of range: times run from year 1 to year 9999")
    return us


def parse_point(text: str, *, now_us: int) -> Point:
    """A seq (a bare non-negative integer) or a time; ValueError naming what was wrong."""
    word = text.strip()
    if re.fullmatch(r"\d+", word):
        if len(word) > 19 or int(word) > MAX_SEQ:
            raise ValueError(f"{text!r} is not a seq: at most {MAX_SEQ}")
        return Point(seq=int(word))
    if re.fullmatch(r"-\d+", word):
        raise ValueError(f"{text!r}: a seq is not negative; for a relative time add a unit (-10m)")
    return Point(at_us=parse_time(word, now_us=now_us))
