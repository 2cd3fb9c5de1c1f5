"""Encoding events for the log and the wire, and decoding them back.

Encoders and decoders are built once. A stored event whose kind this build
does not know is skipped and counted, never fatal: a newer agent or host may
have written it. A stored event with an older schema version is upcast, one
version at a time, through the registered upcasters before it is validated.

A stored event of a known kind that does not decode (a schema version with no
upcaster, a payload that fails validation: written by a build that let it through)
is not fatal either: a reader skips it, ``Codec.note_undecodable`` logs it once and
keeps it in ``undecodable``, which the host's summary shows. One bad row must not
stop a host from starting.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import msgspec

from events.envelope import NewEvent
from events.types import EVENT_TYPES, SCHEMA_VERSIONS, AnyEvent

log = logging.getLogger("hakuriver.store")

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# (kind, from_version) -> function turning a payload of that version into the next.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}

_json_encoder = msgspec.json.Encoder()
_event_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(AnyEvent)
_new_event_decoder = msgspec.json.Decoder(NewEvent)
_new_event_batch_decoder = msgspec.json.Decoder(list[NewEvent])


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold the cyclic GC back while decoding many acyclic objects at once.

    Decoding 100k events or tasks otherwise triggers collections that cost
    several times the decoding itself; events and views never form cycles.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# ``encode_event`` as one bound method, for loops over many events (the store's append).
encode_event_fast: Callable[[Any], bytes] = _json_encoder.encode


def encode_event(event: AnyEvent) -> bytes:
    """Canonical JSON of an event (the stored payload, tag included)."""
    return _json_encoder.encode(event)


def encode_json(value: Any) -> bytes:
    """JSON of any msgspec-encodable value."""
    return _json_encoder.encode(value)


def check_decodes(payload: bytes) -> str | None:
    """Why an encoded payload would not decode as stored (None: it would)."""
    try:
        _event_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        return str(exc)
    return None


def decode_new_event(data: bytes | str) -> NewEvent:
    """Decode one producer event from JSON (raises msgspec.ValidationError)."""
    return _new_event_decoder.decode(data)


def decode_new_events(data: bytes | str) -> list[NewEvent]:
    """Decode a batch of producer events from JSON (raises msgspec.ValidationError)."""
    return _new_event_batch_decoder.decode(data)


class Codec:
    """Decodes stored payloads, skipping unknown kinds and upcasting old versions."""

    def __init__(
        self,
        upcasters: dict[tuple[str, int], Upcaster] | None = None,
        versions: dict[str, int] | None = None,
    ) -> None:
        self.upcasters = UPCASTERS if upcasters is None else upcasters
        self.versions = SCHEMA_VERSIONS if versions is None else versions
        self.skipped: Counter[str] = Counter()
        # seq -> "kind: why" of each stored event of a known kind that did not decode
        # (the first MAX_NOTED; ``undecodable_total`` counts them all, once each).
        self.undecodable: dict[int, str] = {}
        self.undecodable_total = 0

    MAX_NOTED = 1000

    def note_undecodable(self, seq: int, kind: str, error: Exception) -> None:
        """Remember (and log, once) a stored event that could not be decoded."""
        if seq in self.undecodable:
            return
        if len(self.undecodable) >= self.MAX_NOTED:
            self.undecodable_total += 1  # past the cap, a re-read counts again
            return
        self.undecodable[seq] = f"{kind}: {error}"
        self.undecodable_total += 1
        log.warning("event %d (%s) does not decode and is skipped: %s", seq, kind, error)

    def unreadable_version(self, kind: str, schema_version: int) -> str | None:
        """Why events of a known ``kind`` stored at ``schema_version`` cannot be read (no
        upcaster on the way to the current version); None if they can."""
        for version in range(schema_version, self.versions.get(kind, 0)):
            if (kind, version) not in self.upcasters:
                return f"no upcaster for {kind} from schema version {version}"
        return None

    def decode(self, kind: str, schema_version: int, payload: bytes | str) -> AnyEvent | None:
        """Decode a stored payload; None (and a count in ``skipped``) for an unknown kind."""
        if kind not in EVENT_TYPES:
            self.skipped[kind] += 1
            return None
        current = self.versions[kind]
        if schema_version >= current:
            return cast(AnyEvent, _event_decoder.decode(payload))
        missing = self.unreadable_version(kind, schema_version)
        if missing is not None:
            raise ValueError(missing)
        data: dict[str, Any] = msgspec.json.decode(payload)
        for version in range(schema_version, current):
            data = self.upcasters[(kind, version)](data)
        data["kind"] = kind
        return cast(AnyEvent, msgspec.convert(data, AnyEvent))
