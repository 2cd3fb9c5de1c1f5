"""The environment tarball folder: the contract between the host and the runners.

The host packages environment ``NAME`` as ``<shared_dir>/<container_dir>/NAME-<ts>.tar``
(``docker save`` of ``hakuriver/NAME:base``, whose image carries the labels
``hakuriver.env=NAME`` and ``hakuriver.env_timestamp=<ts>``) and writes
``NAME-<ts>.tar.sha256`` beside it in ``sha256sum`` format. Both are written under
dot-names ending ``.tmp`` and renamed, the digest first. Like ``link.py``, this module
is shared by both sides so they cannot disagree about names or digests.
"""

from __future__ import annotations

import re

LABEL_ENV = "hakuriver.env"
LABEL_TIMESTAMP = "hakuriver.env_timestamp"
# A Docker repository path component (lowercase alphanumerics joined by one '.', one or
# two '_', or dashes), at most 63 characters.
ENV_NAME = re.compile(r"(?=.{1,63}$)[a-z0-9]+(?:(?:\.|_{1,2}|-+)[a-z0-9]+)*")
DIGEST_SUFFIX = ".sha256"
_DIGEST_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](\S+)\s*")


def image_of(name: str) -> str:
    """The image an environment is packaged as: ``hakuriver/NAME:base``."""
    return f"hakuriver/{name}:base"


def tarball_name(name: str, timestamp: int) -> str:
    """``NAME-<ts>.tar``."""
    return f"{name}-{timestamp}.tar"


def parse_tarball_name(filename: str) -> tuple[str, int] | None:
    """``(name, ts)`` of ``NAME-<ts>.tar``, or None for any other file (dot-files, temps)."""
    if filename.startswith(".") or not filename.endswith(".tar"):
        return None
    name, dash, ts = filename[: -len(".tar")].rpartition("-")
    if not dash or not ts.isascii() or not ts.isdigit() or not ENV_NAME.fullmatch(name):
        return None
    return name, int(ts)


def digest_line(sha256: str, filename: str) -> str:
    """The digest file's content for ``filename``."""
    return f"{sha256}  {filename}\n"


def parse_digest(text: str, filename: str) -> str | None:
    """The lowercase hex digest a digest file gives for ``filename``; None if it does not."""
    match = _DIGEST_LINE.fullmatch(text)
    if match is None or match[2] != filename:
        return None
    return match[1].lower()
