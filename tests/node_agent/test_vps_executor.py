"""VPS tasks in the Docker executor, against a real engine, a real sshd and a real ``ssh``.

The images are built locally from this machine's OpenSSH (tests/support/vps_image.py);
the client is the system's ``ssh`` with a key made for the test.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace
from support.docker_images import ONE_BINARY_IMAGE, build_one_binary_image
from support.vps_image import VPS_NOSSH_ENV, VPS_SSHD_ENV, vps_images_or_skip
from support.vps_ssh import SshClient

from events.types import TaskSpec
from node_agent.executors.base import StartFailed, TaskRun
from node_agent.executors.docker import DockerExecutor
from node_agent.executors.vps import (
    KEYS_PATH,
    NO_SSHD_MARKER,
    VPS_SCRIPT,
    probe_endpoint,
    ssh_banner,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

ADDRESS = "127.0.0.1"


@pytest.fixture
def ids(tmp_path: Path) -> str:
    """A suffix for this test's task ids: container names are the engine's, shared by every
    test run on this machine at once."""
    return hashlib.sha256(str(tmp_path).encode()).hexdigest()[:8]


# A comment that would run commands if the key were ever pasted into a shell line.
EVIL_COMMENT = "'; touch /pwned; '$(touch /pwned2)`touch /pwned3`\"; touch /pwned4 #"


@pytest.fixture
def client() -> Any:
    return vps_images_or_skip()


@pytest.fixture
def executor(tmp_path: Path, client: Any):
    node = f"test-{tmp_path.name}"
    made = DockerExecutor(tmp_path / "state", node=node, client=client, runner_address=ADDRESS)
    yield made
    for container in client.containers.list(
        all=True, sparse=True, filters={"label": f"hakuriver.node={node}"}
    ):
        container.remove(force=True)


@pytest.fixture
def ssh(tmp_path: Path) -> SshClient:
    return SshClient(tmp_path / "ssh", comment=EVIL_COMMENT)


def vps(
    tmp_path: Path, task_id: str, key: str, image: str = VPS_SSHD_ENV, **fields: Any
) -> TaskRun:
    spec = TaskSpec(
        task_type="vps",
        command="",
        container=image,
        batch_id="b",
        ssh_public_key=key,
    )
    return TaskRun(
        task_id=task_id,
        spec=spec,
        cores=1,
        shared_dir=str(tmp_path / "shared"),
        local_temp_dir=str(tmp_path / "local"),
        **fields,
    )


async def ready_port(executor: DockerExecutor, task_id: str) -> int:
    found = await executor.vps_endpoint(task_id, timeout_s=30)
    assert found.sshd, found
    assert found.ssh_port is not None and found.address == ADDRESS
    return found.ssh_port


def test_the_script_prints_the_marker_the_probe_looks_for() -> None:
    assert f'echo "{NO_SSHD_MARKER}" >&2' in VPS_SCRIPT
    assert KEYS_PATH in VPS_SCRIPT


async def test_a_vps_serves_ssh_on_the_runners_address_with_the_key_delivered_literally(
    ids: str, tmp_path: Path, executor: DockerExecutor, client: Any, ssh: SshClient
) -> None:
    # Given keys whose comment holds shell metacharacters, and a second line
    keys = ssh.public_key + "# a comment line; $(touch /pwned5)\n"
    # When the VPS starts
    started = await executor.start(vps(tmp_path, f"v-ssh-{ids}", keys))
    port = await ready_port(executor, f"v-ssh-{ids}")
    # Then it is a persistent, labelled container publishing 22 on the runner's address only
    container = client.containers.get(started.container_id)
    assert container.name == f"hakuriver-vps-v-ssh-{ids}"
    assert container.labels["hakuriver.vps"] == "1"
    assert container.labels["hakuriver.task_id"] == f"v-ssh-{ids}"
    host = container.attrs["HostConfig"]
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert container.attrs["NetworkSettings"]["Ports"]["22/tcp"] == [
        {"HostIp": ADDRESS, "HostPort": str(port)}
    ]
    assert host["NanoCpus"] == 1_000_000_000
    # And plain ssh works straight to the published port, as root
    answer = await ssh.run(ADDRESS, port, "id -u; ls -d /shared /local_temp")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split() == ["0", "/local_temp", "/shared"]
    # And the key file inside is exactly the spec's text, nothing of it ran, and it is read-only
    inside = await ssh.run(ADDRESS, port, "cat", KEYS_PATH)
    assert inside.stdout == keys
    pwned = await ssh.run(ADDRESS, port, "ls / | grep -c pwned || true")
    assert pwned.stdout.strip() == "0"
    overwrite = await ssh.run(ADDRESS, port, f"echo x >> {KEYS_PATH}")
    assert overwrite.returncode != 0
    # And another key is refused
    stranger = SshClient(tmp_path / "stranger")
    refused = await stranger.run(ADDRESS, port, "true")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr


async def test_a_vps_without_sshd_says_so_and_keeps_running(
    ids: str, tmp_path: Path, executor: DockerExecutor, client: Any
) -> None:
    started = await executor.start(vps(tmp_path, f"v-nossh-{ids}", "", image=VPS_NOSSH_ENV))
    began = time.monotonic()
    found = await executor.vps_endpoint(f"v-nossh-{ids}", timeout_s=30)
    # Then the marker answers at once (not the deadline), and the VPS stays up for `vps shell`
    assert time.monotonic() - began < 15
    assert (
        not found.sshd
        and "no sshd" in found.message
        and f"vps shell v-nossh-{ids}" in found.message
    )
    assert client.containers.get(started.container_id).status == "running"


async def test_sshd_that_does_not_answer_in_time_is_reported_with_the_deadline(
    ids: str,
) -> None:
    # Given a published port where nothing speaks SSH (a listener that says something else)
    async def not_ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_ssh, ADDRESS, 0)
    port = server.sockets[0].getsockname()[1]
    attrs = {
        "State": {"Status": "running", "Running": True},
        "NetworkSettings": {"Ports": {"22/tcp": [{"HostIp": ADDRESS, "HostPort": str(port)}]}},
    }

    async def inspect() -> dict[str, Any]:
        return attrs

    async def stderr_tail() -> str:
        return "sshd: starting\n"

    # When the runner waits for it
    async with server:
        began = time.monotonic()
        found = await probe_endpoint(
            task_id=f"v-slow-{ids}",
            address=ADDRESS,
            timeout_s=0.5,
            inspect=inspect,
            stderr_tail=stderr_tail,
        )
    # Then it says so once the deadline has passed, with the port it tried
    assert time.monotonic() - began >= 0.5
    assert not found.sshd and found.ssh_port == port
    assert (
        found.message
        == f"sshd did not answer within 0.5 s: reach it with `hakuriver vps shell v-slow-{ids}`"
    )


async def test_a_paused_vps_can_be_killed_and_forget_removes_container_and_key(
    ids: str, tmp_path: Path, executor: DockerExecutor, client: Any, ssh: SshClient
) -> None:
    started = await executor.start(vps(tmp_path, f"v-kill-{ids}", ssh.public_key))
    await ready_port(executor, f"v-kill-{ids}")
    keys = tmp_path / "state" / "vps-keys" / f"v-kill-{ids}.keys"
    assert keys.read_text() == ssh.public_key
    # Given a paused VPS
    await executor.pause(f"v-kill-{ids}")
    assert client.containers.get(started.container_id).status == "paused"
    # When it is killed
    await executor.kill(f"v-kill-{ids}", grace_s=1)
    outcome = await asyncio.wait_for(executor.wait(f"v-kill-{ids}"), 30)
    # Then it ended for good (not restarted by its policy)
    assert outcome.state == "killed"
    container = client.containers.get(started.container_id)
    assert container.status == "exited"
    # And forget removes its container and its key file
    await executor.forget(f"v-kill-{ids}")
    assert not client.containers.list(all=True, filters={"name": f"hakuriver-vps-v-kill-{ids}"})
    assert not keys.exists()


async def test_pause_and_resume_freeze_and_continue_a_vps(
    ids: str, tmp_path: Path, executor: DockerExecutor, client: Any, ssh: SshClient
) -> None:
    started = await executor.start(vps(tmp_path, f"v-pause-{ids}", ssh.public_key))
    port = await ready_port(executor, f"v-pause-{ids}")
    await executor.pause(f"v-pause-{ids}")
    assert client.containers.get(started.container_id).status == "paused"
    # A frozen sshd answers nobody (the engine's proxy still accepts the connection)
    assert not await ssh_banner(ADDRESS, port, timeout_s=1.0)
    await executor.resume(f"v-pause-{ids}")
    assert client.containers.get(started.container_id).status == "running"
    answer = await ssh.run(ADDRESS, port, "echo back")
    assert answer.stdout == "back\n", answer.stderr


async def test_a_vps_restarted_by_its_policy_is_the_same_running_task(
    ids: str, tmp_path: Path, executor: DockerExecutor, client: Any, ssh: SshClient
) -> None:
    started = await executor.start(vps(tmp_path, f"v-restart-{ids}", ssh.public_key))
    first = await executor.vps_endpoint(f"v-restart-{ids}", timeout_s=30)
    assert first.sshd
    outcome = asyncio.ensure_future(executor.wait(f"v-restart-{ids}"))
    # When sshd dies (the container's main process), the engine restarts the container
    client.containers.get(started.container_id).exec_run(["kill", "1"])
    generation = await asyncio.wait_for(
        executor.vps_restarted(f"v-restart-{ids}", first.generation), 30
    )
    # Then the task has not ended, and the new start serves ssh again (on its port now)
    assert generation == first.generation + 1
    assert not outcome.done()
    again = await executor.vps_endpoint(f"v-restart-{ids}", timeout_s=30)
    assert again.sshd and again.generation == generation and again.ssh_port is not None
    answer = await ssh.run(ADDRESS, again.ssh_port, "echo again")
    assert answer.stdout == "again\n", answer.stderr
    assert client.containers.get(started.container_id).attrs["RestartCount"] >= 1
    # And a kill still ends it for good
    await executor.kill(f"v-restart-{ids}", grace_s=1)
    assert (await asyncio.wait_for(outcome, 30)).state == "killed"


async def test_an_image_without_a_shell_cannot_be_a_vps(
    ids: str, tmp_path: Path, executor: DockerExecutor, client: Any
) -> None:
    build_one_binary_image(client)
    with pytest.raises(StartFailed, match="has no /bin/sh"):
        await executor.start(vps(tmp_path, f"v-noshell-{ids}", "", image=ONE_BINARY_IMAGE))
    assert not client.containers.list(all=True, filters={"name": f"hakuriver-vps-v-noshell-{ids}"})
    assert not (tmp_path / "state" / "vps-keys" / f"v-noshell-{ids}.keys").exists()


async def test_a_vps_is_refused_for_an_owner_or_without_a_container(
    ids: str, tmp_path: Path, executor: DockerExecutor, client: Any
) -> None:
    with pytest.raises(StartFailed, match="runs as its container's root"):
        await executor.start(vps(tmp_path, f"v-owner-{ids}", "", run_as="alice"))
    bare = vps(tmp_path, f"v-null-{ids}", "")
    with pytest.raises(StartFailed, match="needs a container"):
        await executor.start(replace(bare, spec=replace(bare.spec, container=None)))
    for refused in (f"v-owner-{ids}", f"v-null-{ids}"):
        assert not client.containers.list(all=True, filters={"name": f"hakuriver-vps-{refused}"})
        assert not (tmp_path / "state" / "vps-keys" / f"{refused}.keys").exists()
