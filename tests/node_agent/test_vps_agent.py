"""VPS tasks through a real agent: ``vps.ready`` after ``task.started``, again after the
agent restarts, and ``hakuriver vps shell``'s terminal over the link.

A real ``Agent`` with a real Docker executor, stepped on this loop; the test plays the
host over an in-memory link (tests/support/agent_link.py), as test_agent.py does. A
restart is a second agent on the same state directory.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.agent_link import HostEnd, MemoryConnector, events_of
from support.docker_images import BUSYBOX_IMAGE
from support.vps_image import VPS_NOSSH_ENV, VPS_SSHD_ENV, vps_images_or_skip
from support.vps_ssh import SshClient
from support.waiting import async_wait_until

from events import link
from events.types import TaskFinished, TaskSpec, TaskStarted, VpsReady
from node_agent import shells
from node_agent.agent import Agent
from node_agent.executors.docker import DockerExecutor
from node_agent.executors.process import ProcessExecutor
from node_agent.probes import MachineInfo
from node_agent.settings import RunnerSettings

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

ADDRESS = "127.0.0.1"


@pytest.fixture
def ids(tmp_path: Path) -> str:
    """A suffix for this test's task ids: container names are the engine's, shared by every
    test run on this machine at once."""
    return hashlib.sha256(str(tmp_path).encode()).hexdigest()[:8]


@dataclass
class Node:
    """One node's data directory; each ``agent()`` is a new agent process on it."""

    root: Path
    name: str
    client: Any
    connector: MemoryConnector

    @property
    def settings(self) -> RunnerSettings:
        return RunnerSettings.from_mapping(
            {
                "paths": {"shared_dir": str(self.root / "shared")},
                "network": {"runner_address": ADDRESS},
                "vps": {"ready_timeout": 30},
            },
            data_dir=str(self.root),
            name=self.name,
        )

    def agent(self) -> Agent:
        settings = self.settings
        executor = DockerExecutor(
            settings.state_dir / "docker",
            node=self.name,
            client=self.client,
            runner_address=settings.network.runner_address,
        )
        return Agent(
            settings,
            executors={"docker": executor},
            machine=MachineInfo(cores=2, memory_bytes=1 << 30, numa=()),
            connect=self.connector,
        )


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    client = vps_images_or_skip()
    name = "vps-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:10]
    yield Node(tmp_path, name, client, MemoryConnector())
    for container in client.containers.list(
        all=True, sparse=True, filters={"label": f"hakuriver.node={name}"}
    ):
        container.remove(force=True)


def vps_run(task_id: str, key: str, image: str = VPS_SSHD_ENV) -> link.Run:
    spec = TaskSpec(task_type="vps", command="", container=image, batch_id="b", ssh_public_key=key)
    return link.Run(task_id=task_id, spec=spec, cores=1)


async def until(
    host: HostEnd, wanted: Callable[[list[link.AgentMessage]], bool], deadline_s: float = 60
) -> list[link.AgentMessage]:
    """The agent's messages, read until ``wanted(all so far)`` holds."""
    seen: list[link.AgentMessage] = []
    async with asyncio.timeout(deadline_s):
        while not wanted(seen):
            seen.append(await host.receive(deadline_s))
    return seen


def readiness(messages: list[link.AgentMessage]) -> list[VpsReady]:
    return [e.event for e in events_of(messages) if isinstance(e.event, VpsReady)]


async def test_the_agent_reports_vps_ready_and_again_after_it_restarts(
    ids: str, node: Node, tmp_path: Path
) -> None:
    ssh = SshClient(tmp_path / "ssh")
    async with node.agent().started():
        host = await node.connector.accept()
        await host.greet()
        # When the host runs a VPS
        await host.send(vps_run(f"v-1-{ids}", ssh.public_key))
        seen = await until(host, lambda m: bool(readiness(m)))
        # Then the agent reports task.started, then vps.ready with the port sshd answers on
        events = [e.event for e in events_of(seen)]
        assert isinstance(events[0], TaskStarted) and events[0].container_id
        ready = readiness(seen)[0]
        assert (ready.task_id, ready.node, ready.address, ready.sshd) == (
            f"v-1-{ids}",
            node.name,
            ADDRESS,
            True,
        )
        assert ready.ssh_port is not None
        assert (await ssh.run(ADDRESS, ready.ssh_port, "echo one")).stdout == "one\n"
    # When the agent stops and a new one starts on the same state directory
    async with node.agent().started():
        host = await node.connector.accept()
        hello = await host.greet()
        # Then it has re-adopted the VPS and reports where its sshd answers again
        assert [t.task_id for t in hello.running] == [f"v-1-{ids}"]
        again = readiness(await until(host, lambda m: bool(readiness(m))))[0]
        assert again.sshd and again.ssh_port is not None
        assert (await ssh.run(ADDRESS, again.ssh_port, "echo two")).stdout == "two\n"


