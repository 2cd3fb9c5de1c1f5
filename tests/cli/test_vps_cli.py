"""``hakuriver vps ...`` and ``hakuriver ssh``: the commands against a real host, what they
print, and the exact ssh command line, checked by the real OpenSSH client (``ssh -G``
resolves a command line or a config file without connecting).

The commands run in-process (``main([...])`` returns the exit code), with HOME a scratch
folder (the keys in ~/.ssh, ~/.hakuriver/known_hosts). A VPS submitted to a host with no
node stays pending, which is all the managing commands need; the shell's relay is tested
in tests/e2e/test_vps_shell_relay.py.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console, RenderableType
from support.cluster import Cluster, running_cluster

from cli.hakuriver.main import main
from cli.hakuriver.seeds import vps_words
from cli.hakuriver.ssh import check_reachable, config_block, pin_gateway, ssh_argv
from cli.hakuriver.vps import vps_detail, vps_table
from control_plane.errors import Conflict

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMVgsrjvUWjrmylU9ejqs+tPeSN7XdrZcMyuKLEQSbyv"
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICU2/wUULZyFk8yZso6rlkdwixTG/c+Ne0aZ/RerFcbt"
GATEWAY = {
    "enabled": True,
    "host": "head.example",
    "port": 8002,
    "host_key": f"{OTHER} hakuriver-gateway",
    "fingerprint": "SHA256:x",
    "user": "alice",
}
TASK_ID = "01a2380d-1949-72bd-a1e3-1e90d34b2f9b"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster"), agents=()) as started:
        yield started


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    (folder / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.delenv("HAKURIVER_CONFIG", raising=False)
    return folder


def as_user(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("HAKURIVER_URL", cluster.url)
    monkeypatch.setenv("HAKURIVER_TOKEN", token)


def rendered(renderable: RenderableType) -> str:
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def run(capsys: pytest.CaptureFixture[str], *words: str) -> tuple[int, str, str]:
    code = main(list(words))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_user_submits_lists_inspects_and_stops_a_vps(
    cluster: Cluster, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    alice = cluster.add_user("alice")
    with cluster.client_as(alice) as http:
        assert http.post("/api/keys", json={"public_key": f"{KEY} alice@laptop"}).status_code == 201
    as_user(cluster, monkeypatch, alice)
    # When alice submits without a key option, her registered key is let in
    code, out, err = run(capsys, "vps", "submit", "--container", "env", "--name", "box")
    assert code == 0, err
    number = out.strip()
    assert "your registered keys" in err and f"hakuriver ssh {number}" in err
    task = cluster.task(number)
    assert task["task_type"] == "vps" and task["command"] == "sshd"
    # vps list shows it, task list says it is a VPS
    code, out, _ = run(capsys, "vps", "list")
    assert code == 0 and number in out and "pending" in out and "box" in out
    code, out, _ = run(capsys, "task", "list")
    assert "(vps)" in out
    # vps status says it is waiting; ssh refuses it, saying why
    code, out, _ = run(capsys, "vps", "status", number)
    assert code == 0 and "pending" in out and f"VPS task {number}" in out
    # stop is a kill recorded with the reason "stopped"
    code, out, err = run(capsys, "vps", "stop", number)
    assert code == 0, err
    killed = cluster.wait_state(number, "killed")
    r = cluster.http.get("/api/events", params={"kind": "task.kill_requested", "task": number})
    assert [e["payload"]["reason"] for e in r.json()["events"]] == ["stopped"]
    assert killed["state"] == "killed"


def test_without_a_registered_key_the_users_own_public_key_file_is_sent(
    cluster: Cluster, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    bob = cluster.add_user("bob")
    as_user(cluster, monkeypatch, bob)
    # Given no registered key and no key file: refused before sending, naming what to do
    code, _, err = run(capsys, "vps", "submit", "--container", "env")
    assert code == 2 and "hakuriver key add" in err
    # Given ~/.ssh/id_rsa.pub only (comment with shell metacharacters)
    (home / ".ssh" / "id_rsa.pub").write_text(f"{KEY} bob'$(id)`x`\n")
    code, out, err = run(capsys, "vps", "submit", "--container", "env")
    assert code == 0, err
    assert "~/.ssh/id_rsa.pub" in err
    # Then the host recorded that key, literally (an admin sees the whole spec)
    r = cluster.http.get("/api/events", params={"kind": "task.submitted", "task": out.strip()})
    (submitted,) = r.json()["events"]
    assert submitted["payload"]["spec"]["ssh_public_key"] == f"{KEY} bob'$(id)`x`"
    # And alice's --all-users list shows bob's VPS redacted: no ssh address
    code, out, _ = run(capsys, "vps", "list", "--all-users")
    assert code == 0 and "bob" in out


def test_others_vps_are_redacted_and_other_tasks_are_not_vps(
    cluster: Cluster, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    carol = cluster.add_user("carol")
    dave = cluster.add_user("dave")
    as_user(cluster, monkeypatch, carol)
    code, out, err = run(capsys, "vps", "submit", "--container", "env", "--public-key-string", KEY)
    assert code == 0, err
    vps = out.strip()
    as_user(cluster, monkeypatch, dave)
    code, out, _ = run(capsys, "vps", "list", "--all-users", "--json")
    import json

    docs = [t for t in json.loads(out)["tasks"] if str(t["number"]) == vps]
    assert docs and docs[0]["redacted"] and docs[0]["ssh_port"] is None
    # A command task is not a VPS: vps kill refuses it, naming what to use
    plain = cluster.submit("true")[0]
    as_user(cluster, monkeypatch, cluster.admin_token or "")
    code, _, err = run(capsys, "vps", "kill", plain)
    assert code == 2 and "not a VPS" in err and "hakuriver task" in err


@pytest.mark.parametrize(
    ("words", "field"),
    [
        (["--public-key-file", "/nonexistent.pub"], "public_key_file"),
        (["--public-key-file", "/x", "--public-key-string", KEY], "public_key_file"),
        (["--public-key-string", "ssh-ed25519 notbase64!"], "public_key"),
        (["--target", "a", "--target", "b"], None),  # one target at most: a usage error
        (["--mount", "relative:/x"], "mounts[0]"),
    ],
)
def test_bad_submit_options_are_refused_before_sending(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, words: list[str], field: str | None
) -> None:
    monkeypatch.setenv("HAKURIVER_URL", "http://127.0.0.1:9")
    code, _, err = run(capsys, "vps", "submit", *words)
    assert code == 2, err
    if field:
        assert field in err


def test_the_seeds_spellings_mean_the_vps_commands() -> None:
    assert vps_words(["command", "12", "pause"]) == ["vps", "pause", "12"]
    assert vps_words(["command", "12", "resume"]) == ["vps", "resume", "12"]
    assert vps_words(["submit", "--target", "n1"]) == ["vps", "submit", "--target", "n1"]
    assert vps_words(["list"]) == ["vps", "list"]


# -- what is printed ----------------------------------------------------------------------


def _vps(**fields: Any) -> dict[str, Any]:
    doc = {"task_id": TASK_ID, "number": 12, "task_type": "vps", "state": "running"}
    doc |= {"node": "n1", "owner": "alice", "container": "env", "redacted": False}
    return doc | fields


def test_the_list_shows_where_ssh_listens_and_whether_sshd_runs() -> None:
    text = rendered(
        vps_table(
            [
                _vps(ssh_port=40022, ssh_address="10.0.0.5", sshd=True),
                _vps(number=13, sshd=False),
                _vps(number=14, sshd=None),
                _vps(number=15, owner="bob", redacted=True),
            ]
        )
    )
    lines = text.splitlines()
    assert "10.0.0.5:40022" in lines[1] and "yes" in lines[1]
    assert lines[2].split()[5] == "no"
    assert "starting" in lines[3]
    assert lines[4].split()[4:6] == ["-", "-"]


def test_status_says_how_to_connect() -> None:
    ready = rendered(vps_detail(_vps(ssh_port=40022, sshd=True), GATEWAY))
    assert "hakuriver ssh 12" in ready
    assert "ssh -J alice@head.example:8002 root@vps-12" in ready
    assert "hakuriver vps shell 12" in ready
    bare = rendered(vps_detail(_vps(sshd=False, vps_message="the image has no sshd")))
    assert "hakuriver ssh" not in bare and "no sshd" in bare and "vps shell 12" in bare
    paused = rendered(vps_detail(_vps(state="paused", sshd=True)))
    assert "hakuriver vps resume 12" in paused


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"state": "paused", "sshd": True}, "hakuriver vps resume 12"),
        ({"state": "pending"}, "is pending"),
        ({"sshd": None}, "starting"),
        ({"sshd": False, "vps_message": "no sshd in image"}, "hakuriver vps shell 12"),
    ],
)
def test_ssh_refuses_a_vps_it_cannot_reach_saying_what_to_do(
    fields: dict[str, Any], words: str
) -> None:
    with pytest.raises(Conflict) as refused:
        check_reachable(_vps(**fields))
    assert words in refused.value.message


# -- the ssh command line, as OpenSSH reads it ---------------------------------------------


def resolved(*argv: str) -> dict[str, str]:
    """``ssh -G``'s view of a command line: every option as ssh would use it."""
    if shutil.which("ssh") is None:
        pytest.skip("the OpenSSH client is not installed")
    done = subprocess.run(["ssh", "-G", *argv], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)


