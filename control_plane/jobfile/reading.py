"""Reading a job file's text safely, and saying where in it a problem is.

The text comes from any user, so it is first looked at as a stream of YAML events,
before anything is built from it: one document, no anchors or aliases (a
billion-laughs file expands nothing), no tags beyond YAML's plain types, a bounded
number of nodes and nesting depth. Only then does ruamel.yaml's round-trip loader build
it, keeping every key's and value's line for the messages.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    NodeEvent,
)

from control_plane.errors import InvalidRequest

# Limits on what one file may hold: a real job file is a few hundred bytes and a few
# dozen nodes; these leave ample room and keep a hostile one cheap to refuse.
MAX_TEXT_BYTES = 256 << 10
MAX_YAML_NODES = 10_000
MAX_DEPTH = 16
# The tags a job file may carry: YAML's own plain types (``!!str 4`` is a fine way to
# say "text"); any other (``!!binary``, ``!!python/...``, ``!custom``) is refused.
_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")
)


class JobFileError(InvalidRequest):
    """A job file that cannot run: ``field`` is the path (``resources.memory``), the
    message starts with it and the line (``resources.memory (line 7): ...``)."""

    def __init__(self, field: str, message: str, line: int | None = None) -> None:
        located = f"{field} (line {line})" if line is not None else field
        super().__init__(field, f"{located}: {message}")
        self.line = line
        # The message already says where: say it once.
        self.args = (self.message,)


def load(text: str) -> Any:
    """The file's top-level mapping, or a ``JobFileError`` on field ``yaml``."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise JobFileError(
            "yaml", f"the file is {size} bytes; a job file holds at most {MAX_TEXT_BYTES}"
        )
    yaml = YAML(typ="rt")
    try:
        screen(yaml, text)
        top = yaml.load(text)
    except JobFileError:
        raise
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = _first_line(exc.problem or exc.context or "")
        raise JobFileError("yaml", f"not valid YAML: {problem}", line) from None
    except Exception as exc:  # a reader error (a control character), a number too long, ...
        position = getattr(exc, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else None
        reason = _first_line(str(exc)) or type(exc).__name__
        raise JobFileError("yaml", f"not valid YAML: {reason}", line) from None
    if top is None:
        raise JobFileError("yaml", "the file is empty; a job file needs at least run:")
    if not isinstance(top, dict):
        raise JobFileError(
            "yaml",
            "the top level must be a mapping of fields (name:, resources:, run:, ...)",
            getattr(getattr(top, "lc", None), "line", 0) + 1,
        )
    return top


def _first_line(text: str) -> str:
    """The first line of a library's message, cut short (it may quote a whole value)."""
    line = text.strip().split("\n", 1)[0]
    return line if len(line) <= 160 else line[:157] + "..."


def screen(yaml: YAML, text: str) -> None:
    """Refuse, from the event stream alone (nothing is built yet), what could make
    building the document costly or ambiguous: aliases, more than one document, foreign
    tags, too many nodes, too deep a nesting."""
    documents = nodes = depth = 0
    for event in yaml.parse(text):
        line = event.start_mark.line + 1
        if isinstance(event, DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise JobFileError(
                    "yaml", "more than one YAML document (---): one job per file", line
                )
        if isinstance(event, AliasEvent):
            raise JobFileError(
                "yaml", f"an alias (*{event.anchor}): job files take no anchors or aliases", line
            )
        if isinstance(event, NodeEvent):
            if event.anchor is not None:
                raise JobFileError(
                    "yaml",
                    f"an anchor (&{event.anchor}): job files take no anchors or aliases",
                    line,
                )
            tag = getattr(event, "tag", None)
            if tag is not None and str(tag) not in _PLAIN_TAGS:
                raise JobFileError("yaml", f"the tag {str(tag)[:40]!r} is not taken here", line)
            nodes += 1
            if nodes > MAX_YAML_NODES:
                raise JobFileError("yaml", f"more than {MAX_YAML_NODES} YAML nodes", line)
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise JobFileError("yaml", f"nested more than {MAX_DEPTH} levels deep", line)
        elif isinstance(event, CollectionEndEvent):
            depth -= 1


# -- where things are ----------------------------------------------------------------------


def key_line(mapping: Any, key: object) -> int | None:
    try:
        return int(mapping.lc.key(key)[0]) + 1
    except (AttributeError, KeyError, TypeError):
        return None


def value_line(mapping: Any, key: object) -> int | None:
    """The line of ``mapping[key]``'s value (its key's, for an empty value: ruamel puts
    a missing value on the next line)."""
    if mapping.get(key) is None:
        return key_line(mapping, key)
    try:
        return int(mapping.lc.value(key)[0]) + 1
    except (AttributeError, KeyError, TypeError):
        return key_line(mapping, key)


def path_of(prefix: str, key: object) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def shown(value: object) -> str:
    """A value quoted for a message, cut short when long."""
    text = as_text(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def as_text(value: object) -> str:
    """A scalar as text: what a job file's value means as a string (SkyPilot's rule:
    ``str()`` of the YAML value, so ``true`` is ``True``)."""
    return str(value)


def kind(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "empty"
    return "text" if isinstance(value, str) else type(value).__name__


def check_keys(
    mapping: Any,
    prefix: str,
    known: tuple[str, ...],
    refused: Mapping[str, str],
    tolerated: Mapping[str, str],
) -> None:
    """Refuse a key that is not ``known`` nor ``tolerated``: SkyPilot's ``refused`` ones
    with the reason, any other as unknown, with the closest known name."""
    for key in mapping:
        line = key_line(mapping, key)
        if not isinstance(key, str):
            raise JobFileError(
                prefix or "yaml", f"a field name must be text, not {shown(key)}", line
            )
        if key in known or key in tolerated:
            continue
        path = path_of(prefix, key)
        if key in refused:
            raise JobFileError(path, refused[key], line)
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise JobFileError(path, f"unknown field ({hint}known: {', '.join(known)})", line)
