"""Encoding events for the log and the wire, and decoding them back.

Encoders and decoders are built once. A stored event whose kind this build
does not know is skipped and counted, never fatal: a newer agent or host may
have written it. A stored event with an older schema version is upcast, one
version at a time, through the registered upcasters before it is validated.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import msgspec

from events.envelope import NewEvent
from events.types import EVENT_TYPES, SCHEMA_VERSIONS, AnyEvent

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


def encode_event(event: AnyEvent) -> bytes:
    """Canonical JSON of an event (the stored payload, tag included)."""
    return _json_encoder.encode(event)


def encode_json(value: Any) -> bytes:
    """JSON of any msgspec-encodable value."""
    return _json_encoder.encode(value)


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

    def decode(self, kind: str, schema_version: int, payload: bytes | str) -> AnyEvent | None:
        """Decode a stored payload; None (and a count in ``skipped``) for an unknown kind."""
        if kind not in EVENT_TYPES:
            self.skipped[kind] += 1
            return None
        current = self.versions[kind]
        if schema_version >= current:
            return cast(AnyEvent, _event_decoder.decode(payload))
        data: dict[str, Any] = msgspec.json.decode(payload)
        for version in range(schema_version, current):
            step = self.upcasters.get((kind, version))
            if step is None:
                raise ValueError(f"no upcaster for {kind} from schema version {version}")
            data = step(data)
        data["kind"] = kind
        return cast(AnyEvent, msgspec.convert(data, AnyEvent))
