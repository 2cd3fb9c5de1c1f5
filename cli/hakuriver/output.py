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
from typing import Any

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def print_json(document: Any) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def say(line: str) -> None:
    """A plain line on stdout, flushed (ids are read by scripts as they appear)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def note(line: str) -> None:
    """A line for the person at the terminal, on stderr."""
    sys.stderr.write(line + "\n")
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
