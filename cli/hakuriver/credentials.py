"""Which token the CLI presents: the first of ``--token``, ``$HAKURIVER_TOKEN``,
``~/.hakuriver/token`` and, last, the first admin's ``<data_dir>/admin.token``.

The files must be private (mode 0600, as ssh wants of a key): one that its group or
others may read is refused with the ``chmod`` that fixes it. The last place is where
the host writes its first admin's token (control_plane/bootstrap.py) under the
configured data directory, so on the machine that runs ``hakuriver up`` the user who
started it needs no step at all, and nobody else can read it.

Stdlib only: ``task submit``'s quick path (quick.py) imports it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from events.config import DEFAULT_DATA_DIR
from events.credentials import SecretFileError, read_secret

TOKEN_ENV = "HAKURIVER_TOKEN"
TOKEN_FILE = Path("~/.hakuriver/token")
ADMIN_TOKEN_FILE = "admin.token"

__all__ = ["SecretFileError", "find_token", "token_files"]


def token_files(config: dict[str, Any] | None = None) -> list[Path]:
    """The files looked in, in order."""
    data_dir = (config or {}).get("paths", {}).get("data_dir") or DEFAULT_DATA_DIR
    return [TOKEN_FILE.expanduser(), Path(data_dir).expanduser() / ADMIN_TOKEN_FILE]


def find_token(explicit: str | None = None, config: dict[str, Any] | None = None) -> str | None:
    """The token to present, or None when there is none anywhere.

    Raises ``SecretFileError`` for a token file others can read.
    """
    if explicit:
        return explicit.strip()
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return env
    for path in token_files(config):
        try:
            found = read_secret(path, strict=True)
        except PermissionError:
            continue  # another user's admin.token: not ours to use
        if found:
            return found
    return None
