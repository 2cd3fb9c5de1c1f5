"""Span arguments and their Cartesian expansion; pure, no I/O.

An argument that starts with ``span:{`` or ``span:[`` is a span and must be
well formed; every other argument, including ``--opt=span:x`` or
``myspan:{1..2}``, is a constant. Values are always strings: they become
command-line arguments.

A word that starts with ``span:`` but is neither form (``span:1``) is refused
rather than passed on: it is almost always what bash or zsh made of an
unquoted ``span:{1..3}`` (brace expansion gives ``span:1 span:2 span:3``), and
running it would quietly sweep the wrong thing. ``requote`` rebuilds the quoted
command from such words, for the error to show.

Ranges are of integers (``span:{1..5}``, ``span:{5..-5}``) or of single letters of one
case (``span:{A..Z}``, ``span:{e..a}``), as bash's brace ranges; a range mixing a letter
and a number, or with a word for an end, is refused rather than guessed.
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
from collections.abc import Iterator, Sequence

PREFIX = "span:"

# One axis of the sweep: the values one argument takes (a constant has one).
Axis = tuple[str, ...]

_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")
_LETTER_RANGE = re.compile(r"([A-Za-z])\.\.([A-Za-z])")
# Any ``X..Y`` with no comma: meant as a range, so refused when it is not one of the two.
_ANY_RANGE = re.compile(r"([^.,]*)\.\.([^.,]*)")


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
    """``{START..END}`` is an inclusive range of integers or of letters; ``{a,b,...}`` a
    list."""
    text = inner.strip()
    match = _RANGE.fullmatch(text)
    if match is not None:
        start, end = int(match.group(1)), int(match.group(2))
        step = 1 if end >= start else -1
        return tuple(str(value) for value in range(start, end + step, step))
    letters = _LETTER_RANGE.fullmatch(text)
    if letters is not None:
        first, last = letters.group(1), letters.group(2)
        if first.isupper() != last.isupper():
            raise ValueError(
                f"a letter range stays in one case ({first!r} and {last!r} are not):"
                " span:{A..Z} or span:{a..z}"
            )
        step = 1 if ord(last) >= ord(first) else -1
        return tuple(chr(code) for code in range(ord(first), ord(last) + step, step))
    if ".." in inner and "," not in inner:
        raise ValueError(_range_problem(text))
    return _parse_items(inner)


def _range_problem(text: str) -> str:
    """Why ``text`` (with ``..``, no comma) is no range."""
    ends = _ANY_RANGE.fullmatch(text)
    usage = "as in span:{1..5}, span:{5..-5}, span:{A..Z} or span:{z..a}"
    if ends is None or not ends.group(1) or not ends.group(2):
        return f"a range needs two integers or two letters, {usage}"
    kinds = {_end_kind(ends.group(1)), _end_kind(ends.group(2))}
    if kinds == {"integer", "letter"}:
        return f"a range cannot mix a letter and a number ({text!r}); {usage}"
    if "word" in kinds:
        return f"letter ranges take single letters, not words ({text!r}); {usage}"
    return f"a range needs two integers or two letters, {usage}"


def _end_kind(end: str) -> str:
    """``integer``, ``letter``, ``word`` (letters only, several) or ``other``."""
    if re.fullmatch(r"-?\d+", end):
        return "integer"
    if re.fullmatch(r"[A-Za-z]", end):
        return "letter"
    if re.fullmatch(r"[A-Za-z]+", end):
        return "word"
    return "other"


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


def _is_bare(argument: str) -> bool:
    """A ``span:`` word that is no span: what brace expansion makes of one."""
    return is_span(argument) and not argument[len(PREFIX) :].startswith(("{", "["))


def requote(arguments: Sequence[str]) -> list[str] | None:
    """The arguments with each run of two or more bare ``span:X`` words (what bash or zsh
    made of an unquoted span) put back as the one span they came from; None when there
    is no such run, a bare word stands alone (no telling what it was), or a run cannot be
    written back as a span giving exactly its values.

    A run of consecutive integers or of consecutive letters (either way) becomes a range,
    any other run a list: ``span:1 span:2 span:3`` -> ``span:{1..3}``,
    ``span:32 span:64`` -> ``span:{32,64}``. Only words that are refused anyway are
    touched, so no argument that would run is ever reinterpreted.
    """
    rebuilt: list[str] = []
    found = False
    index = 0
    while index < len(arguments):
        if not _is_bare(arguments[index]):
            rebuilt.append(arguments[index])
            index += 1
            continue
        end = index
        while end < len(arguments) and _is_bare(arguments[end]):
            end += 1
        values = tuple(word[len(PREFIX) :] for word in arguments[index:end])
        if len(values) < 2:
            return None
        span = _as_span(values)
        if span is None:
            return None
        rebuilt.append(span)
        found = True
        index = end
    return rebuilt if found else None


def _as_span(values: tuple[str, ...]) -> str | None:
    """One span whose values are exactly ``values``; None when none is."""
    first, last = values[0], values[-1]
    candidates = [
        f"{PREFIX}{{{first}..{last}}}",
        f"{PREFIX}{{{','.join(values)}}}",
        f"{PREFIX}[{','.join(values)}]",
    ]
    for candidate in candidates:
        try:
            if parse_span(candidate) == values:
                return candidate
        except ValueError:
            continue
    return None


def quoted_command(words: Sequence[str]) -> str:
    """A command line for a POSIX shell that passes exactly ``words`` (spans quoted)."""
    return shlex.join(words)
