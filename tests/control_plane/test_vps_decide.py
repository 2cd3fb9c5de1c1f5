"""Letting a user into a VPS task (``OpenSshSession``) and into the SSH gateway, decided
purely on a folded state: who may reach which task by which name, in which state, and
which keys log a user in."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from support.decisions import context, principal
from support.vps_state import ALICE_KEY, BOB_KEY, READY, VPS_KEY, World, fingerprint_of

from control_plane.commands import OpenSshSession, decide
from control_plane.commands.vps import gateway_login, key_blob
from control_plane.errors import Conflict, NotFound
from events import link
from events.types import (
    SshKeyAdded,
    SshSessionOpened,
    TaskFinished,
    TaskPaused,
    UserCreated,
    UserDisabled,
)


def test_a_ready_vps_is_opened_by_every_name_with_where_to_connect() -> None:
    world = World()
    task_id = world.task(ready=READY)
    number = world.state.tasks[task_id].number
    for name in (task_id, str(number), f"vps-{number}", f"VPS-{task_id}", task_id[:10]):
        decision = world.open(name, client_address="192.0.2.7", key_fingerprint="SHA256:x")
        [opened] = decision.events
        assert isinstance(opened, SshSessionOpened)
        assert (opened.task_id, opened.user, opened.node) == (task_id, "alice", "n1")
        assert (opened.address, opened.port, opened.via) == ("10.0.0.1", 32022, "gateway")
        assert opened.client_address == "192.0.2.7" and opened.key_fingerprint == "SHA256:x"
        assert decision.sends == []


def test_the_gateway_connects_to_the_nodes_address_whatever_the_ready_report_says() -> None:
    world = World()
    for ready in ({"ssh_port": 32022}, {"address": "127.0.0.1", "ssh_port": 32022}):
        task_id = world.task(ready=ready)
        [opened] = world.open(task_id).events
        assert (opened.address, opened.port) == ("10.0.0.1", 32022)


def test_someone_elses_vps_and_a_missing_one_get_the_same_refusal() -> None:
    world = World()
    task_id = world.task(ready=READY)
    with pytest.raises(NotFound) as other:
        world.open(task_id, user="bob")
    with pytest.raises(NotFound) as missing:
        world.open("01ffffff-0000", user="bob")
    assert "of yours" in other.value.message and "of yours" in missing.value.message
    # An admin reaches any user's VPS.
    assert world.open(task_id, user="root", role="admin").events


def test_a_prefix_of_several_tasks_names_the_one_the_user_may_reach() -> None:
    world = World()
    mine, bobs = world.task(ready=READY), world.task("bob", ready=READY)
    prefix = mine[:8]
    assert bobs.startswith(prefix)
    # Alice's is the one of hers among them; Bob gets his.
    assert world.open(prefix).events[0].task_id == mine
    assert world.open(prefix, user="bob").events[0].task_id == bobs
    # Two of hers: she must give more of the id; nobody else's id is ever named.
    other = world.task(ready=READY)
    with pytest.raises(NotFound, match="prefix of several tasks") as refused:
        world.open(prefix)
    assert not {mine, bobs, other} & set(refused.value.message.split())
    # Someone with none among them is refused as for a task that does not exist.
    world.apply(UserCreated(name="carol"))
    with pytest.raises(NotFound, match=f"no VPS task '{prefix}' of yours"):
        world.open(prefix, user="carol")


def test_a_task_that_is_not_a_vps_is_refused() -> None:
    world = World()
    task_id = world.task(task_type="command")
    with pytest.raises(NotFound, match="is not a VPS task"):
        world.open(task_id)


@pytest.mark.parametrize(
    ("how", "refusal"),
    [
        ("queued", "is pending"),
        ("starting", "is assigning"),
        ("not_ready", "its sshd is not up yet"),
        ("no_sshd", "runs no sshd: the image has none; use `hakuriver vps shell"),
        ("paused", "is paused (resume it first"),
        ("ended", "is killed"),
    ],
)
def test_a_vps_that_cannot_be_reached_says_why(how: str, refusal: str) -> None:
    world = World()
    match how:
        case "queued":
            task_id = world.task(placed=False, started=False)
        case "starting":
            task_id = world.task(started=False)
        case "not_ready":
            task_id = world.task()
        case "no_sshd":
            task_id = world.task(ready={"sshd": False, "message": "the image has none"})
        case "paused":
            task_id = world.task(ready=READY)
            world.apply(TaskPaused(task_id=task_id))
        case _:
            task_id = world.task(ready=READY)
            world.apply(TaskFinished(task_id=task_id, state="killed", node="n1"))
    with pytest.raises(Conflict) as refused:
        world.open(task_id)
    assert refusal in refused.value.message


def test_a_shell_is_sent_to_the_connected_node_and_needs_no_sshd() -> None:
    world = World()
    task_id = world.task(ready={"sshd": False})
    decision = world.open(task_id, via="shell", rows=40, cols=120, term="xterm-256color")
    [opened] = decision.events
    assert opened.via == "shell" and opened.port == 0 and opened.address == ""
    [send] = decision.sends
    assert send.node == "n1"
    assert send.message == link.ShellOpen(
        session="s1", task_id=task_id, rows=40, cols=120, term="xterm-256color"
    )
    command = OpenSshSession(task=task_id, actor=principal(), session_id="s2", via="shell")
    with pytest.raises(Conflict, match="node n1 is not connected"):
        decide(world.state, command, context())


# -- who logs in to the gateway with which key ------------------------------------------------


def _login(world: World, user: str, key: str) -> Any:
    blob = key_blob(key)
    assert blob is not None
    return gateway_login(world.state, user, blob)


def test_a_user_logs_in_with_registered_keys_and_their_live_vps_keys() -> None:
    world = World()
    login = _login(world, "alice", ALICE_KEY)
    assert login is not None
    assert login.principal.user == "alice" and login.principal.token_kind == "user"
    assert login.source == "key k1"
    assert _login(world, "alice", VPS_KEY) is None
    # A VPS task's key counts while the task holds its node (even before it runs) ...
    task_id = world.task(started=False, key=f"{VPS_KEY} me@laptop")
    login = _login(world, "alice", VPS_KEY)
    assert login is not None
    assert login.source == f"task {world.state.tasks[task_id].number}"
    # ... and not once it ended, nor for anyone else.
    assert _login(world, "bob", VPS_KEY) is None
    assert _login(world, "bob", ALICE_KEY) is None
    world.apply(TaskFinished(task_id=task_id, state="killed", node="n1"))
    assert _login(world, "alice", VPS_KEY) is None
    assert _login(world, "alice", ALICE_KEY) is not None


def test_unknown_and_disabled_users_log_in_with_nothing() -> None:
    world = World()
    assert _login(world, "mallory", ALICE_KEY) is None
    world.apply(UserDisabled(name="alice"))
    assert _login(world, "alice", ALICE_KEY) is None


def test_admins_log_in_as_admins() -> None:
    world = World()
    world.apply(
        SshKeyAdded(
            key_id="k2",
            user="root",
            key_type="ssh-ed25519",
            public_key=BOB_KEY,
            fingerprint=fingerprint_of(BOB_KEY),
        )
    )
    login = _login(world, "root", BOB_KEY)
    assert login is not None and login.principal.is_admin


@pytest.mark.parametrize(
    "line",
    [
        "",
        "ssh-ed25519",
        "ssh-ed25519 not-base64!",
        # A valid blob under another type's name: not half-trusted.
        f"ssh-rsa {ALICE_KEY.split()[1]}",
        # The blob's type alone, no key material.
        "ssh-ed25519 " + base64.b64encode((11).to_bytes(4, "big") + b"ssh-ed25519").decode(),
    ],
)
def test_a_line_without_a_well_formed_key_gives_no_blob(line: str) -> None:
    assert key_blob(line) is None


def test_a_key_line_gives_its_blob_whatever_surrounds_it() -> None:
    blob = base64.b64decode(ALICE_KEY.split()[1])
    assert key_blob(ALICE_KEY) == blob
    assert key_blob(f'command="echo; rm -rf /" {ALICE_KEY} alice@laptop') == blob
