"""The seeds' VPS workflow end to end, with nothing played: the real host with its SSH
gateway, a real runner process with the Docker executor, the VPS test images (the
machine's own sshd in a busybox rootfs: tests/support/vps_image.py), the CLI as a
subprocess and the real OpenSSH client (``ssh -J``, ``scp``).

Two users, alice and bob, register their keys with ``hakuriver key add``; alice's key has
shell metacharacters in its comment. Alice submits a VPS with ``hakuriver vps submit``
(no key option: her registered key is let in), reaches it with plain ``ssh -J``, with
``hakuriver ssh`` and with ``scp`` through the gateway; bob cannot; nothing but her VPS
is reachable through the gateway; a paused VPS is killed; a runner SIGKILLed and started
again re-adopts the VPS and re-reports its port; an image without sshd is reached with
``hakuriver vps shell``; every session is in the log with its byte counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.cluster import Cluster, free_port, running_cluster
from support.sshd import SshClient, make_key, require_openssh
from support.vps_image import VPS_NOSSH_IMAGE, VPS_SSHD_IMAGE, vps_images_or_skip

from cli.hakuriver.shell import run_shell

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300), pytest.mark.xdist_group("vps-e2e")]

NODE = "v1"
HAKURIVER = [sys.executable, "-m", "cli.hakuriver"]
# A comment an interpolating runner would run: delivered literally, it runs nothing.
NASTY_COMMENT = 'alice\'; touch /pwned; echo $(id) `id` "x" \\ & | ;'
BIG = 50 << 20


@dataclass
class User:
    name: str
    token: str
    home: Path  # $HOME of the user's CLI runs (~/.hakuriver/known_hosts lands there)
    key: Path  # the private key
    public_key: str
    ssh: SshClient  # OpenSSH with this key only, trusting the gateway's host key


@dataclass
class World:
    cluster: Cluster
    gateway: dict[str, Any]
    alice: User
    bob: User
    docker: Any

    @property
    def jump(self) -> str:
        return f"127.0.0.1:{self.gateway['port']}"

    def cli(self, user: User, *words: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        env = {**self.cluster.env(), "HAKURIVER_TOKEN": user.token, "HOME": str(user.home)}
        return subprocess.run(
            [*HAKURIVER, *words],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def submit(self, user: User, image: str = VPS_SSHD_IMAGE) -> dict[str, Any]:
        """A VPS of ``user``'s submitted with the CLI (registered keys), once it is up."""
        done = self.cli(user, "vps", "submit", "--target", NODE, "--container", image, "--json")
        assert done.returncode == 0, (done.stdout, done.stderr)
        [task_id] = json.loads(done.stdout)["task_ids"]
        return self.ready(task_id)

    def ready(self, task_id: str, after: int = 0) -> dict[str, Any]:
        """The task once its runner reported it ready (more than ``after`` times)."""
        found: dict[str, Any] = {}

        def check() -> bool:
            found.update(self.cluster.task(task_id))
            return found.get("sshd") is not None and len(self.ready_events(task_id)) > after

        self.cluster.wait(check, 90, f"VPS {task_id} reported ready")
        return found

    def ready_events(self, task_id: str) -> list[dict[str, Any]]:
        r = self.cluster.http.get(f"/api/tasks/{task_id}/history")
        assert r.status_code == 200, r.text
        return [e for e in r.json()["events"] if e["kind"] == "vps.ready"]

    def sql(self, statement: str) -> list[list[Any]]:
        r = self.cluster.http.post("/api/sql", json={"sql": statement})
        assert r.status_code == 200, r.text
        rows: list[list[Any]] = r.json()["rows"]
        return rows

    def sessions(self, task_id: str) -> list[dict[str, Any]]:
        """The ``ssh.session_closed`` events of a task (what the log says of its sessions)."""
        rows = self.sql(
            "SELECT payload FROM events WHERE kind = 'ssh.session_closed'"
            f" AND payload->>'$.task_id' = '{task_id}' ORDER BY seq"
        )
        return [json.loads(row[0]) if isinstance(row[0], str) else row[0] for row in rows]

    def through_gateway(
        self, user: User, task_id: str, *command: str, login: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Plain OpenSSH: ``ssh -J <login>@gateway root@vps-<id> COMMAND``."""
        return user.ssh.ssh(
            "-J",
            f"{login or user.name}@{self.jump}",
            *vps_host_options(task_id),
            f"root@vps-{task_id}",
            *command,
        )

    def direct_channel(self, user: User, destination: str) -> subprocess.CompletedProcess[str]:
        """``ssh -W DESTINATION`` at the gateway: a bare direct-tcpip channel to anywhere."""
        return user.ssh.ssh(
            "-p", str(self.gateway["port"]), "-W", destination, f"{user.name}@127.0.0.1", timeout=30
        )


def vps_host_options(task_id: str) -> list[str]:
    """A VPS's own host key is new: learnt under a per-task alias (as hakuriver ssh does)."""
    return ["-o", f"HostKeyAlias=hakuriver-vps-{task_id}", "-o", "StrictHostKeyChecking=accept-new"]


def remove_vps(world: World, task_id: str) -> None:
    for container in world.docker.containers.list(
        all=True, filters={"label": f"hakuriver.task_id={task_id}"}
    ):
        container.remove(force=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_openssh()
    docker = vps_images_or_skip()
    root = tmp_path_factory.mktemp("vps")
    (root / "cluster").mkdir()
    with running_cluster(root / "cluster", agents=(NODE,)) as cluster:
        answer = cluster.http.get("/api/ssh")
        assert answer.status_code == 200, answer.text
        gateway = answer.json()
        assert gateway["enabled"], gateway
        users = {}
        for name, comment in (("alice", NASTY_COMMENT), ("bob", "bob@laptop")):
            token = cluster.add_user(name)
            home = root / name
            (home / ".ssh").mkdir(parents=True)
            key = home / ".ssh" / "id_ed25519"
            public = make_key(key, comment)
            assert key.with_suffix(".pub").exists()
            client = SshClient(root / f"{name}-ssh", key)
            client.trust(f"[127.0.0.1]:{gateway['port']}", gateway["host_key"])
            users[name] = User(name, token, home, key, public, client)
        world = World(cluster, gateway, users["alice"], users["bob"], docker)
        for user in users.values():
            added = world.cli(user, "key", "add", str(user.key.with_suffix(".pub")))
            assert added.returncode == 0, (added.stdout, added.stderr)
        yield world


def test_alice_reaches_her_vps_through_the_gateway_with_ssh_hakuriver_ssh_and_scp(
    world: World, tmp_path: Path
) -> None:
    alice = world.alice
    # Given alice's VPS, submitted with no key option: her registered key is let in
    task = world.submit(alice)
    task_id = task["task_id"]
    try:
        assert task["state"] == "running" and task["sshd"] is True, task
        assert task["ssh_address"] == "127.0.0.1" and task["ssh_port"], task

        # When she runs a command in it with plain ssh -J
        done = world.through_gateway(
            alice, task_id, "cat /etc/hakuriver/authorized_keys; echo; test -e /pwned || echo clean"
        )
        # Then it runs as root there, and her key (its comment full of shell syntax) was
        # delivered literally and ran nothing
        assert done.returncode == 0, done.stderr
        assert done.stdout.split("\n")[0] == alice.public_key, done.stdout
        assert done.stdout.split()[-1] == "clean", done.stdout

        # When she uses hakuriver ssh, passing ssh arguments through
        by_cli = world.cli(
            alice,
            "ssh",
            str(task["number"]),
            "--identity-file",
            str(alice.key),
            "--",
            "-o",
            "BatchMode=yes",
            "echo",
            "via-cli",
        )
        assert by_cli.returncode == 0, (by_cli.stdout, by_cli.stderr)
        assert by_cli.stdout == "via-cli\n"
        # ... which pinned the gateway's key from the API in her ~/.hakuriver/known_hosts
        pinned = (alice.home / ".hakuriver" / "known_hosts").read_text()
        assert world.gateway["host_key"].split()[1] in pinned

        # When she copies 50 MB in with scp through the gateway
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(BIG))
        copied = alice.ssh.scp(
            "-o",
            f"ProxyJump={alice.name}@{world.jump}",
            *vps_host_options(task_id),
            str(big),
            f"root@vps-{task_id}:/tmp/big.bin",
        )
        assert copied.returncode == 0, copied.stderr
        # Then the file arrived whole
        summed = world.through_gateway(alice, task_id, "sha256sum /tmp/big.bin")
        assert summed.stdout.split()[0] == hashlib.sha256(big.read_bytes()).hexdigest()

        # And every session is in the log, with its bytes: the scp's > 50 MB in, and the
        # cat's out held the key
        sessions = world.sessions(task_id)
        assert len(sessions) >= 4, sessions
        assert all(s["user"] == "alice" and s["via"] == "gateway" for s in sessions)
        assert max(s["bytes_in"] for s in sessions) >= BIG
        assert all(s["bytes_out"] > 0 and s["duration_s"] >= 0 for s in sessions)
    finally:
        remove_vps(world, task_id)


def test_the_gateway_lets_nobody_else_in_and_reaches_nothing_but_vps_tasks(
    world: World,
) -> None:
    alice, bob = world.alice, world.bob
    task = world.submit(alice)
    task_id = task["task_id"]
    try:
        before = len(world.sessions(task_id))
        # Bob, logged in at the gateway with his own key, is refused alice's VPS
        refused = world.through_gateway(bob, task_id, "true")
        assert refused.returncode != 0
        assert "prohibited" in refused.stderr or "no VPS task" in refused.stderr, refused.stderr
        # Bob's key does not log in as alice
        impostor = world.through_gateway(bob, task_id, "true", login="alice")
        assert impostor.returncode != 0
        assert "Permission denied" in impostor.stderr, impostor.stderr
        # Nothing but a VPS's port 22 is a destination: not the runner's own sshd, not the
        # VPS's published port, not the API, not another port of the VPS
        for destination in (
            "127.0.0.1:22",
            f"127.0.0.1:{task['ssh_port']}",
            f"127.0.0.1:{world.cluster.port}",
            f"{NODE}:22",
            f"vps-{task_id}:2222",
        ):
            channel = world.direct_channel(alice, destination)
            assert channel.returncode != 0, destination
            assert "prohibited" in channel.stderr or "refused" in channel.stderr, (
                destination,
                channel.stderr,
            )
        # A shell on the gateway itself is refused
        shell = alice.ssh.ssh("-T", "-p", str(world.gateway["port"]), "alice@127.0.0.1", "id")
        assert shell.returncode != 0 and "uid=" not in shell.stdout
        # None of it opened a session into the VPS
        assert len(world.sessions(task_id)) == before
        # While alice still gets in
        assert world.through_gateway(alice, task_id, "echo in").stdout == "in\n"
    finally:
        remove_vps(world, task_id)


def test_a_paused_vps_is_killed(world: World) -> None:
    alice = world.alice
    task = world.submit(alice)
    task_id, number = task["task_id"], str(task["number"])
    try:
        paused = world.cli(alice, "vps", "pause", number)
        assert paused.returncode == 0, paused.stderr
        world.cluster.wait_state(task_id, "paused")
        # ssh says what to do with a paused VPS
        refused = world.cli(alice, "ssh", number, "--print")
        assert refused.returncode != 0 and "resume" in refused.stderr, refused.stderr
        killed = world.cli(alice, "vps", "kill", number)
        assert killed.returncode == 0, killed.stderr
        assert world.cluster.wait_state(task_id, "killed", timeout=60)["state"] == "killed"
        world.cluster.wait(
            lambda: (
                not world.docker.api.containers(
                    all=True, filters={"label": f"hakuriver.task_id={task_id}"}
                )
            ),
            30,
            "the VPS container to be removed",
        )
    finally:
        remove_vps(world, task_id)


def test_a_restarted_runner_readopts_the_vps_and_the_gateway_reaches_it_again(
    world: World,
) -> None:
    alice = world.alice
    task = world.submit(alice)
    task_id = task["task_id"]
    try:
        assert world.through_gateway(alice, task_id, "echo one > /root/mark").returncode == 0
        reports = len(world.ready_events(task_id))
        # When its runner is SIGKILLed and started again
        world.cluster.stop_agent(NODE, signal.SIGKILL)
        world.cluster.start_agent(NODE)
        # Then the VPS ran on, was re-adopted and its port re-reported
        again = world.ready(task_id, after=reports)
        assert again["state"] == "running" and again["sshd"] is True
        # ... and the same container answers through the gateway
        done = world.through_gateway(alice, task_id, "cat /root/mark")
        assert done.returncode == 0 and done.stdout == "one\n", done.stderr
    finally:
        remove_vps(world, task_id)


def test_a_vps_without_sshd_is_reached_with_vps_shell(world: World) -> None:
    alice = world.alice
    task = world.submit(alice, VPS_NOSSH_IMAGE)
    task_id = task["task_id"]
    try:
        assert task["state"] == "running" and task["sshd"] is False, task
        # hakuriver ssh says so, and points at vps shell
        refused = world.cli(alice, "ssh", str(task["number"]), "--print")
        assert refused.returncode != 0 and "vps shell" in refused.stderr, refused.stderr
        # The shell through the agent link runs commands and returns the exit code
        read_end, write_end = os.pipe()
        out_path = world.alice.home / "shell.out"
        result: dict[str, Any] = {}
        url = world.cluster.url.replace("http", "ws") + f"/api/tasks/{task_id}/shell"

        def client() -> None:
            with out_path.open("wb") as out:
                result["code"] = run_shell(url, token=alice.token, stdin_fd=read_end, stdout=out)

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        os.write(write_end, b"echo marker-$((6*7))\nexit 3\n")
        thread.join(60)
        os.close(write_end)
        os.close(read_end)
        assert not thread.is_alive(), "the shell did not end"
        assert result.get("code") == 3, result
        assert b"marker-42" in out_path.read_bytes()
        # And the session is in the log as a shell, with its bytes
        world.cluster.wait(lambda: bool(world.sessions(task_id)), 20, "the shell's close")
        [session] = world.sessions(task_id)
        assert session["via"] == "shell" and session["user"] == "alice"
        assert session["bytes_in"] >= len(b"echo marker-$((6*7))\nexit 3\n")
        assert session["bytes_out"] >= len(b"marker-42")
    finally:
        remove_vps(world, task_id)


def test_sftp_rsync_and_a_port_forward_work_through_the_gateway(
    world: World, tmp_path: Path
) -> None:
    alice = world.alice
    task = world.submit(alice)
    task_id = task["task_id"]
    hop = ["-o", f"ProxyJump={alice.name}@{world.jump}", *vps_host_options(task_id)]
    try:
        # sftp: a batch of commands
        batch = tmp_path / "batch"
        batch.write_text("mkdir /root/up\nput /etc/hostname /root/up/h\nls /root/up\n")
        sftp = subprocess.run(
            ["sftp", "-F", str(alice.ssh.config), *hop, "-b", str(batch), f"root@vps-{task_id}"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert sftp.returncode == 0, sftp.stderr
        assert "/root/up/h" in sftp.stdout
        # rsync -e ssh: a folder there and back
        source = tmp_path / "tree"
        (source / "sub").mkdir(parents=True)
        (source / "sub" / "a.txt").write_text("rsynced\n")
        remote_shell = " ".join(["ssh", "-F", str(alice.ssh.config), *hop])
        pushed = subprocess.run(
            ["rsync", "-a", "-e", remote_shell, f"{source}/", f"root@vps-{task_id}:/root/tree/"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pushed.returncode == 0, pushed.stderr
        back = tmp_path / "back"
        pulled = subprocess.run(
            ["rsync", "-a", "-e", remote_shell, f"root@vps-{task_id}:/root/tree/", f"{back}/"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pulled.returncode == 0, pulled.stderr
        assert (back / "sub" / "a.txt").read_text() == "rsynced\n"
        # -L: a web server inside the VPS (Jupyter's place), reached on a local port
        started = world.through_gateway(
            alice,
            task_id,
            "mkdir -p /root/www && echo served-by-vps > /root/www/index.html"
            " && httpd -p 127.0.0.1:8888 -h /root/www",
        )
        assert started.returncode == 0, started.stderr
        local = free_port()
        forward = alice.ssh.start_ssh(
            "-N", "-L", f"{local}:127.0.0.1:8888", *hop, f"root@vps-{task_id}"
        )
        try:
            seen: dict[str, str] = {}

            def served() -> bool:
                try:
                    seen["body"] = httpx.get(f"http://127.0.0.1:{local}/", timeout=5).text
                except httpx.HTTPError:
                    return False
                return True

            world.cluster.wait(served, 30, "the forwarded port to answer")
            assert seen["body"] == "served-by-vps\n"
        finally:
            forward.terminate()
            forward.wait(10)
    finally:
        remove_vps(world, task_id)
