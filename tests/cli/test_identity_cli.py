"""The identity commands without a cluster: lifetimes, SSH keys, refusals, what is printed.

Commands run in-process (``main([...])`` returns the exit code). ``HAKURIVER_URL``
points at a port nobody listens on, so exit 2 means "refused before sending" and
exit 1 "tried to send" (as in test_hakuriver_cli.py). SSH keys are made by the real
``ssh-keygen``.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from rich.console import Console, RenderableType

from cli.hakuriver.client import Answer, _error_of, error_line
from cli.hakuriver.commands import app
from cli.hakuriver.identity import (
    parse_ttl,
    print_join_token,
    print_user_token,
    runner_command,
    token_id_of,
)
from cli.hakuriver.identity_render import (
    key_table,
    stamp_us,
    token_state,
    token_table,
    user_table,
    whoami_panel,
)
from cli.hakuriver.keys import public_key_line
from cli.hakuriver.main import main
from control_plane.errors import InvalidRequest

NOW_US = 1_800_000_000_000_000  # 2027-01-15 08:00:00Z
SECRET = "hkr_u_0123456789abcdef." + "A" * 43


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(autouse=True)
def nowhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No configuration, no token, and a control plane URL that refuses connections."""
    monkeypatch.setenv("HAKURIVER_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("HAKURIVER_CONFIG", raising=False)
    monkeypatch.delenv("HAKURIVER_TOKEN", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def rendered(renderable: RenderableType) -> str:
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def keygen(tmp_path: Path, kind: str, comment: str = "alice@laptop") -> Path:
    """A fresh key pair made by ssh-keygen; the private key's path."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    path = tmp_path / f"id_{kind}"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


# --- lifetimes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "seconds"),
    [("30m", 1800), ("12h", 43200), ("90d", 7_776_000), ("1w", 604_800), ("45s", 45)],
)
def test_a_lifetime_is_a_number_and_a_unit(typed: str, seconds: int) -> None:
    assert parse_ttl(typed) == seconds
    assert parse_ttl(typed.upper()) == seconds


def test_never_asks_for_a_token_that_does_not_expire() -> None:
    assert parse_ttl("never") == "never"
    assert parse_ttl(" Never ") == "never"


@pytest.mark.parametrize("typed", ["", "0d", "90", "5y", "-1d", "1.5h", "d", "12 h", "1e3s"])
def test_anything_else_is_refused_naming_the_field(typed: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_ttl(typed)
    assert refused.value.field == "ttl"
    assert "30m, 12h or 90d" in refused.value.message


def test_a_bad_ttl_is_refused_before_anything_is_sent(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "--ttl", "3 days"]) == 2
    assert capsys.readouterr().err.startswith("error: ttl: '3 days' is not a lifetime")
    assert main(["user", "add", "bob", "--ttl", "forever"]) == 2


def test_uses_belongs_to_join_tokens_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "--uses", "3"]) == 2
    assert "only a join token (--join) has a number of uses" in capsys.readouterr().err
    assert main(["token", "create", "--join", "--user", "bob"]) == 2
    assert main(["token", "create", "--join", "--uses", "0"]) == 2
    # Well formed: it goes to the host (nobody listens: exit 1).
    assert main(["token", "create", "--join", "--uses", "3", "--ttl", "1h"]) == 1


def test_a_role_is_user_or_admin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["user", "add", "bob", "--role", "root"]) == 2
    assert "root" in capsys.readouterr().err
    assert main(["user", "role", "bob", "owner"]) == 2
    assert main(["user", "role", "bob", "admin"]) == 1


def test_token_revoke_takes_an_id_or_the_whole_token() -> None:
    assert token_id_of("0123456789abcdef") == "0123456789abcdef"
    assert token_id_of(SECRET) == "0123456789abcdef"
    assert token_id_of(" hkr_j_fedcba9876543210.xyz\n") == "fedcba9876543210"


# --- the global --token ---------------------------------------------------------------


@pytest.mark.parametrize(
    "words",
    [
        ["whoami"],
        ["user", "list"],
        ["token", "list", "--all"],
        ["key", "list"],
        ["node", "revoke", "n1"],
        ["node", "forget", "n1"],
        ["task", "list"],
        ["node", "list"],
    ],
)
def test_every_client_command_takes_token(words: list[str]) -> None:
    _, bound, _ = app.parse_args([*words, "--token", SECRET])
    assert bound.kwargs["conn"].token == SECRET


# --- SSH public keys ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_a_public_key_file_from_ssh_keygen_is_accepted_as_written(
    tmp_path: Path, kind: str
) -> None:
    private = keygen(tmp_path, kind, comment="alice at laptop")
    text = Path(f"{private}.pub").read_text()
    line = public_key_line(text, source="x.pub")
    assert line == text.strip()
    assert line.endswith(" alice at laptop")


def test_a_private_key_is_refused_with_the_file_to_give_instead(tmp_path: Path) -> None:
    private = keygen(tmp_path, "ed25519")
    with pytest.raises(InvalidRequest) as refused:
        public_key_line(private.read_text(), source=str(private))
    assert refused.value.field == "public_key"
    assert refused.value.message == (
        f"{private} is a private key: never send one; give its public half (give {private}.pub)"
    )


def test_damaged_or_mislabelled_keys_are_refused(tmp_path: Path) -> None:
    line = Path(f"{keygen(tmp_path, 'ed25519')}.pub").read_text().strip()
    kind, data, comment = line.split(" ", 2)
    cases = {
        f"ssh-rsa {data} {comment}": "does not hold a ssh-rsa key",
        f"{kind} {data[:-8]} {comment}": "does not hold a ssh-ed25519 key",
        f"{kind} {data[:-1]} {comment}": "not base64",
        f"{kind} {data}AAAA {comment}": "does not hold a ssh-ed25519 key",
        f"{kind} {data[:40]}== {comment}": "does not hold a ssh-ed25519 key",
        f"ssh-dss {data}": "does not look like an OpenSSH public key",
        kind: "does not look like an OpenSSH public key",
        f"{line}\n{line}": "one public key line expected, found 2",
        "": "one public key line expected, found 0",
    }
    for text, says in cases.items():
        with pytest.raises(InvalidRequest) as refused:
            public_key_line(text)
        assert says in refused.value.message, (text, refused.value.message)


def test_key_add_reads_the_default_files_in_order(
    nowhere: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["key", "add"]) == 2
    assert capsys.readouterr().err == (
        "error: file: no public key at ~/.ssh/id_ed25519.pub or ~/.ssh/id_rsa.pub: give FILE"
        " or --key (make a key with `ssh-keygen -t ed25519`)\n"
    )
    ssh = nowhere / ".ssh"
    ssh.mkdir()
    (ssh / "id_rsa.pub").write_text("not a key\n")
    assert main(["key", "add"]) == 2  # id_rsa.pub is read, and refused
    assert "id_rsa.pub does not look like an OpenSSH public key" in capsys.readouterr().err
    shutil.copy(f"{keygen(tmp_path, 'ed25519')}.pub", ssh / "id_ed25519.pub")
    assert main(["key", "add"]) == 1  # id_ed25519.pub comes first, passes, and is sent


def test_key_add_takes_a_file_or_a_line_not_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    public = Path(f"{keygen(tmp_path, 'ed25519')}.pub")
    assert main(["key", "add", str(public), "--key", public.read_text()]) == 2
    assert "give FILE or --key, not both" in capsys.readouterr().err
    assert main(["key", "add", str(tmp_path / "missing.pub")]) == 2
    assert "missing.pub does not exist" in capsys.readouterr().err
    assert main(["key", "add", "--key", "ssh-ed25519 AAAA"]) == 2
    assert main(["key", "add", "--key", public.read_text()]) == 1


# --- 401 and 403 -------------------------------------------------------------------------


def answer(status: int, body: dict[str, str]) -> Answer:
    return Answer(status, "", {}, json.dumps(body).encode(), "http://host/api/users")


def test_a_refused_token_says_how_to_get_and_keep_a_new_one() -> None:
    body = {"error": "unauthenticated", "field": "Authorization", "message": "token 1 has expired"}
    line = error_line(_error_of(answer(401, body), token_sent=True))
    assert line == (
        "the host refused the token (token 1 has expired): get a new one from an admin"
        " (`hakuriver token create --user YOU`) and keep it in ~/.hakuriver/token"
        " (chmod 600) or $HAKURIVER_TOKEN"
    )
    missing = error_line(_error_of(answer(401, {**body, "message": "this needs a token"})))
    assert missing == (
        "the host needs a token and none was given: pass --token TOKEN, or keep it in"
        " ~/.hakuriver/token (chmod 600) or $HAKURIVER_TOKEN; an admin makes one with"
        " `hakuriver token create --user YOU`"
    )


def test_forbidden_says_so_with_the_hosts_reason() -> None:
    body = {
        "error": "forbidden",
        "field": "Authorization",
        "message": "this needs an admin's token",
    }
    error = _error_of(answer(403, body), token_sent=True)
    assert error_line(error) == "forbidden: this needs an admin's token"
    body = {"error": "forbidden", "field": "user", "message": "other users' tokens: admin only"}
    assert error_line(_error_of(answer(403, body))) == (
        "forbidden: user: other users' tokens: admin only"
    )
    other = _error_of(answer(404, {"error": "not_found", "message": "no user 'x'"}))
    assert error_line(other) == "no user 'x'"


# --- what is printed ---------------------------------------------------------------------


def test_a_new_token_is_alone_on_stdout_and_the_advice_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    made = {"token": SECRET, "id": "0123456789abcdef", "user": "bob", "name": "laptop"}
    print_user_token({**made, "expires_at_us": NOW_US}, holder="bob")
    out, err = capsys.readouterr()
    assert out == SECRET + "\n"
    assert err.splitlines() == [
        "token 0123456789abcdef 'laptop' for bob, expires 2027-01-15 08:00:00Z:",
        "It will not be shown again: give it to bob, who should keep it in ~/.hakuriver/token"
        " (chmod 600) or $HAKURIVER_TOKEN.",
    ]
    print_user_token({**made, "name": None, "expires_at_us": None})
    out, err = capsys.readouterr()
    assert out == SECRET + "\n"
    assert "for bob, never expires:" in err
    assert "It will not be shown again: keep it in ~/.hakuriver/token" in err


def test_a_join_token_is_printed_as_the_runner_command(capsys: pytest.CaptureFixture[str]) -> None:
    join = "hkr_j_00000000000000aa." + "B" * 43
    made = {"token": join, "id": "00000000000000aa", "kind": "join", "expires_at_us": NOW_US}
    made |= {"host_url": "https://head:8000", "ca_fingerprint": "sha256:AB:CD", "uses": 2}
    print_join_token(made)
    out, err = capsys.readouterr()
    assert out == (
        f"hakuriver runner --join {join} --host https://head:8000 --ca-fingerprint sha256:AB:CD\n"
    )
    assert "good for 2 nodes, expires 2027-01-15 08:00:00Z" in err
    plain = runner_command({**made, "ca_fingerprint": None, "host_url": "http://h:8000"})
    assert plain == f"hakuriver runner --join {join} --host http://h:8000"


def test_token_states_and_the_token_table() -> None:
    base = {"id": "0123456789abcdef", "user": "bob", "kind": "user", "revoked": False}
    assert token_state({**base, "expires_at_us": None}, NOW_US) == "active"
    assert token_state({**base, "expires_at_us": NOW_US - 1}, NOW_US) == "expired"
    assert token_state({**base, "revoked": True, "expires_at_us": NOW_US - 1}, NOW_US) == "revoked"
    assert token_state({**base, "kind": "join", "uses_left": 0}, NOW_US) == "used up"
    text = rendered(
        token_table(
            [
                {**base, "name": "laptop", "issued_at_us": NOW_US, "expires_at_us": None},
                {**base, "id": "fedcba9876543210", "kind": "agent", "node": "n1", "revoked": True},
            ],
            NOW_US,
        )
    )
    header, first, second = text.splitlines()
    assert header.split() == [
        "ID", "USER", "KIND", "NAME", "STATE", "ISSUED", "EXPIRES", "BY", "USES", "NODE",
    ]  # fmt: skip
    assert first.split() == [
        "0123456789abcdef", "bob", "user", "laptop", "active", "2027-01-15", "08:00:00Z",
        "never", "-", "-", "-",
    ]  # fmt: skip
    assert "revoked" in second and second.rstrip().endswith("n1")
    assert SECRET not in text


def test_user_key_and_whoami_renderings() -> None:
    users = rendered(
        user_table(
            [
                {"name": "admin", "role": "admin", "disabled": False, "created_by": "host"},
                {"name": "bob", "role": "user", "disabled": True, "created_at_us": NOW_US},
            ]
        )
    )
    assert [line.split()[:3] for line in users.splitlines()[1:]] == [
        ["admin", "admin", "active"],
        ["bob", "user", "disabled"],
    ]
    key = {"id": "k1", "user": "bob", "type": "ssh-ed25519", "fingerprint": "SHA256:abc"}
    keys = rendered(key_table([{**key, "comment": "bob@laptop", "added_at_us": NOW_US}]))
    assert keys.splitlines()[1].split() == [
        "k1", "bob", "ssh-ed25519", "SHA256:abc", "bob@laptop", "2027-01-15", "08:00:00Z",
    ]  # fmt: skip
    me = {"user": "bob", "role": "user", "token_id": "0123456789abcdef", "token_kind": "user"}
    panel = rendered(whoami_panel({**me, "node": None, "expires_at_us": None}))
    assert "bob" in panel and "0123456789abcdef (user)" in panel and "never" in panel
    assert stamp_us(None) == "-" and stamp_us(0) == "1970-01-01 00:00:00Z"
