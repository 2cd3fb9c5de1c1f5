"""Span arguments and their Cartesian expansion; pure, no I/O.

An argument that starts with ``span:{`` or ``span:[`` is a span and must be
well formed; every other argument, including ``--opt=span:x`` or
``myspan:{1..2}``, is a constant. Values are always strings: they become
command-line arguments.

A word that starts with ``span:`` but is neither form (``span:1``) is refused
rather than passed on: it is almost always what bash or zsh made of an
unquoted ``span:{1..3}`` (brace expansion gives ``span:1 span:2 span:3``), and
running it would quietly sweep the wrong thing.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Sequence

PREFIX = "span:"

# One axis of the sweep: the values one argument takes (a constant has one).
Axis = tuple[str, ...]

_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")


class SpanError(ValueError):
    """A span argument that cannot be expanded, with the argument and what to do."""

    def __init__(self, argument: str, position: int, reason: str) -> None:
        super().__init__(f"bad span {argument!r} (argument {position} of the target): {reason}")
        self.argument = argument
        self.position = position
        self.reason = reason


def is_span(argument: str) -> bool:
    """Whether the argument is meant as a span (starts with ``span:``)."""
    return argument.startswith(PREFIX)


def parse_span(argument: str) -> Axis:
    """The values of one span argument; raises ``ValueError`` with the reason when malformed."""
    body = argument[len(PREFIX) :]
    if body.startswith("{") and body.endswith("}"):
        return _parse_braces(body[1:-1])
    if body.startswith("[") and body.endswith("]"):
        return _parse_items(body[1:-1])
    if body.startswith("{"):
        raise ValueError("a '{' span must end with '}'")
    if body.startswith("["):
        raise ValueError("a '[' span must end with ']'")
    raise ValueError(
        "expected span:{START..END}, span:{a,b,...} or span:[a,b,...]; if your shell "
        "expanded the braces (bash and zsh turn span:{1..3} into span:1 span:2 span:3), "
        "quote the span: 'span:{1..3}'"
    )


def _parse_braces(inner: str) -> Axis:
    """``{START..END}`` is an inclusive integer range; ``{a,b,...}`` a list."""
    match = _RANGE.fullmatch(inner.strip())
    if match is not None:
        start, end = int(match.group(1)), int(match.group(2))
        step = 1 if end >= start else -1
        return tuple(str(value) for value in range(start, end + step, step))
    if ".." in inner and "," not in inner:
        raise ValueError("a range needs two integers, as in span:{1..5} or span:{5..-5}")
    return _parse_items(inner)


def _parse_items(inner: str) -> Axis:
    """Comma-separated items, each stripped of surrounding spaces; none may be empty."""
    items = tuple(item.strip() for item in inner.split(","))
    if not inner.strip():
        raise ValueError("a span needs at least one value")
    if any(not item for item in items):
        raise ValueError("a span item is empty (look for a doubled or trailing comma)")
    return items


def parse_arguments(arguments: Sequence[str], first_position: int = 1) -> list[Axis]:
    """One axis per argument (spans expanded, constants as one value); raises ``SpanError``."""
    axes: list[Axis] = []
    for position, argument in enumerate(arguments, start=first_position):
        if not is_span(argument):
            axes.append((argument,))
            continue
        try:
            axes.append(parse_span(argument))
        except ValueError as error:
            raise SpanError(argument, position, str(error)) from None
    return axes


def count_combinations(axes: Sequence[Axis]) -> int:
    """How many argument vectors the axes expand to."""
    return math.prod(len(axis) for axis in axes)


def iter_combinations(axes: Sequence[Axis]) -> Iterator[list[str]]:
    """Every argument vector, first axis outermost (``itertools.product`` order)."""
    for combination in itertools.product(*axes):
        yield list(combination)


def expand(arguments: Sequence[str]) -> list[list[str]]:
    """All argument vectors the arguments expand to, in order; raises ``SpanError``."""
    return list(iter_combinations(parse_arguments(arguments)))
