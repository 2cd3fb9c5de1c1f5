"""``parse_job``: a job file's fields, checked, into a ``JobSpec``.

See the package's docstring; ``resources`` is checked in ``resources.py``, the text
read in ``reading.py``.
"""

from __future__ import annotations

import datetime
import posixpath
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import msgspec
from msgspec import Struct

from control_plane.jobfile.reading import (
    JobFileError,
    as_text,
    check_keys,
    key_line,
    kind,
    load,
    path_of,
    shown,
    value_line,
)
from control_plane.jobfile.resources import resources_of
from events import jobs
from events.types import JobSpec

MAX_NUM_NODES = 512
MAX_NAME = 64
MAX_WORKDIR = 4096

JOB_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}")
VOLUME_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # SkyPilot's schema: envs keys

FIELDS = ("name", "num_nodes", "workdir", "resources", "envs", "volumes", "setup", "run")
# SkyPilot's top-level keys HakuRiver refuses, and why (ignoring them would run the job
# without what the file asked for).
REFUSED: dict[str, str] = {
    "secrets": "not supported: HakuRiver keeps every submitted file and its --env values"
    " in its event log for good, where a secret would stay readable; keep it in a file"
    " only you can read (a volume, or the shared storage) and read it in run",
    "managed_secrets": "not supported (see secrets): keep secrets in a file only you can read",
    "file_mounts": "not supported: use workdir (copied at submit) or volumes"
    " (hakuriver volumes create NAME, then volumes: {/data: NAME})",
    "file_mounts_mapping": "not supported: use workdir or volumes",
    "volume_mounts": "not supported: use volumes: {/data: NAME}",
    "config": "SkyPilot's per-task configuration has no meaning here; the host's"
    " settings are its operator's",
    "service": "SkyServe services are not supported: HakuRiver runs batch jobs (for a"
    " long-running server, use a VPS task: hakuriver vps submit)",
    "pool": "SkyServe pools are not supported: HakuRiver runs batch jobs",
    "event_callback": "not supported: follow the job with hakuriver jobs logs/status",
    "inputs": "not supported (SkyPilot's cost estimates): remove it",
    "outputs": "not supported (SkyPilot's cost estimates): remove it",
    "api_server_access": "not supported: a job does not reach the control plane's API for you",
}
# Container paths a volume may not take: the root, HakuRiver's own (the rank's control
# folder and workdir copy), and the seeds' two mounts of every container.
_RESERVED_PATHS = ("/hakuriver", "/shared", "/local_temp")
# What a rank's placement sets (events.jobs.rank_env) and the agent's control folder: a
# file's value would be overwritten, so it is refused instead.
_SET_BY_HAKURIVER = frozenset(
    jobs.rank_env(job_id="x", rank=0, addresses=("x",), gpus_per_node=0, name="x")
) | {jobs.CONTROL_ENV}


class ParsedJob(Struct, frozen=True, kw_only=True):
    """A job file, checked: the spec, the fields accepted and ignored (path → value as
    text), and warnings worth showing the submitter."""

    spec: JobSpec
    ignored: dict[str, str] = {}
    warnings: list[str] = []


def parse_job(
    text: str,
    *,
    env: Mapping[str, str] = MappingProxyType({}),
    name: str | None = None,
    default_container: str | None = None,
) -> ParsedJob:
    """Parse and check a job file. ``env`` (``--env``) fills and overrides ``envs``;
    ``name`` (``--name``) overrides ``name``; ``default_container`` is the host's, used
    when ``resources.image_id`` is absent."""
    top = load(text)
    check_keys(top, "", FIELDS, REFUSED, {})
    ignored: dict[str, str] = {}
    warnings: list[str] = []

    job_name = _name(top, name)
    num_nodes = _num_nodes(top)
    workdir = _workdir(top)
    resources, per_rank = resources_of(top, ignored, warnings, default_container)
    envs = _envs(top, env)
    volumes = _volumes(top)
    if volumes and per_rank["container"] is None:
        raise JobFileError(
            "volumes",
            "volumes are mounted into containers, and this job runs as plain processes"
            " (image_id NULL, or the host's default); give resources.image_id, or read"
            " <shared_dir>/volumes/NAME directly",
            key_line(top, "volumes"),
        )
    setup = _script(top, "setup", required=False)
    run = _script(top, "run", required=True)
    assert run is not None
    spec = JobSpec(
        name=job_name,
        num_nodes=num_nodes,
        workdir=workdir,
        resources=resources,
        envs=envs,
        volumes=volumes,
        setup=setup,
        run=run,
        **per_rank,
    )
    return ParsedJob(spec=_plain(spec), ignored=_plain(ignored), warnings=_plain(warnings))


