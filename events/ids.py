"""Time-ordered identifiers (UUIDv7, RFC 9562) made by event producers.

Event ids are the idempotency key of the log, and their embedded millisecond
timestamp lets the store answer "have I seen this id?" from a bounded window
of recent ids (see ``events.recent_ids``). Task and batch ids use the same scheme so
they sort by creation time.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id() -> str:
    """Return a new UUIDv7 string, strictly increasing within this process."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        else:
            # Same (or a backwards) millisecond: keep order with a 12-bit counter,
            # borrowing the next millisecond when it overflows.
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    rand = int.from_bytes(os.urandom(8), "big") & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
    return str(uuid.UUID(int=value))


def id_timestamp_ms(event_id: str) -> int:
    """The Unix millisecond timestamp embedded in a UUIDv7 string."""
    return int(event_id[:8] + event_id[9:13], 16)


_UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
# ``is_uuid7`` for a str, as one bound method (the store's append checks every id with it).
uuid7_fullmatch = _UUID7.fullmatch


def is_uuid7(event_id: object) -> bool:
    """True if ``event_id`` is a canonical (lower-case, hyphenated) UUIDv7 string."""
    return isinstance(event_id, str) and _UUID7.fullmatch(event_id) is not None


# A task number as people type it: canonical decimal, at most 10 digits. UUIDv7 ids
# start with "0" until the year 10889, so no id prefix is ever spelled like one.
_TASK_NUMBER = re.compile(r"[1-9][0-9]{0,9}")


def task_number(ident: str) -> int | None:
    """The task number ``ident`` spells (``12``), or None if it is not one."""
    return int(ident) if _TASK_NUMBER.fullmatch(ident) else None


_JOB_ID = re.compile(r"[a-z0-9]{8}")
_JOB_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def new_job_id() -> str:
    """A job's id: 8 random lowercase letters and digits (seed 002), at least one a letter
    (so no job id reads as a task number). The submitter makes sure it is unique in the
    log (the decision refuses one already taken)."""
    import secrets

    while True:
        ident = "".join(secrets.choice(_JOB_ALPHABET) for _ in range(8))
        if not ident.isdigit():
            return ident


def is_job_id(ident: object) -> bool:
    """Whether ``ident`` is spelled like a job id (8 lowercase letters and digits, not all
    digits)."""
    return isinstance(ident, str) and _JOB_ID.fullmatch(ident) is not None and not ident.isdigit()
