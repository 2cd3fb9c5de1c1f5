"""The SSH gateway's rules after the security review, decided purely on a folded state:
removed keys, key options, the actor read again, where the gateway may connect, the
sessions a killed host left open, and a login whose cost does not tell who exists."""

from __future__ import annotations

import time
from typing import Any

import asyncssh
import pytest
from support.decisions import context, principal
from support.vps_state import ALICE_KEY, READY, VPS_KEY, World

from control_plane.commands import CloseSessionsLeftOpen, OpenSshSession, decide
from control_plane.commands.vps import gateway_login, key_blob, key_fingerprint
from control_plane.errors import Conflict, NotFound, Refused
from events.types import (
    NodeRegistered,
    SshKeyAdded,
    SshKeyRemoved,
    SshSessionClosed,
    SshSessionOpened,
    UserCreated,
    UserDisabled,
    UserRoleChanged,
)


def _blob(line: str) -> bytes:
    blob = key_blob(line)
    assert blob is not None
    return blob


def _login(world: World, user: str, line: str) -> Any:
    return gateway_login(world.state, user, _blob(line))


# -- finding 1: a removed key never logs in again ---------------------------------------------


def test_a_removed_key_is_refused_though_a_live_vps_holds_a_copy() -> None:
    world = World()
    # Given a VPS submitted without --public-key: its spec holds alice's registered key.
    world.task(ready=READY, key=f"{ALICE_KEY} alice@laptop")
    assert _login(world, "alice", ALICE_KEY).source == "key k1"
    # When she removes the key, it logs in no more, by the registered copy or the task's.
    world.apply(SshKeyRemoved(key_id="k1", user="alice"))
    assert _login(world, "alice", ALICE_KEY) is None
    # Added again, it works again.
    world.apply(
        SshKeyAdded(
            key_id="k9",
            user="alice",
            key_type="ssh-ed25519",
            public_key=ALICE_KEY,
            fingerprint=key_fingerprint(_blob(ALICE_KEY)),
        )
    )
    assert _login(world, "alice", ALICE_KEY).source == "key k9"


def test_a_key_given_for_a_vps_and_never_removed_still_logs_in() -> None:
    world = World()
    task_id = world.task(ready=READY, key=f"{VPS_KEY} laptop")
    world.apply(SshKeyRemoved(key_id="k1", user="alice"))  # another key
    login = _login(world, "alice", VPS_KEY)
    assert login is not None and login.source == f"task {world.state.tasks[task_id].number}"


@pytest.mark.parametrize(
    "options",
    ['from="10.0.0.0/8"', "restrict", 'command="/bin/true",no-pty', 'from="*"'],
)
def test_a_vps_key_line_with_options_does_not_log_in_at_the_gateway(options: str) -> None:
    world = World()
    world.task(ready=READY, key=f"{options} {VPS_KEY} laptop")
    # The gateway cannot honour from= (nor the rest): it refuses the line rather than
    # letting the key in from anywhere. The same key without options logs in.
    assert _login(world, "alice", VPS_KEY) is None
    world.task(ready=READY, key=VPS_KEY)
    assert _login(world, "alice", VPS_KEY) is not None


def test_fingerprints_are_written_as_asyncssh_and_openssh_write_them() -> None:
    for kind in ("ssh-ed25519", "ecdsa-sha2-nistp256"):
        key = asyncssh.generate_private_key(kind)
        assert key_fingerprint(key.public_data) == key.get_fingerprint("sha256")


# -- finding 2: the actor is read again at each decision --------------------------------------


def test_a_disabled_users_captured_principal_opens_nothing() -> None:
    world = World()
    task_id = world.task(ready=READY)
    assert world.open(task_id).events
    world.apply(UserDisabled(name="alice"))
    with pytest.raises(Refused, match="user 'alice' is disabled"):
        world.open(task_id)
    with pytest.raises(Refused, match="user 'alice' is disabled"):
        world.open(task_id, via="shell")


def test_a_user_who_never_existed_opens_nothing() -> None:
    world = World()
    task_id = world.task(ready=READY)
    with pytest.raises(Refused):
        world.open(task_id, user="ghost", role="admin")


def test_a_demoted_admins_captured_principal_reaches_only_their_own() -> None:
    world = World()
    bobs = world.task("bob", ready=READY)
    # Given root logged in as an admin (the principal says so) ...
    [opened] = world.open(bobs, user="root", role="admin").events
    assert opened.user == "root"
    # ... when root is demoted, the same principal reaches bob's VPS no more.
    world.apply(UserRoleChanged(name="root", role="user"))
    with pytest.raises(NotFound, match="of yours"):
        world.open(bobs, user="root", role="admin")
    # And a user promoted since logging in is an admin at once.
    world.apply(UserRoleChanged(name="alice", role="admin"))
    assert world.open(bobs, user="alice", role="user").events