def shell_frames(messages: list[link.AgentMessage], session: str) -> tuple[bytes, list[Any]]:
    """The output of a shell session, and its ``ShellExit`` messages."""
    output = b"".join(
        m.data for m in messages if isinstance(m, link.ShellOutput) and m.session == session
    )
    exits = [m for m in messages if isinstance(m, link.ShellExit) and m.session == session]
    return output, exits


async def test_a_shell_through_the_link_runs_a_command_and_reports_its_exit_code(
    ids: str,
    node: Node,
) -> None:
    async with node.agent().started():
        host = await node.connector.accept()
        await host.greet()
        # Given a VPS whose image has no sshd (`vps shell` is how it is reached)
        await host.send(vps_run(f"v-sh-{ids}", "", image=VPS_NOSSH_ENV))
        ready = readiness(await until(host, lambda m: bool(readiness(m))))[0]
        assert not ready.sshd and "no sshd" in ready.message
        # When a shell opens and the user types a command
        await host.send(link.ShellOpen(session="s1", task_id=f"v-sh-{ids}", rows=30, cols=100))
        await host.send(link.ShellInput(session="s1", data=b"stty size; echo h''i; exit 3\n"))
        seen = await until(host, lambda m: bool(shell_frames(m, "s1")[1]))
        # Then its output comes back, then exactly one exit with the shell's code
        output, exits = shell_frames(seen, "s1")
        assert b"30 100" in output and b"hi\r\n" in output
        assert b"HAKURIVER-SHELL-PID" not in output
        assert [(e.code, e.error) for e in exits] == [(3, "")]


async def test_shell_open_for_an_unknown_or_a_non_vps_task_is_refused(ids: str, node: Node) -> None:
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        # A command task in a container (not a VPS)
        spec = TaskSpec(command="sleep", args=("60",), container=BUSYBOX_IMAGE, batch_id="b")
        await host.send(link.Run(task_id=f"t-cmd-{ids}", spec=spec, cores=1))
        await until(host, lambda m: any(isinstance(e.event, TaskStarted) for e in events_of(m)))
        await host.send(link.ShellOpen(session="s-unknown", task_id="t-nope"))
        await host.send(link.ShellOpen(session="s-cmd", task_id=f"t-cmd-{ids}"))
        seen = await until(
            host, lambda m: len([x for x in m if isinstance(x, link.ShellExit)]) >= 2
        )
        exits = {m.session: m for m in seen if isinstance(m, link.ShellExit)}
        assert exits["s-unknown"].code is None
        assert "no running task t-nope" in exits["s-unknown"].error
        assert "not a VPS" in exits["s-cmd"].error
        assert agent.shells.shells == {}
        await host.send(link.Kill(task_id=f"t-cmd-{ids}", grace_s=0))


async def test_a_shell_is_hung_up_by_shell_close_and_by_a_dropped_link(
    ids: str, node: Node
) -> None:
    async with node.agent().started() as agent:
        host = await node.connector.accept()
        await host.greet()
        await host.send(vps_run(f"v-hup-{ids}", "", image=VPS_NOSSH_ENV))
        await until(host, lambda m: bool(readiness(m)))
        container = node.client.containers.get(f"hakuriver-vps-v-hup-{ids}")

        def shells_inside() -> int:
            processes = container.top(ps_args="-o pid,args")["Processes"]
            return sum(args == "/bin/sh -l" for _pid, args in processes)

        # When a shell is open and the host hangs it up
        await host.send(link.ShellOpen(session="s-close", task_id=f"v-hup-{ids}"))
        await host.send(link.ShellInput(session="s-close", data=b"echo ready\n"))
        await until(host, lambda m: b"ready\r\n" in shell_frames(m, "s-close")[0])
        assert shells_inside() == 1
        await host.send(link.ShellClose(session="s-close"))
        seen = await until(host, lambda m: bool(shell_frames(m, "s-close")[1]))
        # Then it ends inside the container, with one exit
        assert len(shell_frames(seen, "s-close")[1]) == 1
        await async_wait_until(lambda: shells_inside() == 0, deadline_s=10)
        # When a shell is open and the link drops
        await host.send(link.ShellOpen(session="s-drop", task_id=f"v-hup-{ids}"))
        await host.send(link.ShellInput(session="s-drop", data=b"echo there\n"))
        await until(host, lambda m: b"there\r\n" in shell_frames(m, "s-drop")[0])
        host.close()
        # Then the agent hangs it up too
        await async_wait_until(lambda: shells_inside() == 0 and not agent.shells.shells, 15)


