"""The SSH gateway in process, with a VPS to tunnel to: a real ``ControlPlane`` on a DuckDB
file, the real asyncssh server on a loopback port, a "VPS sshd" played by a loopback TCP
server that speaks first as an sshd does (an SSH banner, then an echo), and its node
attached as if its agent link came from loopback (a single-machine cluster).

What the agent would report is recorded as facts (``RecordFacts``): the gateway reads
the state, never the agent, so the tests of its rules need no agent process.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import msgspec

from control_plane.access import FailureLog
from control_plane.commands import RecordFacts
from control_plane.hub import ControlPlane
from control_plane.settings import HostNetwork, HostSettings
from control_plane.ssh_gateway import SshGateway, start_gateway
from events import link
from events.types import (
    AnyEvent,
    NodeRegistered,
    SshKeyAdded,
    TaskPlaced,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
    UserCreated,
    VpsReady,
)

NODE = "n1"
_tasks = itertools.count(1)


def settings(data_dir: Path, **network: object) -> HostSettings:
    """A host's settings with the gateway on a free port."""
    return HostSettings(
        data_dir=str(data_dir),
        network=msgspec.structs.replace(HostNetwork(host_ssh_proxy_port=0), **network),
    )


class StandInLink:
    """The node's agent link as the control plane holds it: connected, answering, quiet."""

    def __init__(self) -> None:
        self.sent: list[link.Message] = []

    async def send(self, message: link.Message) -> bool:
        self.sent.append(message)
        return True

    async def close(self, reason: str) -> None:
        return None

    async def alive(self, within_s: float) -> bool:
        return True


@dataclass
class VpsServer:
    """A loopback TCP server standing in for a VPS's sshd: it says ``greeting`` first, then
    echoes; ``received`` is every byte it was sent."""

    greeting: bytes = b"SSH-2.0-OpenSSH_9.6 stand-in\r\n"
    received: bytearray = field(default_factory=bytearray)
    port: int = 0
    server: asyncio.Server | None = None

    async def start(self) -> VpsServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.greeting:
            writer.write(self.greeting)
        try:
            while data := await reader.read(1 << 16):
                self.received += data
                writer.write(data)
        except ConnectionError:
            pass
        writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@dataclass
class GatewayWorld:
    """The gateway, its control plane, and helpers to give users keys and VPS tasks."""

    gateway: SshGateway
    cp: ControlPlane
    keys: dict[str, asyncssh.SSHKey] = field(default_factory=dict)

    async def record(self, *events: AnyEvent) -> None:
        await self.cp.execute(RecordFacts(events=events))

    async def user(self, name: str, role: str = "user", key_id: str | None = None) -> None:
        """Make user ``name`` with a registered key (``self.keys[name]``)."""
        key = asyncssh.generate_private_key("ssh-ed25519")
        self.keys[name] = key
        await self.record(UserCreated(name=name, role=role))  # type: ignore[arg-type]
        await self.add_key(name, key, key_id or f"k-{name}")

    async def add_key(self, user: str, key: asyncssh.SSHKey, key_id: str) -> None:
        line = key.export_public_key("openssh").decode().split()
        await self.record(
            SshKeyAdded(
                key_id=key_id,
                user=user,
                key_type=line[0],
                public_key=f"{line[0]} {line[1]}",
                fingerprint=key.get_fingerprint("sha256"),
            )
        )

    async def vps(self, owner: str, port: int, ssh_public_key: str | None = None) -> str:
        """A running VPS task of ``owner``'s, its sshd ready at ``port``; its id."""
        task_id = f"01aaaaaa-{next(_tasks):04d}-7bbb-8ccc-dddddddddddd"
        spec = TaskSpec(
            task_type="vps",
            command="sshd",
            container="c",
            batch_id="b",
            owner=owner,
            ssh_public_key=ssh_public_key,
        )
        await self.record(
            TaskSubmitted(task_id=task_id, spec=spec),
            TaskPlaced(task_id=task_id, node=NODE, cores=1),
            TaskStarted(task_id=task_id, node=NODE),
            VpsReady(task_id=task_id, node=NODE, address="127.0.0.1", ssh_port=port),
        )
        return task_id

    def connect(self, user: str, key: asyncssh.SSHKey | None = None, **options: Any) -> Any:
        """An asyncssh client connection to the gateway as ``user`` (their key)."""
        return asyncssh.connect(
            "127.0.0.1",
            self.gateway.port,
            username=user,
            client_keys=[key or self.keys[user]],
            known_hosts=None,
            agent_path=None,
            **options,
        )


@asynccontextmanager
async def gateway_world(data_dir: Path, peer: str = "127.0.0.1") -> AsyncIterator[GatewayWorld]:
    """A started gateway whose node ``n1`` (registered at 127.0.0.1) is attached from
    ``peer``; stopped and closed after."""
    host = settings(data_dir)
    cp = await ControlPlane.open(host)
    try:
        status = await start_gateway(cp, host, FailureLog())
        assert status.gateway is not None, status.message
        try:
            world = GatewayWorld(gateway=status.gateway, cp=cp)
            await world.record(
                NodeRegistered(node=NODE, address="127.0.0.1", cores=64, memory_bytes=1 << 34)
            )
            assert await cp.attach(NODE, StandInLink(), peer) is None
            yield world
        finally:
            await status.gateway.stop()
    finally:
        await cp.close()