def test_the_gateway_key_is_pinned_from_the_api_and_vps_keys_stay(home: Path) -> None:
    known = home / ".hakuriver" / "known_hosts"
    known.parent.mkdir()
    known.write_text(f"[head.example]:8002 {KEY}\nhakuriver-vps-old {KEY}\n")
    path = pin_gateway(GATEWAY, known)
    lines = path.read_text().splitlines()
    # The gateway's old key is replaced by the one the API gave; the VPS key is kept
    assert lines == [f"hakuriver-vps-old {KEY}", f"[head.example]:8002 {OTHER}"]
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(Exception, match="SSH gateway is not running"):
        pin_gateway({**GATEWAY, "enabled": False}, known)


def test_the_ssh_command_jumps_through_the_pinned_gateway(home: Path) -> None:
    known = home / ".hakuriver" / "known hosts"  # a space: the proxy command quotes it
    argv = ssh_argv(GATEWAY, TASK_ID, known, ["-L", "8888:localhost:8888", "uname", "-a"])
    assert argv[0] == "ssh" and argv[-3:] == ["-L", "8888:localhost:8888", "uname", "-a"][-3:]
    options = resolved(*argv[1:])
    assert options["user"] == "root"
    assert options["hostname"] == f"vps-{TASK_ID}"
    assert options["hostkeyalias"] == f"hakuriver-vps-{TASK_ID}"
    assert options["stricthostkeychecking"] == "accept-new"
    assert options["localforward"] == "8888 [localhost]:8888"
    assert str(known) in options["userknownhostsfile"]
    proxy = options["proxycommand"]
    assert "-W %h:%p" in proxy and "-p 8002" in proxy and "-l alice" in proxy
    assert "StrictHostKeyChecking=yes" in proxy and f"'UserKnownHostsFile={known}'" in proxy


def test_the_config_block_makes_ssh_vps_n_jump_through_the_gateway(home: Path) -> None:
    known = home / ".hakuriver" / "known_hosts"
    block = config_block(GATEWAY, known)
    config = home / ".ssh" / "config"
    config.write_text(block)
    vps = resolved("-F", str(config), "vps-12")
    assert vps["proxyjump"] == "hakuriver-gateway" and vps["user"] == "root"
    assert vps["stricthostkeychecking"] == "accept-new"
    jump = resolved("-F", str(config), "hakuriver-gateway")
    assert (jump["hostname"], jump["port"], jump["user"]) == ("head.example", "8002", "alice")
    assert jump["stricthostkeychecking"] == "true"
    # Written as ~/.hakuriver/known_hosts (ssh reads ~ as the account's home directory)
    assert jump["userknownhostsfile"].endswith("/.hakuriver/known_hosts")
    assert "~/.hakuriver/known_hosts" in block
