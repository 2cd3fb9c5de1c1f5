"""What every ``hakuriver`` command prints, and its exit codes; nothing else imported.

Exit codes: 0 success, 1 a failure that is not the user's input (no control plane,
a server error, a task that did not complete), 2 bad input (an option the client
or the server refused: a 4xx answer), 130 interrupted.

Kept to the standard library so that the quick path of ``task submit`` (quick.py)
prints exactly what the full command prints, without loading the CLI framework.
"""

from __future__ import annotations

import json
import os
import sys
import unicodedata
from collections.abc import Mapping
from typing import Any

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# Invisible characters that reorder or hide text on a terminal (bidi controls, zero widths):
# shown as escapes like the control characters (category Cc: C0, DEL, C1).
_INVISIBLE = frozenset(
    "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
)
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def printable(text: str, *, keep_lines: bool = False) -> str:
    """``text`` with each control or invisible character written as an escape (``\\x1b``).

    Whatever a task's name, a node's name or a server's message holds, printing it can
    then neither drive the terminal (ESC sequences: titles, colours, cursor moves) nor
    hide or reorder what is around it. ``keep_lines`` leaves newlines and tabs as they are
    (for messages of several lines). Rich markup is another matter: the CLI's console
    reads none (invocation.show).
    """
    if text.isprintable():
        return text
    out: list[str] = []
    for ch in text:
        if keep_lines and ch in "\n\t":
            out.append(ch)
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        elif ch in _INVISIBLE or unicodedata.category(ch) == "Cc":
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def printable_doc(value: Any) -> Any:
    """A JSON document with every string in it (keys too) made ``printable``."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, Mapping):
        return {printable_doc(k): printable_doc(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable_doc(item) for item in value]
    return value


def print_json(document: Any) -> None:
    """Write one JSON document to stdout (every control or invisible character escaped)."""
    text = json.dumps(document, indent=2, ensure_ascii=False)
    # json escapes C0 controls itself; DEL, C1 and the invisible ones it leaves raw, and
    # they can only stand inside strings, where ``\\uXXXX`` means the same.
    if not text.isprintable():
        text = "".join(
            f"\\u{ord(ch):04x}"
            if ch in _INVISIBLE or (ch not in "\n" and unicodedata.category(ch) == "Cc")
            else ch
            for ch in text
        )
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def say(line: str) -> None:
    """A plain line on stdout, flushed (ids are read by scripts as they appear)."""
    sys.stdout.write(printable(line, keep_lines=True) + "\n")
    sys.stdout.flush()


def note(line: str) -> None:
    """A line for the person at the terminal, on stderr."""
    sys.stderr.write(printable(line, keep_lines=True) + "\n")
    sys.stderr.flush()


def fail(message: str, code: int = EXIT_FAILED) -> int:
    """Print ``error: message`` on stderr; the exit code to return."""
    note(f"error: {message}")
    return code


def report_bug(exc: Exception) -> int:
    """The line for an error nobody foresaw; with ``HAKURIVER_DEBUG`` set, raise it instead."""
    if os.environ.get("HAKURIVER_DEBUG"):
        raise exc
    return fail(
        f"unexpected {type(exc).__name__}: {exc} (this is a bug; run again with"
        " HAKURIVER_DEBUG=1 for the traceback and report it)"
    )


def silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again.

    For a reader that closed the pipe early (``hakuriver task list | head``).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
