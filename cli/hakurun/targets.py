"""What hakurun runs: an executable, a Python module, or a ``module:function``.

The target (the first word after hakurun's options) is resolved once, before
anything runs, in this order:

1. a word with a ``/`` is a path to an executable file (``./tool``);
2. a word found on ``PATH`` is an executable (``python``, ``echo``), so an
   installed command always wins over a module of the same name;
3. ``module:function`` is a function, called in a child Python process;
4. an importable module name runs as ``python -m module`` with this interpreter.

Modules are looked up from the current directory first, as ``python -m`` does.
Only the top-level package is looked up here: importing the user's code in
hakurun itself would run its import-time side effects once more.
"""

from __future__ import annotations

import enum
import importlib.util
import os
import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cli.hakurun import call

_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_MODULE = re.compile(_DOTTED)
_FUNCTION = re.compile(rf"({_DOTTED}):({_DOTTED})")


class TargetKind(enum.Enum):
    """The three kinds of target the seed documents."""

    EXECUTABLE = "executable"
    MODULE = "module"
    FUNCTION = "function"


class TargetError(ValueError):
    """A target hakurun cannot run, with what to do instead."""


@dataclass(frozen=True)
class Target:
    """A resolved target: how to turn one argument vector into a process's argv."""

    kind: TargetKind
    spec: str
    launcher: tuple[str, ...]

    def argv(self, arguments: Sequence[str]) -> list[str]:
        """The argv of the process that runs the target with these arguments."""
        return [*self.launcher, *arguments]

    def describe(self, arguments: Sequence[str]) -> str:
        """The shell-quoted command a user reads (dry run, labels, failure summary)."""
        if self.kind is TargetKind.FUNCTION:
            # The real argv goes through an internal launcher; the call is what matters.
            return shlex.join([self.spec, *arguments])
        return shlex.join(self.argv(arguments))


def resolve(spec: str, cwd: Path | None = None) -> Target:
    """Resolve the target word by the precedence above; raises ``TargetError``."""
    where = Path.cwd() if cwd is None else cwd
    if not spec:
        raise TargetError("the target is empty")
    if "/" in spec:
        return _executable_path(spec, where)
    if shutil.which(spec) is not None:
        return Target(TargetKind.EXECUTABLE, spec, (spec,))
    function = _FUNCTION.fullmatch(spec)
    if function is not None:
        module = function.group(1)
        if not module_exists(module, where):
            raise TargetError(
                f"{spec!r}: no module {module!r} importable from {where} or the Python path"
            )
        return Target(TargetKind.FUNCTION, spec, (sys.executable, call.__file__, spec))
    if _MODULE.fullmatch(spec) and module_exists(spec, where):
        return Target(TargetKind.MODULE, spec, (sys.executable, "-m", spec))
    hint = f"; to run a script, use: hakurun python {spec} ..." if spec.endswith(".py") else ""
    raise TargetError(
        f"{spec!r} is not an executable on PATH, an importable module, or module:function{hint}"
    )


def _executable_path(spec: str, cwd: Path) -> Target:
    """A target given as a path must be an executable file."""
    path = cwd / spec
    if not path.exists():
        raise TargetError(f"{spec!r}: no such file")
    if path.is_dir():
        raise TargetError(f"{spec!r} is a directory, not an executable")
    if not os.access(path, os.X_OK):
        hint = f"; make it executable (chmod +x {spec}) or run it with its interpreter"
        raise TargetError(f"{spec!r} is not executable{hint}")
    return Target(TargetKind.EXECUTABLE, spec, (spec,))


def module_exists(name: str, cwd: Path) -> bool:
    """Whether ``name`` looks importable from ``cwd``, without importing anything."""
    top, _, rest = name.partition(".")
    saved = sys.path[:]
    sys.path.insert(0, str(cwd))
    try:
        # find_spec on a top-level name only locates it; a dotted name would import parents.
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    finally:
        sys.path[:] = saved
    if spec is None:
        return False
    # A dotted name needs a package at the top; "demo.py" names no module.
    return not rest or spec.submodule_search_locations is not None
