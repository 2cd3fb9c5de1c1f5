"""API tokens: their text form, how they are made, and how a secret is checked.

A token reads ``hkr_<kind>_<id>.<secret>``: ``kind`` is ``u`` (a user's), ``a`` (an
enrolled node agent's) or ``j`` (a join token, exchanged once for an agent's); ``id`` is
16 lowercase hex digits, public (it names the token in ``token list`` and in events);
``secret`` is 32 random bytes in URL-safe base64 (43 characters), shown once when the
token is made. The log keeps only the secret's SHA-256 (``token.issued``), and a
presented secret is compared with it in constant time.

Stdlib only: the host, the CLI and the node agent all read tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Literal, NamedTuple

TokenKind = Literal["user", "agent", "join"]
KIND_LETTER: dict[str, str] = {"user": "u", "agent": "a", "join": "j"}
LETTER_KIND: dict[str, TokenKind] = {"u": "user", "a": "agent", "j": "join"}

_TOKEN = re.compile(r"hkr_([uaj])_([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")
# Longer than any token: what ``parse_token`` even looks at.
MAX_TOKEN_LENGTH = 128


class Credential(NamedTuple):
    """A token taken apart: its kind, its public id, its secret."""

    kind: TokenKind
    id: str
    secret: str

    @property
    def text(self) -> str:
        """The token as given to its holder."""
        return f"hkr_{KIND_LETTER[self.kind]}_{self.id}.{self.secret}"


class NewToken(NamedTuple):
    """A token just made: the text for its holder (once), its id, its secret's digest."""

    text: str
    id: str
    sha256: str


def parse_token(text: str) -> Credential | None:
    """The credential ``text`` holds, or None if it is not a token at all."""
    if len(text) > MAX_TOKEN_LENGTH:
        return None
    found = _TOKEN.fullmatch(text.strip())
    if found is None:
        return None
    letter, token_id, secret = found.groups()
    return Credential(LETTER_KIND[letter], token_id, secret)


def secret_digest(secret: str) -> str:
    """The hex SHA-256 of a secret: all the log keeps of it."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, digest: str) -> bool:
    """Whether ``secret`` is the one whose digest is ``digest`` (constant time)."""
    return hmac.compare_digest(secret_digest(secret), digest)


def make_token(kind: TokenKind) -> NewToken:
    """A fresh token of ``kind`` (a high-entropy secret from the OS's generator)."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    credential = Credential(kind, token_id, secret)
    return NewToken(credential.text, token_id, secret_digest(secret))


def bearer(text: str) -> str:
    """The ``Authorization`` header value that presents token ``text``."""
    return f"Bearer {text}"


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path``: mode 0600 from the start, durable, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (text + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


class SecretFileError(Exception):
    """A token file others can read (or that is not a file): refused, with the fix."""


def read_secret(path: Path, *, strict: bool = False) -> str | None:
    """The token in ``path``, or None if there is none.

    ``strict``: refuse (``SecretFileError``) a file that its group or others may read,
    as ssh does with a private key: a token readable by others is no secret.
    """
    try:
        with open(path, "rb") as f:
            if strict:
                mode = os.fstat(f.fileno()).st_mode
                if not stat.S_ISREG(mode):
                    raise SecretFileError(f"{path} is not a file")
                if mode & 0o077:
                    raise SecretFileError(
                        f"{path} is readable by others (mode {stat.S_IMODE(mode):o}): a token"
                        f" must be private; run: chmod 600 {path}"
                    )
            data = f.read(4096)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return data.decode(errors="replace").strip() or None
