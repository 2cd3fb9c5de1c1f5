"""The child process behind a ``module:function`` target.

hakurun runs ``python <this file> module:function ARG...`` once per
combination, so a crash, a hang or a leaked global in one call cannot touch
the others, and parallel calls need no threads. The function gets the
arguments as strings and ``sys.argv`` is ``[spec, ARG...]``.

This file runs by path and imports only the standard library, so it works in
any directory, even one holding another package called ``cli``.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable

# Exit status when the spec itself is wrong (no such function, not callable).
LOAD_FAILED = 2


class LoadError(Exception):
    """The function named by the spec cannot be found."""


def load(spec: str) -> Callable[..., object]:
    """Import ``module`` and look up the (possibly dotted) ``function`` in it."""
    module_name, _, attribute_path = spec.partition(":")
    found: object = importlib.import_module(module_name)
    for attribute in attribute_path.split("."):
        try:
            found = getattr(found, attribute)
        except AttributeError:
            raise LoadError(f"{spec}: {module_name} has no attribute {attribute_path!r}") from None
    if not callable(found):
        raise LoadError(f"{spec}: {attribute_path!r} is not callable")
    return found


def exit_status(result: object) -> int:
    """The process exit status for a function's return value.

    ``None`` and ``0`` succeed; any other int fails with that status (1 when it
    does not fit in an exit status). Other values, booleans included, are not
    statuses and count as success.
    """
    if isinstance(result, bool) or not isinstance(result, int):
        return 0
    return result if 0 <= result <= 255 else 1


def call(spec: str, arguments: list[str]) -> int:
    """Call the function with the arguments; the exit status of the combination."""
    try:
        function = load(spec)
    except LoadError as error:
        print(f"hakurun: {error}", file=sys.stderr)
        return LOAD_FAILED
    except Exception:
        traceback.print_exc()
        return LOAD_FAILED
    try:
        result = function(*arguments)
    except Exception:
        traceback.print_exc()
        return 1
    return exit_status(result)


if __name__ == "__main__":
    # Run by path, sys.path[0] is this package's folder; resolve modules from the
    # working directory instead, exactly as ``python -m`` would.
    sys.path[0] = os.getcwd()
    spec, *arguments = sys.argv[1:]
    sys.argv = [spec, *arguments]
    status = call(spec, arguments)
    sys.stdout.flush()
    raise SystemExit(status)
