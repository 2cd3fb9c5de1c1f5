"""A job file's ``resources``: SkyPilot's forms of each, and what a rank asks for here.

``cpus`` become whole cores (rounded up), ``memory`` bytes, ``accelerators`` a count of
GPUs of a model (or of any model), ``image_id`` the container: a Docker image, a
HakuRiver environment, or none. The values as written are kept, as text, in
``JobResources``; the keys that only steer a cloud's choice are accepted and reported.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

from control_plane.errors import InvalidRequest
from control_plane.jobfile.reading import (
    JobFileError,
    as_text,
    check_keys,
    kind,
    shown,
    value_line,
)
from control_plane.notation import MAX_BYTES, MAX_CORES, parse_size
from control_plane.requests import MAX_CONTAINER, is_image_reference
from events.config import is_no_container
from events.tarballs import ENV_NAME
from events.types import JobResources

MAX_GPUS = 256
_GPU_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_CPUS = re.compile(r"(?P<number>\d+(?:\.\d+)?|\.\d+)(?P<milli>m)?(?P<plus>\+)?")
_MEMORY = re.compile(
    r"(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>[KMGTkmgt]i?[Bb]?|[Bb])?(?P<plus>\+)?"
)
_GIB = 1 << 30

RESOURCE_FIELDS = ("cpus", "memory", "accelerators", "image_id")
# Accepted and reported as ignored, as seed 002 says (no cloud to ask them of).
RESOURCES_IGNORED = ("instance_type", "use_spot", "disk_size", "ports")
# SkyPilot's other resource keys that only steer a cloud's choice: accepted, ignored,
# and named in a warning (a file written for SkyPilot runs here unchanged).
RESOURCES_IGNORED_WITH_WARNING: dict[str, str] = {
    key: "HakuRiver places jobs on its own nodes, not in a cloud"
    for key in (
        "cloud",
        "infra",
        "region",
        "zone",
        "disk_tier",
        "network_tier",
        "local_disk",
        "max_hourly_cost",
        "ephemeral_storage",
        "accelerator_args",
        "labels",
        "priority",
        "priority_class",
    )
} | {
    "autostop": "HakuRiver's nodes are not stopped when idle",
    "job_recovery": "HakuRiver does not restart a failed job: submit it again",
}
# SkyPilot's resource keys whose meaning HakuRiver cannot give.
RESOURCES_REFUSED: dict[str, str] = {
    "any_of": "alternatives are not supported: give one set of resources",
    "ordered": "alternatives are not supported: give one set of resources",
    "volumes": "disks of a cloud VM are not supported: use the top-level volumes:"
    " (hakuriver volumes create NAME)",
}


def resources_of(
    top: Any, ignored: dict[str, str], warnings: list[str], default_container: str | None
) -> tuple[JobResources, dict[str, Any]]:
    """``resources`` as written (normalised to text) and what each rank asks for."""
    section = top.get("resources")
    if section is None:
        section = {}
    elif not isinstance(section, dict):
        raise JobFileError(
            "resources",
            f"must be a mapping (cpus:, memory:, accelerators:, image_id:), not {kind(section)}",
            value_line(top, "resources"),
        )
    tolerated = dict.fromkeys(RESOURCES_IGNORED, "") | RESOURCES_IGNORED_WITH_WARNING
    check_keys(section, "resources", RESOURCE_FIELDS, RESOURCES_REFUSED, tolerated)
    mine: dict[str, str] = {}
    for key in section:
        if key in tolerated:
            mine[key] = _ignored_text(section[key])
            ignored[f"resources.{key}"] = mine[key]
            if key in RESOURCES_IGNORED_WITH_WARNING:
                warnings.append(f"resources.{key}: ignored: {RESOURCES_IGNORED_WITH_WARNING[key]}")

    cpus_text, cores = _cpus(section)
    memory_text, memory_bytes = _memory(section)
    gpus_text, gpu_count, gpu_model = _accelerators(section)
    image_text, container = _image(section, default_container)
    resources = JobResources(
        cpus=cpus_text,
        memory=memory_text,
        accelerators=gpus_text,
        image_id=image_text,
        ignored=mine,
    )
    per_rank = {
        "cores": cores,
        "memory_bytes": memory_bytes,
        "gpu_count": gpu_count,
        "gpu_model": gpu_model,
        "container": container,
    }
    return resources, per_rank


def _ignored_text(value: object) -> str:
    """An ignored value as text, for the submitter to see (kept short)."""
    if isinstance(value, dict):
        text = ", ".join(f"{k}: {_ignored_text(v)}" for k, v in value.items())
        text = "{" + text + "}"
    elif isinstance(value, list):
        text = "[" + ", ".join(_ignored_text(v) for v in value) + "]"
    else:
        # As YAML writes it (true, null), not as Python would (True, None).
        text = (
            "null"
            if value is None
            else str(value).lower()
            if isinstance(value, bool)
            else as_text(value)
        )
    return text if len(text) <= 200 else text[:197] + "..."


def _number_text(value: object) -> str | None:
    """A YAML number or string as the text it stands for (None: neither)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return as_text(value)
    if isinstance(value, str):
        return value.strip()
    return None


def _cpus(section: Any) -> tuple[str | None, int]:
    """``4`` | ``"4+"`` | ``2.5`` | ``"500m"``: cores per rank, rounded up, at least 1."""
    if section.get("cpus") is None:
        return None, 1
    value, line = section["cpus"], value_line(section, "cpus")
    text = _number_text(value)
    match = _CPUS.fullmatch(text) if text is not None else None
    if text is None or match is None:
        raise JobFileError(
            "resources.cpus",
            f'{shown(value)} is not a number of CPUs; use e.g. 4, "4+" (at least 4), 2.5 or "500m"',
            line,
        )
    amount = Decimal(match["number"])
    if match["milli"]:
        amount /= 1000
    if amount <= 0:
        raise JobFileError(
            "resources.cpus", f"{shown(value)} is no CPU at all; ask for more than 0", line
        )
    cores = math.ceil(amount)
    if cores > MAX_CORES:
        raise JobFileError("resources.cpus", f"{shown(value)} is more than {MAX_CORES} cores", line)
    return text, cores