# -- finding 3: where the gateway connects ----------------------------------------------------


@pytest.mark.parametrize(
    ("registered", "peer", "address"),
    [
        ("10.0.0.1", "10.0.0.1", "10.0.0.1"),
        ("10.0.0.1", "::ffff:10.0.0.1", "10.0.0.1"),
        ("2001:db8::5", "2001:db8::5", "2001:db8::5"),
        # A single-machine cluster: the runner's link comes from loopback.
        ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
        ("runner.lan", "127.0.0.1", "runner.lan"),
        ("", "127.0.0.1", "127.0.0.1"),
        # A name is never resolved: the link's own IP is the node's.
        ("runner.lan", "10.0.0.7", "10.0.0.7"),
    ],
)
def test_the_gateway_connects_to_the_node_where_its_link_comes_from(
    registered: str, peer: str, address: str
) -> None:
    world = World()
    world.apply(NodeRegistered(node="n1", address=registered, cores=8, memory_bytes=1 << 34))
    task_id = world.task(ready={"address": "169.254.169.254", "ssh_port": 32022})
    command = OpenSshSession(task=task_id, actor=principal(), session_id="s1")
    [opened] = decide(world.state, command, context("n1", link_peers={"n1": peer})).events
    assert (opened.address, opened.port) == (address, 32022)


@pytest.mark.parametrize(
    ("registered", "peer", "refusal"),
    [
        # A remote runner left on the default runner_address: not the host's loopback.
        ("127.0.0.1", "10.0.0.7", "registered the address 127.0.0.1"),
        ("::1", "10.0.0.7", "which the host cannot reach it on"),
        ("169.254.169.254", "10.0.0.7", "set runner_address to 10.0.0.7"),
        ("0.0.0.0", "10.0.0.7", "which the host cannot reach it on"),
        ("224.0.0.1", "10.0.0.7", "which the host cannot reach it on"),
        ("fe80::1", "fe80::2", "which the host cannot reach it on"),
        # Another machine than the one the link comes from.
        ("10.0.0.9", "10.0.0.7", "but its link comes from 10.0.0.7"),
        ("10.0.0.1", None, "has not connected since the host started"),
    ],
)
def test_an_address_the_gateway_may_not_use_is_refused_saying_what_to_set(
    registered: str, peer: str | None, refusal: str
) -> None:
    world = World()
    world.apply(NodeRegistered(node="n1", address=registered, cores=8, memory_bytes=1 << 34))
    task_id = world.task(ready=READY)
    command = OpenSshSession(task=task_id, actor=principal(), session_id="s1")
    peers = {} if peer is None else {"n1": peer}
    with pytest.raises(Conflict, match=refusal):
        decide(world.state, command, context("n1", link_peers=peers))


# -- finding 5: sessions a killed host left open ----------------------------------------------


def test_the_sessions_left_open_are_closed_saying_their_counts_are_unknown() -> None:
    world = World()
    task_id = world.task(ready=READY)
    world.apply(
        SshSessionOpened(session_id="s1", task_id=task_id, user="alice"),
        SshSessionOpened(session_id="s2", task_id=task_id, user="root", via="shell"),
        SshSessionOpened(session_id="s3", task_id=task_id, user="alice"),
        SshSessionClosed(session_id="s3", task_id=task_id, bytes_in=5, reason="client closed"),
    )
    assert set(world.state.ssh_sessions) == {"s1", "s2"}
    decision = decide(world.state, CloseSessionsLeftOpen(), context())
    closed = {e.session_id: e for e in decision.events if isinstance(e, SshSessionClosed)}
    assert set(closed) == {"s1", "s2"}
    assert (closed["s2"].user, closed["s2"].via) == ("root", "shell")
    assert all("bytes are unknown" in e.reason and e.bytes_in == 0 for e in closed.values())
    world.apply(*decision.events)
    assert world.state.ssh_sessions == {}
    assert decide(world.state, CloseSessionsLeftOpen(), context()).events == []


# -- finding 12: a login costs the same whoever the user is -----------------------------------


def test_a_login_does_not_read_other_users_tasks() -> None:
    world = World()
    world.apply(UserCreated(name="carol"))
    # Given many live VPS tasks, none of them alice's or mallory's:
    for _ in range(1500):
        world.task("bob", started=False)

    def best_of(user: str) -> float:
        blob = _blob(VPS_KEY)
        best = float("inf")
        for _ in range(300):
            started = time.perf_counter()
            gateway_login(world.state, user, blob)
            best = min(best, time.perf_counter() - started)
        return best

    # A user who exists (with no VPS) and one who does not take about as long: neither
    # reads bob's 1500 tasks (before the per-user index, a known user's login did).
    known, unknown = best_of("carol"), best_of("mallory")
    assert known < 20 * unknown + 20e-6, (known, unknown)
