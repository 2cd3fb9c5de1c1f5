"""``hakuriver``'s console script: the command tree in commands.py, loaded only if needed.

``hakuriver --version`` and a plain ``task submit`` are answered here without
the CLI framework (cyclopts and rich take four times as long to import as the
interpreter takes to start): a shell loop of submits should feel instant
(docs/decisions.md, "A CLI that answers at once"). Everything else, and any
``task submit`` the quick path does not fully understand, goes to commands.py.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hakuriver`` with these arguments (``sys.argv[1:]`` by default); the exit code."""
    tokens = sys.argv[1:] if argv is None else list(argv)
    if tokens == ["--version"]:
        from cli.hakuriver import VERSION

        sys.stdout.write(VERSION + "\n")
        return 0
    if tokens[:2] == ["task", "submit"]:
        from cli.hakuriver.quick import quick_submit

        code = quick_submit(tokens[2:])
        if code is not None:
            return code
    from cli.hakuriver.commands import run

    return run(tokens)
