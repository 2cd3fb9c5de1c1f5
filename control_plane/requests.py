"""What users send the control plane, and the parsing of its small languages.

Targets follow the seeds: ``HOST[:NUMA_ID][::GPU_ID[,GPU_ID...]]``. Sizes use
1000-based units (``512M``, ``4G``, ``2048K``) as the seeds document, and
1024-based ones when spelled ``Ki``/``Mi``/``Gi``/``Ti``. Every parse error is
an ``InvalidRequest`` naming the field, so the API can answer 400 with it.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct


class InvalidRequest(ValueError):
    """A request the control plane refuses; ``field`` says where, the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Target(Struct, frozen=True, kw_only=True):
    """One parsed ``--target``: a node, optionally a NUMA node and GPU ids on it."""

    node: str
    numa_id: int | None = None
    gpu_ids: tuple[int, ...] = ()

    def __str__(self) -> str:
        text = self.node
        if self.numa_id is not None:
            text += f":{self.numa_id}"
        if self.gpu_ids:
            text += "::" + ",".join(map(str, self.gpu_ids))
        return text


# The largest size a task may ask for: what the log's integers (and msgpack) can hold.
MAX_BYTES = 2**63 - 1


class SubmitTask(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/tasks``: one task per target (or one automatically placed)."""

    command: Annotated[str, Meta(min_length=1)]
    args: list[str] = []
    env: dict[str, str] = {}
    cores: Annotated[int, Meta(ge=0, le=4096)] = 1
    memory: str | Annotated[int, Meta(ge=0, le=MAX_BYTES)] | None = None
    targets: list[str] = []
    container: str | None = None  # None: the host's default; "NULL": a plain process
    privileged: bool | None = None
    mounts: list[str] = []
    task_type: Literal["command", "vps"] = "command"
    owner: str = "anonymous"
    name: str | None = None
    ssh_public_key: str | None = None


_NODE = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})"
_TARGET = re.compile(rf"(?P<node>{_NODE})(?::(?P<numa>\d+))?(?:::(?P<gpus>\d+(?:,\d+)*))?")
_SIZE = re.compile(r"(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]i?)?B?", re.IGNORECASE)
_UNITS = {
    "": 1,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "KI": 1024,
    "MI": 1024**2,
    "GI": 1024**3,
    "TI": 1024**4,
}


def parse_target(text: str, field: str = "target") -> Target:
    """Parse ``HOST[:NUMA][::GPU,...]``; duplicate GPU ids are an error."""
    match = _TARGET.fullmatch(text.strip())
    if match is None:
        raise InvalidRequest(
            field,
            f"{text!r} is not a target; use HOST, HOST:NUMA, HOST::GPU[,GPU...]"
            " or HOST:NUMA::GPU[,GPU...]",
        )
    gpus = tuple(int(g) for g in match["gpus"].split(",")) if match["gpus"] else ()
    if len(set(gpus)) != len(gpus):
        raise InvalidRequest(field, f"{text!r} names a GPU twice")
    numa = int(match["numa"]) if match["numa"] is not None else None
    return Target(node=match["node"], numa_id=numa, gpu_ids=gpus)


def parse_size(value: str | int | None, field: str = "memory") -> int | None:
    """Bytes from ``512M`` / ``4G`` / ``1.5Gi`` / a plain integer; None stays None."""
    if value is None or isinstance(value, int):
        return value
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise InvalidRequest(field, f"{value!r} is not a size; use e.g. 512M, 4G or 2Gi")
    unit = (match["unit"] or "").upper()
    # Exact decimal arithmetic: float made '4.1G' one byte short and '1e400'-long numbers inf.
    size = int(Decimal(match["num"]) * _UNITS[unit])
    if size > MAX_BYTES:
        raise InvalidRequest(field, f"{value!r} is more than {MAX_BYTES} bytes")
    return size


def parse_mount(text: str, field: str = "mounts") -> tuple[str, str, bool]:
    """``HOST_PATH:CONTAINER_PATH[:ro]`` into its parts; both paths must be absolute."""
    parts = text.split(":")
    read_only = False
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        read_only = parts.pop() == "ro"
    if len(parts) != 2 or not all(p.startswith("/") for p in parts):
        raise InvalidRequest(field, f"{text!r} is not HOST_PATH:CONTAINER_PATH[:ro] (absolute)")
    return parts[0], parts[1], read_only


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
