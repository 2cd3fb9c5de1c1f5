"""The SSH gateway against real parts: a real host, the real OpenSSH client, a real sshd.

The VPS is played by the machine's own ``sshd`` on a loopback port (tests/support/sshd.py)
and its node by the test over the real agent link (tests/support/fake_vps_node.py): the
host places a VPS task there, the "node" reports it started and ready at that sshd, and
users reach it with ``ssh -J user@127.0.0.1:<gateway> <user>@<task>`` as they would a
real one. Everything the gateway must refuse is tried with the OpenSSH client where it
can express it, and every session is checked in the log.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from support.cluster import Cluster, running_cluster
from support.fake_vps_node import FakeVpsNode
from support.sshd import SshClient, Sshd, make_key, require_openssh, running_sshd
from support.waiting import wait_until

from events.types import TaskStarted

pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("ssh-gateway")]

NODE = "vpsnode"


@dataclass
class World:
    """A host, two users with registered keys, a VPS node, and an sshd for its VPSes."""

    cluster: Cluster
    sshd: Sshd
    node: FakeVpsNode
    root: Path
    gateway: dict[str, Any]  # GET /api/ssh
    clients: dict[str, httpx.Client]  # user -> their HTTP client
    ssh: dict[str, SshClient]  # user -> their OpenSSH client (their key)
    keys: dict[str, str] = field(default_factory=dict)  # user -> public key line

    @property
    def jump(self) -> str:
        return f"127.0.0.1:{self.gateway['port']}"

    def jump_as(self, user: str) -> str:
        return f"{user}@{self.jump}"

    def submit_vps(self, user: str = "alice") -> dict[str, Any]:
        """A VPS task of ``user``'s placed on the node, not yet ready; its view."""
        answer = self.clients[user].post(
            "/api/tasks",
            json={
                "task_type": "vps",
                "container": "vps-test",
                "ssh_public_key": self.keys[user],
            },
        )
        assert answer.status_code == 201, answer.text
        [task_id] = answer.json()["task_ids"]
        self.node.run_of(task_id)
        return self.cluster.task(task_id)

    def vps(self, user: str = "alice") -> dict[str, Any]:
        """A running VPS task of ``user``'s whose sshd is ready; its view."""
        task = self.submit_vps(user)
        self.node.ready(task["task_id"], self.sshd.port)
        self.cluster.wait_state(task["task_id"], "running")
        return task

    def sql(self, query: str) -> list[list[Any]]:
        answer = self.cluster.http.post("/api/sql", json={"sql": query})
        assert answer.status_code == 200, answer.text
        rows: list[list[Any]] = answer.json()["rows"]
        return rows

    def sessions(self, task_id: str, kind: str = "ssh.session_closed") -> list[dict[str, Any]]:
        """The task's session events of ``kind``, oldest first."""
        import json

        rows = self.sql(
            f"SELECT payload FROM events WHERE kind = '{kind}'"
            f" AND payload->>'$.task_id' = '{task_id}' ORDER BY seq"
        )
        return [json.loads(row[0]) if isinstance(row[0], str) else row[0] for row in rows]

    def closed_session(self, task_id: str, timeout: float = 20) -> dict[str, Any]:
        """The task's (first) ``ssh.session_closed``, waiting for it."""
        wait_until(lambda: bool(self.sessions(task_id)), timeout=timeout)
        return self.sessions(task_id)[0]


@pytest.fixture(scope="module", name="shared_world")
def shared_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_openssh()
    root = tmp_path_factory.mktemp("ssh")
    keys = root / "keys"
    keys.mkdir(mode=0o700)
    lines = {who: make_key(keys / who, who) for who in ("alice", "bob", "stranger")}
    (root / "cluster").mkdir()
    with running_cluster(root / "cluster", agents=()) as cluster:
        clients = {}
        for user in ("alice", "bob"):
            clients[user] = cluster.client_as(cluster.add_user(user))
            added = clients[user].post("/api/keys", json={"public_key": lines[user]})
            assert added.status_code == 201, added.text
        gateway = clients["alice"].get("/api/ssh").json()
        assert gateway["enabled"] is True, gateway
        with running_sshd(root / "sshd", authorized=[lines["alice"]]) as sshd:
            node = FakeVpsNode(cluster.url, cluster.enroll(NODE), NODE).start()
            cluster.wait_node(NODE, online=True)
            ssh = {}
            for who in ("alice", "bob", "stranger"):
                ssh[who] = SshClient(root / f"client-{who}", keys / who)
                ssh[who].trust(f"[127.0.0.1]:{gateway['port']}", gateway["host_key"])
                ssh[who].trust("*", sshd.host_key)
            try:
                yield World(
                    cluster=cluster,
                    sshd=sshd,
                    node=node,
                    root=root,
                    gateway=gateway,
                    clients=clients,
                    ssh=ssh,
                    keys=lines,
                )
            finally:
                node.stop()
                for client in clients.values():
                    client.close()