async def test_shells_beyond_the_limit_or_in_a_paused_vps_are_refused(
    ids: str, node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(link, "MAX_SHELLS", 1)
    async with node.agent().started():
        host = await node.connector.accept()
        await host.greet()
        await host.send(vps_run(f"v-lim-{ids}", "", image=VPS_NOSSH_ENV))
        await until(host, lambda m: bool(readiness(m)))
        # Given one shell open (the limit)
        await host.send(link.ShellOpen(session="s-a", task_id=f"v-lim-{ids}"))
        await host.send(link.ShellInput(session="s-a", data=b"echo a\n"))
        await until(host, lambda m: b"a\r\n" in shell_frames(m, "s-a")[0])
        # When a second one opens, it is refused, and the first goes on
        await host.send(link.ShellOpen(session="s-b", task_id=f"v-lim-{ids}"))
        seen = await until(host, lambda m: bool(shell_frames(m, "s-b")[1]))
        assert "too many shells" in shell_frames(seen, "s-b")[1][0].error
        assert not shell_frames(seen, "s-a")[1]
        await host.send(link.ShellInput(session="s-a", data=b"exit 0\n"))
        seen = await until(host, lambda m: bool(shell_frames(m, "s-a")[1]))
        assert [e.code for e in shell_frames(seen, "s-a")[1]] == [0]
        # When the VPS is paused, a shell is refused until it is resumed
        await host.send(link.Pause(task_id=f"v-lim-{ids}"))
        await until(
            host, lambda m: any(type(e.event).__name__ == "TaskPaused" for e in events_of(m))
        )
        await host.send(link.ShellOpen(session="s-c", task_id=f"v-lim-{ids}"))
        seen = await until(host, lambda m: bool(shell_frames(m, "s-c")[1]))
        assert "paused" in shell_frames(seen, "s-c")[1][0].error


async def test_a_vps_on_a_node_without_docker_fails_saying_why(ids: str, tmp_path: Path) -> None:
    # Given an agent with the process executor only (no engine on its node)
    connector = MemoryConnector()
    settings = RunnerSettings.from_mapping({}, data_dir=str(tmp_path), name="plain")
    agent = Agent(
        settings,
        executors={"process": ProcessExecutor(settings.state_dir / "process")},
        machine=MachineInfo(cores=2, memory_bytes=1 << 30, numa=()),
        connect=connector,
    )
    async with agent.started():
        host = await connector.accept()
        await host.greet()
        # When the host runs a VPS there
        await host.send(vps_run(f"v-plain-{ids}", "ssh-ed25519 AAAA x"))
        seen = await until(
            host, lambda m: any(isinstance(e.event, TaskFinished) for e in events_of(m))
        )
    # Then it fails at once, saying a VPS needs a Docker engine (not run as a process)
    finished = [e.event for e in events_of(seen) if isinstance(e.event, TaskFinished)]
    assert finished[0].state == "failed"
    assert "a VPS task needs one" in finished[0].message
    assert not any(isinstance(e.event, TaskStarted) for e in events_of(seen))


async def test_a_shell_that_reads_nothing_holds_no_engine_call_and_is_ended_past_the_bound(
    ids: str, node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One thread for the relay's engine calls: a write that held it would stall them all
    # (with the real eight, eight such shells did).
    monkeypatch.setattr(shells, "SHELL_CALLS", 1)
    async with node.agent().started():
        host = await node.connector.accept()
        await host.greet()
        task_id = f"v-stuck-{ids}"
        await host.send(vps_run(task_id, "", image=VPS_NOSSH_ENV))
        await until(host, lambda m: bool(readiness(m)))
        container = node.client.containers.get(f"hakuriver-vps-{task_id}")

        def sleeping() -> bool:
            processes = container.top(ps_args="-o pid,args")["Processes"]
            return any(args == "sleep 600" for _pid, args in processes)

        # Given a shell that reads nothing (a command in the foreground), fed more lines
        # than the terminal and the engine's socket take (its writes block)
        await host.send(link.ShellOpen(session="s-stuck", task_id=task_id))
        await host.send(link.ShellInput(session="s-stuck", data=b"sleep 600\n"))
        await async_wait_until(sleeping, deadline_s=15)
        lines = b"\n" * link.MAX_SHELL_CHUNK
        for _ in range((512 << 10) // len(lines)):
            await host.send(link.ShellInput(session="s-stuck", data=lines))
        # When another shell opens in the same VPS
        await host.send(link.ShellOpen(session="s-other", task_id=task_id))
        await host.send(link.ShellInput(session="s-other", data=b"echo ot''her; exit 4\n"))
        # Then it starts, runs and ends (its engine calls were not held up)
        seen = await until(host, lambda m: bool(shell_frames(m, "s-other")[1]), 30)
        output, exits = shell_frames(seen, "s-other")
        assert b"other\r\n" in output and [(e.code, e.error) for e in exits] == [(4, "")]
        assert not shell_frames(seen, "s-stuck")[1]
        # When the stuck shell's input passes the bound, its session is ended, saying why
        for _ in range(shells.MAX_INPUT_BUFFERED // len(lines) + 2):
            await host.send(link.ShellInput(session="s-stuck", data=lines))
        seen = await until(host, lambda m: bool(shell_frames(m, "s-stuck")[1]), 30)
        [ended] = shell_frames(seen, "s-stuck")[1]
        assert "read none of its input" in ended.error and "bytes were waiting" in ended.error
        await async_wait_until(lambda: not sleeping(), deadline_s=15)
