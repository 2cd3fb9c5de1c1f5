"""The envelope around an event: who made it, when, and where it sits in the log."""

from __future__ import annotations

import time

from msgspec import Struct

from events.ids import new_id
from events.types import SCHEMA_VERSIONS, AnyEvent, kind_of

# The bounds of an envelope the log can hold and read back (events/store.py checks them).
MAX_TIME_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
MAX_SOURCE = 256


def now_us() -> int:
    """Wall-clock time in Unix microseconds, the log's unit of time."""
    return time.time_ns() // 1000


class NewEvent(Struct, frozen=True, kw_only=True, gc=False):
    """An event as its producer hands it to the store (or sends it over the agent link).

    ``id`` is made by the producer and is the idempotency key: re-sending the
    same ``NewEvent`` is a no-op that returns the original ``seq``.
    """

    id: str
    source: str
    occurred_at_us: int
    event: AnyEvent
    schema_version: int = 1

    @property
    def kind(self) -> str:
        """The event's stable tag."""
        return kind_of(self.event)

    @property
    def stream(self) -> str:
        """The stream the event belongs to."""
        return self.event.stream


class Recorded(Struct, frozen=True, kw_only=True, gc=False):
    """An event as the log holds it: position, clocks and the hash chain included."""

    seq: int
    id: str
    kind: str
    stream: str
    source: str
    occurred_at_us: int
    recorded_at_us: int
    schema_version: int
    hash: bytes
    event: AnyEvent


def new_event(event: AnyEvent, *, source: str, occurred_at_us: int | None = None) -> NewEvent:
    """Wrap an event for appending: a fresh UUIDv7 id and the producer's clock."""
    return NewEvent(
        id=new_id(),
        source=source,
        occurred_at_us=now_us() if occurred_at_us is None else occurred_at_us,
        event=event,
        schema_version=SCHEMA_VERSIONS[kind_of(event)],
    )
