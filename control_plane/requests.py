"""What users send the control plane: the submit bodies and their decoding.

The small languages inside them (targets, sizes, cores, mounts) are parsed in
notation.py, re-exported here. Every error is an ``InvalidRequest`` naming the
field, so the API can answer 400 with it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from control_plane.errors import InvalidRequest
from control_plane.notation import (
    MAX_BYTES,
    MAX_CORES,
    Target,
    parse_cores,
    parse_mount,
    parse_size,
    parse_target,
)

__all__ = [
    "MAX_BYTES",
    "MAX_CORES",
    "InvalidRequest",
    "SubmitBatch",
    "SubmitTask",
    "Target",
    "decode_batch",
    "decode_body",
    "decode_submit",
    "parse_cores",
    "parse_mount",
    "parse_size",
    "parse_target",
]


class SubmitTask(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/tasks``: one task per target (or one automatically placed)."""

    command: Annotated[str, Meta(min_length=1)]
    args: list[str] = []
    env: dict[str, str] = {}
    cores: Annotated[int, Meta(ge=0, le=MAX_CORES)] = 1
    memory: str | Annotated[int, Meta(ge=0, le=MAX_BYTES)] | None = None
    targets: list[str] = []
    container: str | None = None  # None: the host's default; "NULL": a plain process
    privileged: bool | None = None
    mounts: list[str] = []
    task_type: Literal["command", "vps"] = "command"
    owner: str | None = None  # None: the authenticated user (another: admins only)
    name: str | None = None
    ssh_public_key: str | None = None


class SubmitBatch(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/batches``: several submit requests recorded as one batch, all or nothing."""

    tasks: Annotated[list[SubmitTask], Meta(min_length=1, max_length=10_000)]


_submit_decoder = msgspec.json.Decoder(SubmitTask)
_batch_decoder = msgspec.json.Decoder(SubmitBatch)

T = TypeVar("T")
_UNKNOWN_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]+)`")


def decode_body(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """Decode a JSON body, turning msgspec's errors into ``InvalidRequest`` naming the field."""
    if not body:
        raise InvalidRequest("body", "empty request body; expected a JSON object")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        path = str(exc).rsplit(" - at `$", 1)
        field = path[1].rstrip("`").lstrip(".") if len(path) == 2 else ""
        unknown = _UNKNOWN_FIELD.search(path[0])
        if unknown:
            field = f"{field}.{unknown[1]}" if field else unknown[1]
        raise InvalidRequest(field or "body", path[0]) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest("body", f"malformed JSON ({exc})") from None


def decode_submit(body: bytes) -> SubmitTask:
    """Decode a submit request, turning msgspec's errors into ``InvalidRequest``."""
    return decode_body(_submit_decoder, body)


def decode_batch(body: bytes) -> SubmitBatch:
    """Decode a batch submit request (fields named like ``tasks[2].cores``)."""
    return decode_body(_batch_decoder, body)
