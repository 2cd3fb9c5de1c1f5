"""``hakuriver key ...``: the SSH public keys the host lets into your VPS tasks.

A key is checked here before it is sent: one OpenSSH public key line (``TYPE BASE64
[COMMENT]``, as in ``~/.ssh/id_ed25519.pub``) whose data decodes and names the same
type. A private key is refused outright, with the file to give instead.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from cyclopts import App

from cli.hakuriver.identity_render import key_table
from cli.hakuriver.invocation import (
    Connection,
    JsonFlag,
    connection,
    note,
    print_json,
    reported,
    say,
    show,
)
from control_plane.errors import InvalidRequest

key_app = App(name="key", help="Your SSH public keys (for VPS tasks): add, list, remove.")

# What ``key add`` reads when given neither FILE nor --key, first found wins.
DEFAULT_KEY_FILES = ("~/.ssh/id_ed25519.pub", "~/.ssh/id_rsa.pub")
# The key types OpenSSH writes to a ``.pub`` file (DSA is gone from OpenSSH: not here),
# with how many length-prefixed strings their data holds, the type itself first.
KEY_FIELDS = {
    "ssh-ed25519": 2,  # type, key
    "ssh-rsa": 3,  # type, e, n
    "ecdsa-sha2-nistp256": 3,  # type, curve, point
    "ecdsa-sha2-nistp384": 3,
    "ecdsa-sha2-nistp521": 3,
    "sk-ssh-ed25519@openssh.com": 3,  # type, key, application
    "sk-ecdsa-sha2-nistp256@openssh.com": 4,  # type, curve, point, application
}
KEY_TYPES = tuple(KEY_FIELDS)
_LONGEST_LINE = 16384  # an RSA-16384 key line is about 2,800 characters


def public_key_line(text: str, *, source: str = "--key") -> str:
    """The one OpenSSH public key line in ``text``, whitespace tidied; else InvalidRequest."""
    if "PRIVATE KEY" in text:
        hint = f" (give {source}.pub)" if source != "--key" else ""
        raise InvalidRequest(
            "public_key", f"{source} is a private key: never send one; give its public half{hint}"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("#")]
    if len(lines) != 1:
        raise InvalidRequest(
            "public_key", f"{source}: one public key line expected, found {len(lines)}"
        )
    line = lines[0]
    if len(line) > _LONGEST_LINE:
        raise InvalidRequest("public_key", f"{source}: {len(line)} characters is no public key")
    parts = line.split(None, 2)
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise InvalidRequest(
            "public_key",
            f"{source} does not look like an OpenSSH public key: expected 'TYPE DATA"
            f" [COMMENT]' with TYPE one of {', '.join(KEY_TYPES)}",
        )
    kind, data = parts[0], parts[1]
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("public_key", f"{source}: the key data is not base64") from None
    # The data is the key type again, then the key, as length-prefixed strings (RFC 4253).
    fields = _wire_strings(blob)
    if fields is None or len(fields) != KEY_FIELDS[kind] or fields[0] != kind.encode():
        raise InvalidRequest(
            "public_key", f"{source}: the key data does not hold a {kind} key (damaged or cut?)"
        )
    return " ".join(parts)


def _wire_strings(blob: bytes) -> list[bytes] | None:
    """``blob`` as SSH wire strings (4-byte length, bytes), or None if it is not exactly that."""
    fields: list[bytes] = []
    at = 0
    while at < len(blob):
        if at + 4 > len(blob):
            return None
        length = int.from_bytes(blob[at : at + 4], "big")
        at += 4
        if at + length > len(blob):
            return None
        fields.append(blob[at : at + length])
        at += length
    return fields


def read_key_file(path: Path) -> str:
    """The public key line in the file at ``path``."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        raise InvalidRequest("file", f"{path} does not exist") from None
    except OSError as exc:
        raise InvalidRequest("file", f"cannot read {path}: {exc.strerror or exc}") from None
    return public_key_line(text, source=str(path))


def default_key_file() -> Path:
    """The first of ``DEFAULT_KEY_FILES`` that exists."""
    for name in DEFAULT_KEY_FILES:
        path = Path(name).expanduser()
        if path.exists():
            return path
    raise InvalidRequest(
        "file",
        f"no public key at {' or '.join(DEFAULT_KEY_FILES)}: give FILE or --key"
        " (make a key with `ssh-keygen -t ed25519`)",
    )


@key_app.command
@reported
def add(
    file: Path | None = None,
    /,
    *,
    key: str | None = None,
    user: str | None = None,
    as_json: JsonFlag = False,
    conn: Connection | None = None,
) -> int:
    """Add an SSH public key (default: ~/.ssh/id_ed25519.pub, then ~/.ssh/id_rsa.pub).

    Parameters
    ----------
    file
        A public key file (``.pub``).
    key
        The public key line itself, instead of a file.
    user
        Whose key (an admin only, for someone else; default: yours).
    as_json
        Print the API's document ``{"key": {...}}``.
    """
    if file is not None and key is not None:
        raise InvalidRequest("key", "give FILE or --key, not both")
    if key is not None:
        line = public_key_line(key)
    else:
        line = read_key_file(file.expanduser() if file is not None else default_key_file())
    with connection(conn).client() as client:
        added = client.add_key(line, user=user)
    if as_json:
        print_json({"key": added})
    else:
        comment = f" ({added['comment']})" if added.get("comment") else ""
        say(f"added key {added.get('id')}: {added.get('type')} {added.get('fingerprint')}{comment}")
    return 0


@key_app.command(name="list")
@reported
def list_keys(
    *, user: str | None = None, as_json: JsonFlag = False, conn: Connection | None = None
) -> int:
    """List your SSH public keys (an admin: another user's with --user).

    Parameters
    ----------
    user
        This user's keys (admin).
    as_json
        Print the API's document ``{"keys": [...]}``.
    """
    with connection(conn).client() as client:
        keys = client.keys(user=user)
    if as_json:
        print_json({"keys": keys})
    elif keys:
        show(key_table(keys))
    else:
        note("no keys (add one with `hakuriver key add`)")
    return 0


@key_app.command
@reported
def remove(key_id: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """Remove one of your SSH public keys (an admin: anyone's).

    Parameters
    ----------
    key_id
        The key's id, as `key list` shows it.
    as_json
        Print the API's answer.
    """
    with connection(conn).client() as client:
        answer = client.remove_key(key_id)
    if as_json:
        print_json(answer)
    else:
        say(f"removed key {key_id}")
    return 0