@pytest.fixture
def world(shared_world: World) -> Iterator[World]:
    """The module's world, its VPS tasks killed after each test (the node's cores)."""
    yield shared_world
    shared_world.cluster.settle()


# -- what GET /api/ssh says ------------------------------------------------------------------


def test_the_gateway_serves_the_host_key_it_presents(world: World) -> None:
    # Given GET /api/ssh, when ssh-keyscan asks the gateway itself for its key:
    info = world.gateway
    assert info["host"] == "127.0.0.1" and info["user"] == "alice"
    scanned = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(info["port"]), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # Then it is the key the API serves, and the fingerprint is that key's.
    assert info["host_key"].startswith("ssh-ed25519 AAAA")
    assert info["host_key"].split()[1] in scanned.stdout, scanned
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-f", "-"], input=info["host_key"], capture_output=True, text=True
    )
    assert info["fingerprint"] in printed.stdout, printed
    key_file = world.cluster.data_dir / "ssh" / "gateway_host_ed25519_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


# -- through the jump ------------------------------------------------------------------------


def test_a_command_runs_in_the_vps_through_the_jump_by_every_name(world: World) -> None:
    task = world.vps()
    number, task_id = task["number"], task["task_id"]
    alice = world.ssh["alice"]
    for name in (task_id, f"vps-{number}", f"VPS-{number}", f"vps-{task_id}", task_id[:13]):
        done = alice.ssh("-J", world.jump_as("alice"), f"{world.sshd.user}@{name}", "echo hi")
        assert done.returncode == 0, (name, done.stderr, world.sshd.logs())
        assert done.stdout == "hi\n"
    # A bare number is an IPv4 address to OpenSSH (12 -> 0.0.0.12): the refusal says so.
    done = alice.ssh("-J", world.jump_as("alice"), f"{world.sshd.user}@{number}", "true")
    _refused(done, f"OpenSSH turned task number {number} into 0.0.0.{number}: name it vps-")
    # Each tunnel is in the log: who, from where, where it went, and how it ended.
    opened = world.sessions(task_id, "ssh.session_opened")
    assert len(opened) == 5
    assert {o["user"] for o in opened} == {"alice"}
    assert {(o["address"], o["port"], o["node"]) for o in opened} == {
        ("127.0.0.1", world.sshd.port, NODE)
    }
    assert all(o["client_address"] == "127.0.0.1" and o["via"] == "gateway" for o in opened)
    assert all(o["key_fingerprint"].startswith("SHA256:") for o in opened)
    wait_until(lambda: len(world.sessions(task_id)) == 5, timeout=20)
    for closed in world.sessions(task_id):
        assert closed["bytes_in"] > 0 and closed["bytes_out"] > 0
        assert closed["reason"] in ("client closed", "vps closed"), closed
        assert closed["user"] == "alice" and closed["actor"]["user"] == "alice"


def test_scp_of_20_mb_through_the_gateway_is_whole_and_counted(world: World) -> None:
    task = world.vps()
    source = world.root / "payload.bin"
    source.write_bytes(os.urandom(20 << 20))
    copy = world.root / "copy.bin"
    alice = world.ssh["alice"]
    target = f"{world.sshd.user}@{task['task_id']}"
    sent = alice.scp("-J", world.jump_as("alice"), str(source), f"{target}:{copy}")
    assert sent.returncode == 0, sent.stderr
    assert (
        hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    )
    upload = world.closed_session(task["task_id"])
    assert upload["bytes_in"] >= 20 << 20 > upload["bytes_out"], upload
    back = world.root / "back.bin"
    fetched = alice.scp("-J", world.jump_as("alice"), f"{target}:{copy}", str(back))
    assert fetched.returncode == 0, fetched.stderr
    assert back.read_bytes() == source.read_bytes()
    wait_until(lambda: len(world.sessions(task["task_id"])) == 2, timeout=20)
    download = world.sessions(task["task_id"])[1]
    assert download["bytes_out"] >= 20 << 20 > download["bytes_in"], download
    assert download["duration_s"] > 0


