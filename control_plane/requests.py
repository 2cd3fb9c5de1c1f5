"""What users send the control plane: the submit bodies and their decoding.

The small languages inside them (targets, sizes, cores, mounts) are parsed in
notation.py, re-exported here. Every error is an ``InvalidRequest`` naming the
field, so the API can answer 400 with it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Annotated, Any, Literal, TypeVar

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
from events.config import is_no_container

__all__ = [
    "MAX_BYTES",
    "MAX_CORES",
    "InvalidRequest",
    "SubmitBatch",
    "SubmitTask",
    "Target",
    "check_text_fields",
    "decode_batch",
    "decode_body",
    "decode_submit",
    "is_image_reference",
    "parse_cores",
    "parse_mount",
    "parse_size",
    "parse_target",
]


class SubmitTask(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/tasks``: one task per target (or one automatically placed)."""

    command: str = ""  # required for command tasks; a VPS task takes none (it runs sshd)
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
    except UnicodeDecodeError:
        raise InvalidRequest(not_utf8_field(body), "not valid UTF-8 text") from None


def not_utf8_field(body: bytes) -> str:
    """Where in a JSON body the bytes that are not UTF-8 are (``body`` if it cannot tell).

    The body is read with the bad bytes kept as lone surrogates, and the first key or
    string holding one names the field (``command``, ``env.NAME``, ``tasks[1].args[0]``).
    """
    try:
        document = json.loads(body.decode("utf-8", "surrogateescape"))
    except ValueError:
        return "body"
    return _bad_text_at(document, "") or "body"


def _bad_text_at(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return path if _has_surrogate(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if _has_surrogate(key):
                return path or "body"
            found = _bad_text_at(item, where)
            if found is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _bad_text_at(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _has_surrogate(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


# -- what the node would refuse, refused here --------------------------------------------------

# An environment name (events.tarballs.ENV_NAME) or a full image reference, as Docker's
# reference grammar has it: [registry[:port]/]path[/path...][:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_IMAGE = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?")
MAX_CONTAINER = 255


def is_image_reference(text: str) -> bool:
    """Whether ``text`` is a Docker image reference (an environment name is one too)."""
    return _IMAGE.fullmatch(text) is not None


MAX_NAME = 128
MAX_ARGS = 4096
MAX_PUBLIC_KEY = 16 << 10
# A task's mounts: each is a bind the node makes (and, for a process task, a path the
# root shim opens); a few dozen is plenty (the shim refuses more too: shim.MAX_MOUNTS).
MAX_MOUNTS = 64
# Characters that are not text: C0/C1 controls and DEL (Cc), and the invisible format
# characters that reorder or hide text on a terminal (bidi overrides, zero widths).
_INVISIBLE = frozenset("\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e")
_INVISIBLE |= frozenset("\u2066\u2067\u2068\u2069\ufeff")


def _control(text: str) -> str | None:
    """The first control or invisible character of ``text`` (None if it has none)."""
    for ch in text:
        if ch in _INVISIBLE or unicodedata.category(ch) == "Cc":
            return ch
    return None


def _no_nul(value: str, field: str) -> None:
    if "\0" in value:
        raise InvalidRequest(
            field, "holds a NUL byte (\\0), which no command line or environment can carry"
        )


def check_text_fields(request: SubmitTask) -> None:
    """Refuse, naming the field, the text a node could never use (a NUL in an argument,
    a container name that is no name) or a person could not read (a name of control
    characters): all of it would be accepted, recorded, and fail on the node."""
    if request.task_type == "command" and not request.command:
        raise InvalidRequest("command", "required: the command to run (after -- on the CLI)")
    _no_nul(request.command, "command")
    if len(request.args) > MAX_ARGS:
        raise InvalidRequest("args", f"at most {MAX_ARGS} arguments, got {len(request.args)}")
    for i, arg in enumerate(request.args):
        _no_nul(arg, f"args[{i}]")
    for key, value in request.env.items():
        if not key or "=" in key or _control(key) is not None:
            raise InvalidRequest(
                "env",
                f"invalid variable name {key!r}: it must be non-empty, without '=' or"
                " control characters",
            )
        _no_nul(value, f"env.{key}")
    container = request.container
    if (
        container is not None
        and not is_no_container(container)
        and (len(container) > MAX_CONTAINER or not _IMAGE.fullmatch(container))
    ):
        raise InvalidRequest(
            "container",
            f"{container[:80]!r} is neither an environment name (lowercase letters and"
            " digits joined by '.', '_' or '-') nor an image reference"
            " ([registry/]path[:tag][@digest]); or NULL for no container",
        )
    if len(request.mounts) > MAX_MOUNTS:
        raise InvalidRequest(
            "mounts", f"at most {MAX_MOUNTS} mounts per task, got {len(request.mounts)}"
        )
    for i, mount in enumerate(request.mounts):
        bad = _control(mount)
        if bad is not None:
            raise InvalidRequest(f"mounts[{i}]", f"holds a control character {bad!r}")
    if request.name is not None:
        if len(request.name) > MAX_NAME:
            raise InvalidRequest("name", f"at most {MAX_NAME} characters, got {len(request.name)}")
        bad = _control(request.name)
        if bad is not None:
            raise InvalidRequest(
                "name", f"holds a control or invisible character {bad!r}; names are text"
            )
    public_key = request.ssh_public_key
    if public_key is not None:
        if len(public_key) > MAX_PUBLIC_KEY:
            raise InvalidRequest("ssh_public_key", f"longer than {MAX_PUBLIC_KEY} characters")
        for number, line in enumerate(public_key.rstrip("\n").split("\n"), 1):
            bad = _control(line)
            if bad is not None:
                raise InvalidRequest(
                    "ssh_public_key",
                    f"line {number} holds {bad!r}: one OpenSSH public key per line, as text",
                )


def decode_submit(body: bytes) -> SubmitTask:
    """Decode a submit request, turning msgspec's errors into ``InvalidRequest``."""
    return decode_body(_submit_decoder, body)


def decode_batch(body: bytes) -> SubmitBatch:
    """Decode a batch submit request (fields named like ``tasks[2].cores``)."""
    return decode_body(_batch_decoder, body)
