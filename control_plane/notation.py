"""The small languages users type in a submit request: targets, sizes, cores, mounts.

Targets follow the seeds: ``HOST[:NUMA_ID][::GPU_ID[,GPU_ID...]]``. Sizes use
1000-based units (``512M``, ``4G``, ``2048K``) as the seeds document, and
1024-based ones when spelled ``Ki``/``Mi``/``Gi``/``Ti``. Every parse error is
an ``InvalidRequest`` naming the field, so the API can answer 400 with it.

Only the standard library here: ``hakuriver task submit`` checks its options with
these same functions before it sends anything, and must start in a few milliseconds.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from control_plane.errors import InvalidRequest
from events.config import NODE_NAME

# The largest size a task may ask for: what the log's integers (and msgpack) can hold.
MAX_BYTES = 2**63 - 1
# The most cores one task may ask for (far above any machine HakuRiver runs on).
MAX_CORES = 4096


class Target(NamedTuple):
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


_TARGET = re.compile(rf"(?P<node>{NODE_NAME})(?::(?P<numa>\d+))?(?:::(?P<gpus>\d+(?:,\d+)*))?")
_SIZE = re.compile(r"(?P<whole>\d+)(?:\.(?P<fraction>\d+))?\s*(?P<unit>[KMGT]i?)?B?", re.IGNORECASE)
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


def _shown(value: object) -> str:
    """A value quoted for an error message, cut short when it is long."""
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


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
    """Bytes from ``512M`` / ``4G`` / ``1.5Gi`` / a plain integer; None stays None.

    A limit of zero bytes, a negative one, or a fraction of a byte is refused: the
    task could not even start (a zero memory limit killed it with SIGSEGV).
    """
    if value is None:
        return None
    if isinstance(value, int):
        size = value
    else:
        text = value.strip()
        if text.startswith("-") and _SIZE.fullmatch(text[1:].strip()):
            raise InvalidRequest(field, f"{_shown(value)} is negative; use e.g. 512M, 4G or 2Gi")
        match = _SIZE.fullmatch(text)
        if match is None:
            raise InvalidRequest(field, f"{_shown(value)} is not a size; use e.g. 512M, 4G or 2Gi")
        # Exact integer arithmetic (float made '4.1G' one byte short, and very long
        # numbers inf): whole.fraction * unit == (whole * 10**n + fraction) * unit / 10**n.
        whole, fraction = match["whole"].lstrip("0"), (match["fraction"] or "").rstrip("0")
        if len(whole) > 20:  # also keeps int() below Python's limit on digits
            raise InvalidRequest(field, f"{_shown(value)} is more than {MAX_BYTES} bytes")
        if len(fraction) > 60:  # a unit is at most 2**40 bytes: no whole number of them
            raise InvalidRequest(field, f"{_shown(value)} is not a whole number of bytes")
        scaled = int(whole + fraction or "0") * _UNITS[(match["unit"] or "").upper()]
        size, rest = divmod(scaled, 10 ** len(fraction))
        if rest:
            raise InvalidRequest(field, f"{_shown(value)} is not a whole number of bytes")
    if size < 0:
        raise InvalidRequest(field, f"{_shown(value)} is negative; use e.g. 512M, 4G or 2Gi")
    if size == 0:
        raise InvalidRequest(
            field,
            f"{_shown(value)} is no memory at all; give a limit such as 512M, or none for no limit",
        )
    if size > MAX_BYTES:
        raise InvalidRequest(field, f"{_shown(value)} is more than {MAX_BYTES} bytes")
    return size


_CORES = re.compile(r"\d{1,10}")


def parse_cores(value: str | int, field: str = "cores") -> int:
    """A whole number of cores from 0 (no core accounting) to ``MAX_CORES``."""
    text = str(value).strip()
    if _CORES.fullmatch(text) is None:
        if re.fullmatch(r"-\s*\d+(?:\.\d*)?", text):
            reason = "is negative"
        elif re.fullmatch(r"\d*\.\d*", text) and text != ".":
            reason = "is not a whole number"
        else:
            reason = "is not a number"
        raise InvalidRequest(
            field, f"{_shown(value)} {reason}; give a whole number of cores (0: no core accounting)"
        )
    cores = int(text)
    if cores > MAX_CORES:
        raise InvalidRequest(field, f"{_shown(value)} is more than {MAX_CORES} cores")
    return cores


def parse_mount(text: str, field: str = "mounts") -> tuple[str, str, bool]:
    """``HOST_PATH:CONTAINER_PATH[:ro]`` into its parts; both paths must be absolute."""
    parts = text.split(":")
    read_only = False
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        read_only = parts.pop() == "ro"
    if len(parts) != 2 or not all(p.startswith("/") for p in parts):
        raise InvalidRequest(field, f"{text!r} is not HOST_PATH:CONTAINER_PATH[:ro] (absolute)")
    return parts[0], parts[1], read_only
