"""Users, tokens, keys and node revocation through the CLI, against a real cluster.

One control plane and one agent (``n1``) serve the module (``support.cluster``); the
CLI runs as a subprocess presenting the first admin's token (``Cluster.env()``) unless
a test gives it another one. Each test makes users of its own, under fresh names.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cluster import Cluster, running_cluster

HAKURIVER = [sys.executable, "-m", "cli.hakuriver"]
TOKEN = re.compile(r"hkr_u_([0-9a-f]{16})\.[A-Za-z0-9_-]{43}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster"), agents=("n1",)) as started:
        yield started


def run(
    cluster: Cluster, *words: str, token: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``hakuriver WORDS`` as a subprocess; as the admin, or presenting ``token``."""
    environment = env if env is not None else cluster.env()
    if token is not None:
        environment = {**environment, "HAKURIVER_TOKEN": token}
    return subprocess.run(
        [*HAKURIVER, *words], env=environment, capture_output=True, text=True, timeout=60
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done.stdout


def json_of(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(done))


def fresh(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def add_user(cluster: Cluster, name: str, *words: str) -> str:
    """``user add NAME``: the token it printed, checked to be alone on stdout."""
    done = run(cluster, "user", "add", name, *words)
    secret = ok(done).strip()
    assert TOKEN.fullmatch(secret), done.stdout
    return secret


# --- users and whoami ---------------------------------------------------------------------


def test_admin_adds_a_user_whose_printed_token_works_at_once(cluster: Cluster) -> None:
    # Given a user added by the admin
    bob = fresh("bob")
    done = run(cluster, "user", "add", bob)
    secret = ok(done).strip()
    token_id = TOKEN.fullmatch(secret)
    assert token_id is not None, done.stdout
    # Then the token is on stdout alone, and stderr says it is shown once and where it goes
    lines = done.stderr.splitlines()
    assert lines[0] == f"added user {bob} (user)"
    assert lines[1].startswith(f"token {token_id[1]} 'first' for {bob}, ")
    assert lines[2] == (
        f"It will not be shown again: give it to {bob}, who should keep it in"
        " ~/.hakuriver/token (chmod 600) or $HAKURIVER_TOKEN."
    )
    # When bob presents it: whoami is bob, by $HAKURIVER_TOKEN and by --token alike
    me = json_of(run(cluster, "whoami", "--json", token=secret))
    assert (me["user"], me["role"], me["token_id"], me["token_kind"]) == (
        bob, "user", token_id[1], "user",
    )  # fmt: skip
    assert json_of(run(cluster, "whoami", "--json", "--token", secret))["user"] == bob
    panel = ok(run(cluster, "whoami", token=secret))
    assert bob in panel and f"{token_id[1]} (user)" in panel
    # And the admin's user list shows bob
    users = json_of(run(cluster, "user", "list", "--json"))["users"]
    assert {"name": bob, "role": "user", "disabled": False}.items() <= next(
        u for u in users if u["name"] == bob
    ).items()
    table = ok(run(cluster, "user", "list"))
    assert re.search(rf"^{re.escape(bob)}\s+user\s+active\b", table, re.M)


def test_a_user_is_refused_admin_commands_in_one_clear_line(cluster: Cluster) -> None:
    secret = add_user(cluster, fresh())
    for words in (
        ["user", "list"],
        ["user", "add", fresh()],
        ["token", "create", "--join"],
        ["token", "list", "--all"],
        ["node", "revoke", "n1"],
    ):
        done = run(cluster, *words, token=secret)
        assert done.returncode == 2, (words, done.stderr)
        assert done.stdout == ""
        [line] = done.stderr.splitlines()
        assert line.startswith("error: forbidden: "), (words, line)
        assert "admin" in line, (words, line)
    assert run(cluster, "user", "list", token=secret).stderr == (
        "error: forbidden: this needs an admin's token\n"
    )


def test_role_and_disable(cluster: Cluster) -> None:
    carol = fresh("carol")
    secret = add_user(cluster, carol)
    # Given carol made an admin: she may list users
    assert ok(run(cluster, "user", "role", carol, "admin")) == f"{carol} is now admin\n"
    assert json_of(run(cluster, "whoami", "--json", token=secret))["role"] == "admin"
    assert ok(run(cluster, "user", "list", token=secret))
    # And back: she may not
    assert json_of(run(cluster, "user", "role", carol, "user", "--json"))["user"]["role"] == "user"
    assert run(cluster, "user", "list", token=secret).returncode == 2
    # When disabled, her token is refused outright
    assert ok(run(cluster, "user", "disable", carol)).startswith(f"disabled user {carol}")
    done = run(cluster, "whoami", token=secret)
    assert done.returncode == 2
    assert done.stderr.startswith("error: the host refused the token (the user of token ")
    assert "is disabled): get a new one from an admin" in done.stderr


# --- tokens -------------------------------------------------------------------------------


def test_a_users_own_token_listed_and_revoked(cluster: Cluster) -> None:
    dave = fresh("dave")
    first = add_user(cluster, dave)
    # Given dave makes himself a named token good for 30 minutes
    before = time.time()
    done = run(cluster, "token", "create", "--name", "laptop", "--ttl", "30m", token=first)
    laptop = ok(done).strip()
    found = TOKEN.fullmatch(laptop)
    assert found is not None
    laptop_id = found[1]
    assert f"token {laptop_id} 'laptop' for {dave}, expires " in done.stderr
    assert "It will not be shown again" in done.stderr
    # Then his list shows both of his tokens, with that one's name and lifetime, no secret
    listed = json_of(run(cluster, "token", "list", "--json", token=laptop))["tokens"]
    assert {t["user"] for t in listed} == {dave}
    mine = next(t for t in listed if t["id"] == laptop_id)
    assert mine["name"] == "laptop" and mine["revoked"] is False
    assert before + 1790 <= mine["expires_at_us"] / 1e6 <= time.time() + 1810
    table = ok(run(cluster, "token", "list", token=laptop))
    assert re.search(rf"^{laptop_id}\s+{re.escape(dave)}\s+user\s+laptop\s+active", table, re.M)
    assert laptop not in table and first not in table
    # When he revokes it (by the whole token, as one does with a leaked one)
    assert ok(run(cluster, "token", "revoke", laptop, token=first)) == (
        f"revoked token {laptop_id}\n"
    )
    # Then it is refused, in one line saying what to do, and his first token still works
    done = run(cluster, "whoami", token=laptop)
    assert done.returncode == 2
    assert done.stderr == (
        f"error: the host refused the token (token {laptop_id} was revoked): get a new one"
        " from an admin (`hakuriver token create --user YOU`) and keep it in"
        " ~/.hakuriver/token (chmod 600) or $HAKURIVER_TOKEN\n"
    )
    assert json_of(run(cluster, "whoami", "--json", token=first))["user"] == dave
    table = ok(run(cluster, "token", "list", token=first))
    assert re.search(rf"^{laptop_id}\s.*\brevoked\b", table, re.M)


def test_the_admin_makes_and_lists_anyones_tokens(cluster: Cluster) -> None:
    erin = fresh("erin")
    add_user(cluster, erin)
    made = json_of(run(cluster, "token", "create", "--user", erin, "--ttl", "never", "--json"))
    assert made["user"] == erin and made["expires_at_us"] is None
    assert json_of(run(cluster, "whoami", "--json", token=made["token"]))["user"] == erin
    everyone = json_of(run(cluster, "token", "list", "--all", "--json"))["tokens"]
    assert made["id"] in {t["id"] for t in everyone}
    assert {t["user"] for t in everyone} >= {"admin", erin}
    hers = json_of(run(cluster, "token", "list", "--user", erin, "--json"))["tokens"]
    assert {t["user"] for t in hers} == {erin} and len(hers) == 2


def test_no_token_at_all_says_how_to_get_one(cluster: Cluster, tmp_path: Path) -> None:
    # A configuration whose data dir holds no admin.token, and a home with no token file
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\ndata_dir = "{tmp_path / "data"}"\n')
    env = {**cluster.env(), "HAKURIVER_CONFIG": str(config), "HOME": str(tmp_path)}
    env.pop("HAKURIVER_TOKEN", None)
    done = run(cluster, "whoami", env=env)
    assert done.returncode == 2
    assert done.stderr == (
        "error: the host needs a token and none was given: pass --token TOKEN, or keep it in"
        " ~/.hakuriver/token (chmod 600) or $HAKURIVER_TOKEN; an admin makes one with"
        " `hakuriver token create --user YOU`\n"
    )
    # The quick path of task submit says the same
    done = run(cluster, "task", "submit", "--", "true", env=env)
    assert done.returncode == 2
    assert done.stderr.startswith("error: the host needs a token and none was given")


def test_task_submit_presents_the_token_given(cluster: Cluster) -> None:
    frank = fresh("frank")
    secret = add_user(cluster, frank)
    # --token beats $HAKURIVER_TOKEN (the admin's here), on the quick path and the full one
    quick = ok(run(cluster, "task", "submit", "--token", secret, "--target", "n1", "--", "true"))
    full = ok(
        run(cluster, "task", "submit", "--token", secret, "--wait", "--target", "n1", "--", "true")
    )
    for number in (quick.strip(), full.strip()):
        assert cluster.task(number)["owner"] == frank


# --- SSH keys -----------------------------------------------------------------------------


def test_ssh_keys_added_listed_and_removed(cluster: Cluster, tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    grace = fresh("grace")
    secret = add_user(cluster, grace)
    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "grace@laptop", "-f", str(key)],
        check=True,
    )
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{key}.pub"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[1]
    # Given grace adds her public key from the default place (~/.ssh/id_ed25519.pub)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(f"{key}.pub", home / ".ssh" / "id_ed25519.pub")
    env = {**cluster.env(), "HOME": str(home), "HAKURIVER_TOKEN": secret}
    added = ok(run(cluster, "key", "add", env=env))
    said = rf"added key (\S+): ssh-ed25519 {re.escape(fingerprint)} \(grace@laptop\)\n"
    found = re.fullmatch(said, added)
    assert found is not None, added
    key_id = found[1]
    # Then her list has it, with the fingerprint ssh-keygen computes
    [listed] = json_of(run(cluster, "key", "list", "--json", env=env))["keys"]
    assert (listed["id"], listed["user"], listed["fingerprint"]) == (key_id, grace, fingerprint)
    assert listed["comment"] == "grace@laptop"
    table = ok(run(cluster, "key", "list", env=env))
    row = rf"^{re.escape(key_id)}\s+{re.escape(grace)}\s+ssh-ed25519\s+{re.escape(fingerprint)}"
    assert re.search(row, table, re.M)
    # And the admin sees it as hers; the private key is refused before anything is sent
    hers = json_of(run(cluster, "key", "list", "--user", grace, "--json"))["keys"]
    assert [k["id"] for k in hers] == [key_id]
    refused = run(cluster, "key", "add", str(key), env=env)
    assert refused.returncode == 2 and "is a private key" in refused.stderr
    # When she removes it, her list is empty
    assert ok(run(cluster, "key", "remove", key_id, env=env)) == f"removed key {key_id}\n"
    assert json_of(run(cluster, "key", "list", "--json", env=env))["keys"] == []
    assert run(cluster, "key", "remove", key_id, env=env).returncode == 2


# --- joining and revoking a node ----------------------------------------------------------


def test_a_node_joins_with_the_printed_command_and_is_revoked(cluster: Cluster) -> None:
    # Given a join token, printed as the command to run on the new node
    done = run(cluster, "token", "create", "--join", "--uses", "1", "--ttl", "10m")
    command = ok(done).strip()
    words = shlex.split(command)
    assert words[:3] == ["hakuriver", "runner", "--join"]
    assert words[4:6] == ["--host", cluster.url]
    assert "good for 1 node, expires " in done.stderr
    # When that command runs (on "another machine": its own name and state)
    log = (cluster.root / "agent-n9.log").open("ab")
    agent = subprocess.Popen(
        [*HAKURIVER, *words[1:], "--name", "n9", "--config", str(cluster.config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**cluster.env(), "HAKURIVER_URL": ""},
    )
    cluster.agents["n9"] = agent  # stopped with the cluster whatever happens
    log.close()
    # Then the node comes online, with a credential of its own
    cluster.wait_node("n9", online=True)
    agents = json_of(run(cluster, "token", "list", "--all", "--json"))["tokens"]
    assert any(t["kind"] == "agent" and t["node"] == "n9" for t in agents)
    # When the admin revokes it, its runner is cut off and the node goes offline
    revoked = ok(run(cluster, "node", "revoke", "n9"))
    assert revoked.startswith("revoked node n9: its runner is disconnected")
    cluster.wait_node("n9", online=False)