# -- refusals --------------------------------------------------------------------------------


def _refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode != 0, done
    for word in words:
        assert word in done.stderr, (word, done.stderr)


def test_a_shell_or_command_on_the_gateway_is_refused(world: World) -> None:
    alice = world.ssh["alice"]
    port = str(world.gateway["port"])
    _refused(alice.ssh("-p", port, "alice@127.0.0.1", "id"), "runs no shell or command")
    _refused(alice.ssh("-p", port, "-tt", "alice@127.0.0.1"), "runs no shell or command")
    # Agent and X11 forwarding ride on a session: there is none to ride on.
    _refused(alice.ssh("-A", "-X", "-p", port, "alice@127.0.0.1", "true"), "runs no shell")
    # Nor a subsystem (sftp straight to the gateway).
    _refused(alice.ssh("-p", port, "-s", "alice@127.0.0.1", "sftp"), "runs no shell")


def test_only_port_22_of_a_vps_task_is_reached(world: World) -> None:
    task = world.vps()
    alice = world.ssh["alice"]
    gateway = world.jump_as("alice")
    port = str(world.gateway["port"])

    def forward(destination: str) -> subprocess.CompletedProcess[str]:
        return alice.ssh("-W", destination, "-p", port, "alice@127.0.0.1")

    # The host itself, the runner's sshd port straight, arbitrary ports, the API's port.
    _refused(forward("127.0.0.1:22"), "no VPS task '127.0.0.1'")
    _refused(forward(f"127.0.0.1:{world.sshd.port}"), "only to port 22")
    _refused(forward(f"localhost:{world.cluster.port}"), "only to port 22")
    _refused(forward(f"{task['task_id']}:2222"), "only to port 22")
    _refused(forward(f"{NODE}:22"), "no VPS task")
    # The same through ProxyJump (what users type).
    done = alice.ssh("-J", gateway, f"{world.sshd.user}@127.0.0.1", "true")
    _refused(done, "no VPS task")
    assert world.sessions(task["task_id"], "ssh.session_opened") == []


def test_remote_forwarding_is_refused(world: World) -> None:
    listen = socket.socket()
    listen.bind(("127.0.0.1", 0))
    port = listen.getsockname()[1]
    listen.close()
    done = world.ssh["alice"].ssh(
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        f"127.0.0.1:{port}:127.0.0.1:22",
        "-p",
        str(world.gateway["port"]),
        "alice@127.0.0.1",
        timeout=30,
    )
    _refused(done, "remote port forwarding failed")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_another_users_vps_is_refused_as_if_it_did_not_exist(world: World) -> None:
    task = world.vps("alice")
    bob = world.ssh["bob"]
    # Bob logs in (his own key), and may not reach Alice's VPS by any name.
    for name in (task["task_id"], task["task_id"][:13], f"vps-{task['number']}"):
        done = bob.ssh("-J", world.jump_as("bob"), f"{world.sshd.user}@{name}", "true")
        _refused(done, f"no VPS task '{name}' of yours")
    assert world.sessions(task["task_id"], "ssh.session_opened") == []