def _memory(section: Any) -> tuple[str | None, int | None]:
    """``32`` (GiB, as SkyPilot counts) | ``"32+"`` | ``"64GB"`` | ``"4Gi"`` | ``"512Mi"``."""
    if section.get("memory") is None:
        return None, None
    value, line = section["memory"], value_line(section, "memory")
    text = _number_text(value)
    match = _MEMORY.fullmatch(text) if text is not None else None
    if text is None or match is None:
        raise JobFileError(
            "resources.memory",
            f'{shown(value)} is not a size; use e.g. 32, "32+", 64GB or 4Gi',
            line,
        )
    if match["unit"] is None:
        # A bare number is GiB, as in SkyPilot (its "GB" are 2**30 bytes).
        size = int(Decimal(match["number"]) * _GIB)
        if size > MAX_BYTES:
            raise JobFileError(
                "resources.memory", f"{shown(value)} is more than {MAX_BYTES} bytes", line
            )
        if size <= 0:
            raise JobFileError("resources.memory", f"{shown(value)} is no memory at all", line)
        return text, size
    try:
        size_or_none = parse_size(match["number"] + match["unit"], "resources.memory")
    except InvalidRequest as exc:
        raise JobFileError("resources.memory", exc.message, line) from None
    assert size_or_none is not None
    return text, size_or_none


def _accelerators(section: Any) -> tuple[str | None, int, str | None]:
    """``"V100:2"`` | ``"V100"`` | ``"2"`` / ``2`` (any model) | ``{V100: 2}``: GPUs per rank."""
    if section.get("accelerators") is None:
        return None, 0, None
    value, line = section["accelerators"], value_line(section, "accelerators")
    field = "resources.accelerators"
    several = "alternatives are not supported: name one GPU model and count, e.g. V100:2"
    if isinstance(value, list):
        if len(value) != 1:
            raise JobFileError(field, several, line)
        value = value[0]
    model: object
    count: object
    if isinstance(value, dict):
        if len(value) != 1:
            raise JobFileError(field, several, line)
        ((model, count),) = value.items()
        count = 1 if count is None else count
    elif isinstance(value, bool) or value is None:
        raise JobFileError(
            field, f"{shown(value)} is not a GPU request; use e.g. V100:2 or 2", line
        )
    elif isinstance(value, int | float):
        model, count = None, value
    elif isinstance(value, str):
        text = value.strip()
        if text[:1] in "{[" or "," in text:
            raise JobFileError(field, several, line)
        if text.isascii() and text.isdigit():
            model, count = None, int(text)
        elif ":" in text:
            model, _, count = text.rpartition(":")
        else:
            model, count = text, 1
    else:
        raise JobFileError(
            field, f"{shown(value)} is not a GPU request; use e.g. V100:2 or 2", line
        )
    if model is not None and (not isinstance(model, str) or not _GPU_MODEL.fullmatch(model)):
        raise JobFileError(
            field,
            f"{shown(model)} is not a GPU model name (letters, digits, '.', '_', '+', '-';"
            " e.g. V100, A100-80GB)",
            line,
        )
    number = _whole(count)
    if number is None:
        raise JobFileError(
            field, f"{shown(count)} is not a whole number of GPUs (no fractions here)", line
        )
    if not 1 <= number <= MAX_GPUS:
        raise JobFileError(field, f"{number} GPUs: ask for 1 to {MAX_GPUS} per node", line)
    return (f"{model}:{number}" if model is not None else str(number)), number, model


def _whole(value: object) -> int | None:
    """A whole number from an int, an integral float or digits (None otherwise)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    return None


def _image(section: Any, default_container: str | None) -> tuple[str | None, str | None]:
    """``docker:IMAGE`` → the image; a bare name → a HakuRiver environment; ``NULL`` →
    a plain process; absent → the host's default. Returns (as written, container)."""
    value = section.get("image_id")
    field = "resources.image_id"
    if value is None:
        chosen = default_container
        return None, None if chosen is None or is_no_container(chosen) else chosen
    line = value_line(section, "image_id")
    if not isinstance(value, str):
        raise JobFileError(
            field,
            f"{kind(value)} is not taken (SkyPilot's per-region images have no meaning"
            " here); give docker:IMAGE, an environment name, or NULL",
            line,
        )
    text = value.strip()
    if is_no_container(text):
        return text, None
    if text.startswith("docker:"):
        image = text.removeprefix("docker:")
        if image and "@" not in image and ":" not in image.rsplit("/", 1)[-1]:
            image += ":latest"  # a name with a tag is an image to the agent, not an environment
    elif "/" in text or ":" in text:
        image = (
            text  # already an image reference (python:3.11-slim, nvcr.io/nvidia/pytorch:23.10-py3)
        )
    else:
        if not ENV_NAME.fullmatch(text):
            raise JobFileError(
                field,
                f"{shown(value)} is not an environment name (lowercase letters and digits"
                " joined by '.', '_' or '-'); for a Docker image write docker:IMAGE",
                line,
            )
        return text, text
    if len(image) > MAX_CONTAINER or not is_image_reference(image):
        raise JobFileError(
            field,
            f"{shown(value)} is not an image reference ([registry/]path[:tag][@digest])",
            line,
        )
    return text, image