def _plain(value: Any) -> Any:
    """``value`` with every string a plain ``str``: ruamel hands out ``str`` subclasses
    (``LiteralScalarString`` for a ``run: |`` block) that msgspec refuses to encode, so a
    spec holding one could not be recorded. A string that is not text (a lone surrogate,
    from an escape such as ``"\\ud800"``) could not be recorded either: refused."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start : exc.end].encode("unicode_escape").decode()
            raise JobFileError(
                "yaml",
                f"{bad!r} (a lone surrogate, from an escape) is not text: write the"
                " character itself, or its pair",
            ) from None
        return str(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, msgspec.Struct):
        fields = {f: _plain(getattr(value, f)) for f in value.__struct_fields__}
        return msgspec.structs.replace(value, **fields)
    return value


def _name(top: Any, override: str | None) -> str | None:
    if override is not None:
        value: object = override
        field, line = "name", None
    elif top.get("name") is None:
        return None
    else:
        value, field, line = top["name"], "name", value_line(top, "name")
    if not isinstance(value, str) or not JOB_NAME.fullmatch(value):
        raise JobFileError(
            field,
            f"{shown(value)} is not a job name: 1 to {MAX_NAME} letters, digits, '.', '_'"
            " or '-', starting with a letter or digit",
            line,
        )
    return value


def _num_nodes(top: Any) -> int:
    value = top.get("num_nodes", 1)
    line = value_line(top, "num_nodes")
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobFileError(
            "num_nodes", f"{shown(value)} is not a whole number of nodes; use e.g. 1 or 4", line
        )
    if not 1 <= value <= MAX_NUM_NODES:
        raise JobFileError("num_nodes", f"{value} is not between 1 and {MAX_NUM_NODES}", line)
    return int(value)


def _workdir(top: Any) -> str | None:
    value = top.get("workdir")
    if value is None:
        return None
    line = value_line(top, "workdir")
    if isinstance(value, dict):
        raise JobFileError(
            "workdir",
            "a git repository (url:, ref:) is not supported: give a folder on your machine,"
            " it is copied at submit",
            line,
        )
    if not isinstance(value, str) or not value.strip():
        raise JobFileError(
            "workdir", f"{shown(value)} is not a folder; use e.g. . or ~/project", line
        )
    if "\0" in value or len(value) > MAX_WORKDIR:
        raise JobFileError("workdir", "is not a folder name (a NUL byte, or too long)", line)
    return value


def _envs(top: Any, overrides: Mapping[str, str]) -> dict[str, str]:
    """The file's ``envs`` as text, filled and overridden by ``--env``."""
    section = top.get("envs")
    if section is None:
        section = {}
    elif not isinstance(section, dict):
        raise JobFileError(
            "envs",
            f"must be a mapping of NAME: value, not {kind(section)}",
            value_line(top, "envs"),
        )
    for key, value in overrides.items():
        if not isinstance(key, str) or not ENV_KEY.fullmatch(key):
            raise JobFileError("env", f"{shown(key)} is not a variable name (letters, digits, '_')")
        if key in _SET_BY_HAKURIVER:
            raise JobFileError(f"env.{key}", "is set by HakuRiver for each rank; pick another name")
        if not isinstance(value, str) or "\0" in value:
            raise JobFileError(f"env.{key}", "the value must be text without NUL bytes")
    envs: dict[str, str] = {}
    for key in section:
        line = key_line(section, key)
        path = path_of("envs", key)
        if not isinstance(key, str) or not ENV_KEY.fullmatch(key):
            raise JobFileError(
                "envs",
                f"{shown(key)} is not a variable name (letters, digits, '_'; not first a digit)",
                line,
            )
        if key in _SET_BY_HAKURIVER:
            raise JobFileError(path, "is set by HakuRiver for each rank; pick another name", line)
        value = section[key]
        if key in overrides:
            envs[key] = overrides[key]
            continue
        if value is None:
            raise JobFileError(path, f"has no value: give it with --env {key}=VALUE", line)
        if isinstance(value, dict | list):
            raise JobFileError(
                path, f"must be text or a number, not {kind(value)}", value_line(section, key)
            )
        if isinstance(value, datetime.date):
            value = value.isoformat()
        text = as_text(value)
        if "\0" in text:
            raise JobFileError(
                path, "holds a NUL byte, which no environment can carry", value_line(section, key)
            )
        envs[key] = text
    for key, value in overrides.items():
        envs.setdefault(key, value)
    return envs


def _volumes(top: Any) -> dict[str, str]:
    """Container path → volume name (``<shared_dir>/volumes/<name>``)."""
    section = top.get("volumes")
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise JobFileError(
            "volumes",
            f"must be a mapping of container path: volume name, not {kind(section)}",
            value_line(top, "volumes"),
        )
    volumes: dict[str, str] = {}
    for key in section:
        line = key_line(section, key)
        path = path_of("volumes", key)
        if not isinstance(key, str) or not key.startswith("/"):
            raise JobFileError(
                path, "the mount point must be an absolute container path, e.g. /data", line
            )
        if ":" in key or "\0" in key or any(ord(ch) < 32 for ch in key) or ".." in key.split("/"):
            raise JobFileError(
                path, "is not a plain container path (no ':', '..' or control characters)", line
            )
        target = posixpath.normpath(key)
        if target == "/" or target == "//":
            raise JobFileError(path, "cannot mount over the container's root", line)
        for reserved in _RESERVED_PATHS:
            if target == reserved or target.startswith(reserved + "/"):
                raise JobFileError(
                    path,
                    f"{reserved} is HakuRiver's own in every container; pick another path",
                    line,
                )
        if target in volumes:
            raise JobFileError(path, f"{target} is already mounted by another entry", line)
        name = section[key]
        name_line = value_line(section, key)
        if not isinstance(name, str) or not VOLUME_NAME.fullmatch(name):
            raise JobFileError(
                path,
                f"{shown(name)} is not a volume name (lowercase letters, digits, '.', '_', '-';"
                " up to 63); create one with hakuriver volumes create NAME",
                name_line,
            )
        volumes[target] = name
    return volumes


def _script(top: Any, key: str, *, required: bool) -> str | None:
    """``setup`` / ``run``: shell text (``run`` required, non-empty)."""
    value = top.get(key)
    line = value_line(top, key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise JobFileError(
                key, "required: the commands each node runs (run: |, then the lines)", line
            )
        return None
    if not isinstance(value, str):
        raise JobFileError(
            key,
            f"must be shell commands as text (use {key}: | and the lines), not {kind(value)}",
            line,
        )
    if "\0" in value:
        raise JobFileError(key, "holds a NUL byte, which no shell can run", line)
    return value