def test_a_vps_that_is_paused_ended_not_ready_or_without_sshd_is_refused(world: World) -> None:
    alice = world.ssh["alice"]

    def reach(task: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return alice.ssh(
            "-J", world.jump_as("alice"), f"{world.sshd.user}@{task['task_id']}", "true"
        )

    starting = world.submit_vps()
    world.node.report(TaskStarted(task_id=starting["task_id"], node=NODE))
    world.cluster.wait_state(starting["task_id"], "running")
    _refused(reach(starting), "its sshd is not up yet")

    bare = world.submit_vps()
    world.node.ready(bare["task_id"], None, sshd=False, message="the image has no sshd")
    world.cluster.wait_state(bare["task_id"], "running")
    _refused(reach(bare), "runs no sshd: the image has no sshd", "hakuriver vps shell")

    paused = world.vps()
    answer = world.clients["alice"].post(f"/api/tasks/{paused['task_id']}/pause")
    assert answer.status_code == 202, answer.text
    world.cluster.wait_state(paused["task_id"], "paused")
    _refused(reach(paused), "is paused", "resume")

    ended = world.vps()
    answer = world.clients["alice"].post(f"/api/tasks/{ended['task_id']}/kill")
    assert answer.status_code in (200, 202), answer.text
    world.cluster.wait_state(ended["task_id"], "killed")
    _refused(reach(ended), "is killed")

    # A task of hers that is not a VPS.
    answer = world.clients["alice"].post(
        "/api/tasks", json={"command": "sleep", "args": ["60"], "container": "NULL"}
    )
    assert answer.status_code == 201, answer.text
    [command_id] = answer.json()["task_ids"]
    world.node.run_of(command_id)
    world.node.report(TaskStarted(task_id=command_id, node=NODE, pid=1))
    world.cluster.wait_state(command_id, "running")
    command = world.cluster.task(command_id)
    _refused(reach(command), f"task {command['number']} is not a VPS task")
    for task in (starting, bare, paused, ended, command):
        assert world.sessions(task["task_id"], "ssh.session_opened") == []


def test_keys_that_are_not_the_users_are_refused_and_recorded(world: World) -> None:
    task = world.vps()
    port = str(world.gateway["port"])
    target = f"{world.sshd.user}@{task['task_id']}"
    query = (
        "SELECT payload->>'$.client_address', payload->>'$.reason',"
        " (payload->>'$.count')::INTEGER FROM events WHERE kind = 'auth.failed'"
        " AND payload->>'$.route' = 'ssh' ORDER BY seq"
    )
    before = world.sql(query)
    # A key nobody registered; Bob's key as Alice; a user that does not exist. The client
    # sees the same refusal for each.
    attempts = [
        world.ssh["stranger"].ssh("-J", world.jump_as("alice"), target, "true"),
        world.ssh["bob"].ssh("-J", world.jump_as("alice"), target, "true"),
        world.ssh["alice"].ssh("-J", world.jump_as("mallory"), target, "true"),
        world.ssh["stranger"].ssh("-p", port, "nobody@127.0.0.1", "true"),
    ]
    for done in attempts:
        _refused(done, "Permission denied (publickey)")
    # Recorded like the API's refused tokens (route "ssh"), and rate-limited the same way:
    # one event per client address and window (60 s), the rest counted for the next one.
    wait_until(lambda: len(world.sql(query)) > 0, timeout=10)
    after = world.sql(query)
    assert 1 <= len(after) <= len(before) + 1, (before, after)
    address, reason, count = after[-1]
    assert address == "127.0.0.1" and count >= 1
    assert "no accepted public key for user" in reason
    assert world.sessions(task["task_id"], "ssh.session_opened") == []


def test_a_vps_tasks_own_key_logs_its_owner_in(world: World) -> None:
    # A key that is not registered but is the ssh_public_key of one of Carol's VPS tasks.
    carol_key = make_key(world.root / "keys" / "carol", "carol")
    carol = world.cluster.client_as(world.cluster.add_user("carol"))
    world.clients["carol"], world.keys["carol"] = carol, carol_key
    client = SshClient(world.root / "client-carol", world.root / "keys" / "carol")
    client.trust(f"[127.0.0.1]:{world.gateway['port']}", world.gateway["host_key"])
    port = str(world.gateway["port"])
    _refused(client.ssh("-p", port, "carol@127.0.0.1", "true"), "Permission denied")
    task = world.submit_vps("carol")
    # Logged in (the gateway then refuses the shell, not the key) while the task holds
    # its node; refused again once it ended.
    _refused(client.ssh("-p", port, "carol@127.0.0.1", "true"), "runs no shell")
    world.clients["carol"].post(f"/api/tasks/{task['task_id']}/kill")
    world.cluster.wait_state(task["task_id"], "killed")
    _refused(client.ssh("-p", port, "carol@127.0.0.1", "true"), "Permission denied")


# -- sessions end with their task, the gateway with its host ---------------------------------


def test_killing_the_vps_closes_its_tunnels(world: World) -> None:
    task = world.vps()
    session = world.ssh["alice"].start_ssh(
        "-J", world.jump_as("alice"), f"{world.sshd.user}@{task['task_id']}", "echo up; sleep 120"
    )
    try:
        assert session.stdout is not None
        assert session.stdout.readline() == "up\n"
        answer = world.clients["alice"].post(f"/api/tasks/{task['task_id']}/kill")
        assert answer.status_code in (200, 202), answer.text
        session.wait(30)  # the tunnel is cut: ssh ends well before its sleep
    finally:
        session.kill()
    closed = world.closed_session(task["task_id"])
    assert closed["reason"] == "task ended", closed


def test_the_gateway_stops_with_its_host_and_keeps_its_key(tmp_path: Path) -> None:
    require_openssh()
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    line = make_key(keys / "dana", "dana")
    (tmp_path / "cluster").mkdir()
    with running_cluster(tmp_path / "cluster", agents=()) as cluster:
        dana = cluster.client_as(cluster.add_user("dana"))
        assert dana.post("/api/keys", json={"public_key": line}).status_code == 201
        first = dana.get("/api/ssh").json()
        with running_sshd(tmp_path / "sshd", authorized=[line]) as sshd:
            node = FakeVpsNode(cluster.url, cluster.enroll(NODE), NODE).start()
            try:
                answer = dana.post(
                    "/api/tasks",
                    json={
                        "task_type": "vps",
                        "container": "vps-test",
                        "ssh_public_key": line,
                    },
                )
                assert answer.status_code == 201, answer.text
                [task_id] = answer.json()["task_ids"]
                node.ready(task_id, sshd.port)
                cluster.wait_state(task_id, "running")
                client = SshClient(tmp_path / "client", keys / "dana")
                client.trust(f"[127.0.0.1]:{first['port']}", first["host_key"])
                client.trust("*", sshd.host_key)
                session = client.start_ssh(
                    "-J",
                    f"dana@127.0.0.1:{first['port']}",
                    f"{sshd.user}@{task_id}",
                    "echo up; sleep 120",
                )
                try:
                    assert session.stdout is not None
                    assert session.stdout.readline() == "up\n"
                    # When the host is stopped with a session open, it stops in bounded
                    # time, and the session's close is in the log.
                    started = time.monotonic()
                    cluster.stop_host(signal.SIGTERM)
                    stop_s = time.monotonic() - started
                    session.wait(30)
                finally:
                    session.kill()
            finally:
                node.stop()
        assert stop_s < 15, stop_s
        assert len(cluster.events("ssh.session_closed")) == 1

        con = duckdb.connect(str(cluster.db_file), read_only=True)
        try:
            [(reason,)] = con.execute(
                "SELECT payload->>'$.reason' FROM events WHERE kind = 'ssh.session_closed'"
            ).fetchall()
        finally:
            con.close()
        assert reason == "gateway stopped"
        # After a restart, the gateway presents the same host key (clients pinned it).
        cluster.start_host()
        with cluster.client_as(cluster.admin_token) as admin:
            again = admin.get("/api/ssh").json()
        assert again["enabled"] is True
        assert again["host_key"] == first["host_key"]
        assert again["fingerprint"] == first["fingerprint"]


def test_a_gateway_that_cannot_listen_leaves_the_host_running_and_says_why(
    tmp_path: Path,
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        cluster = Cluster(tmp_path)
        text = cluster.config.read_text()
        cluster.config.write_text(
            text.replace("host_ssh_proxy_port = 0", f"host_ssh_proxy_port = {port}")
        )
        try:
            cluster.start_host()
            info = cluster.http.get("/api/ssh").json()
        finally:
            cluster.close()
    finally:
        taken.close()
    assert info["enabled"] is False and info["port"] == 0
    assert f"cannot listen on 127.0.0.1:{port}" in info["message"], info
    assert "host_ssh_proxy_port" in info["message"]
    assert re.search(r"not running", info["message"])


def test_disabling_a_user_closes_their_sessions_and_refuses_their_keys(world: World) -> None:
    key = make_key(world.root / "keys" / "dave", "dave")
    dave = world.cluster.client_as(world.cluster.add_user("dave"))
    assert dave.post("/api/keys", json={"public_key": key}).status_code == 201
    world.clients["dave"], world.keys["dave"] = dave, key
    with world.sshd.authorized_keys.open("a") as out:
        out.write(f"{key}\n")
    client = SshClient(world.root / "client-dave", world.root / "keys" / "dave")
    client.trust(f"[127.0.0.1]:{world.gateway['port']}", world.gateway["host_key"])
    client.trust("*", world.sshd.host_key)
    task = world.vps("dave")
    target = f"{world.sshd.user}@{task['task_id']}"
    session = client.start_ssh("-J", world.jump_as("dave"), target, "echo up; sleep 120")
    try:
        assert session.stdout is not None
        assert session.stdout.readline() == "up\n"
        answer = world.cluster.http.post("/api/users/dave/disable", json={"reason": "left"})
        assert answer.status_code == 200, answer.text
        session.wait(30)
    finally:
        session.kill()
    assert world.closed_session(task["task_id"])["reason"] == "user disabled"
    _refused(client.ssh("-J", world.jump_as("dave"), target, "true"), "Permission denied")


def test_a_session_open_when_the_host_is_killed_is_closed_at_its_next_start(
    tmp_path: Path,
) -> None:
    require_openssh()
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    line = make_key(keys / "erin", "erin")
    (tmp_path / "cluster").mkdir()
    with running_cluster(tmp_path / "cluster", agents=()) as cluster:
        erin = cluster.client_as(cluster.add_user("erin"))
        assert erin.post("/api/keys", json={"public_key": line}).status_code == 201
        gateway = erin.get("/api/ssh").json()
        with running_sshd(tmp_path / "sshd", authorized=[line]) as sshd:
            node = FakeVpsNode(cluster.url, cluster.enroll(NODE), NODE).start()
            try:
                answer = erin.post(
                    "/api/tasks",
                    json={"task_type": "vps", "container": "vps-test", "ssh_public_key": line},
                )
                assert answer.status_code == 201, answer.text
                [task_id] = answer.json()["task_ids"]
                node.ready(task_id, sshd.port)
                cluster.wait_state(task_id, "running")
                client = SshClient(tmp_path / "client", keys / "erin")
                client.trust(f"[127.0.0.1]:{gateway['port']}", gateway["host_key"])
                client.trust("*", sshd.host_key)
                session = client.start_ssh(
                    "-J",
                    f"erin@127.0.0.1:{gateway['port']}",
                    f"{sshd.user}@{task_id}",
                    "echo up; sleep 120",
                )
                try:
                    assert session.stdout is not None
                    assert session.stdout.readline() == "up\n"
                    # Given a session open, when the host is killed (no close recorded):
                    cluster.stop_host(signal.SIGKILL)
                    session.wait(30)
                finally:
                    session.kill()
            finally:
                node.stop()
        assert cluster.events("ssh.session_opened") and not cluster.events("ssh.session_closed")
        # Then its next start records the close, saying what is not known of it.
        cluster.start_host()
        with cluster.client_as(cluster.admin_token) as admin:
            answer = admin.post(
                "/api/sql",
                json={
                    "sql": "SELECT payload->>'$.session_id', payload->>'$.reason',"
                    " (payload->>'$.bytes_in')::INTEGER, payload->>'$.user' FROM events"
                    " WHERE kind = 'ssh.session_closed'"
                },
            )
            opened = admin.post(
                "/api/sql",
                json={
                    "sql": "SELECT payload->>'$.session_id' FROM events"
                    " WHERE kind = 'ssh.session_opened'"
                },
            )
        assert answer.status_code == 200 and opened.status_code == 200, answer.text
        [(session_id, reason, bytes_in, user)] = answer.json()["rows"]
        assert [[session_id]] == opened.json()["rows"]
        assert reason.startswith("host restarted") and "bytes are unknown" in reason
        assert (bytes_in, user) == (0, "erin")
        # A second start finds nothing left open.
        cluster.stop_host(signal.SIGTERM)
        cluster.start_host()
        cluster.stop_host(signal.SIGTERM)
        assert len(cluster.events("ssh.session_closed")) == 1
