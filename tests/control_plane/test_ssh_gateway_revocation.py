"""The SSH gateway after the security review, in process: a real ``ControlPlane`` on a
DuckDB file, the real asyncssh server, real asyncssh clients, and a loopback TCP server
standing in for a VPS's sshd (tests/support/gateway_world.py).

What is cut when it is revoked (a key removed, an admin demoted), what the gateway
relays to (an SSH server only), where it connects (the node's own address), and a host
that finds a snapshot of an older format.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncssh
import msgspec
import pytest
from support.gateway_world import NODE, GatewayWorld, VpsServer, gateway_world, settings

from control_plane import ssh_gateway
from control_plane.commands import RecordFacts
from control_plane.hub import ControlPlane
from events.snapshot_files import CLUSTER
from events.types import SshKeyRemoved, SshSessionClosed, UserCreated, UserRoleChanged
from projections.cluster import _Snapshot

pytestmark = pytest.mark.timeout(60)


async def _closes(world: GatewayWorld, count: int, within_s: float = 10) -> list[SshSessionClosed]:
    """The ``ssh.session_closed`` events in the log, once there are ``count`` of them."""
    async with asyncio.timeout(within_s):
        while True:
            closes = [
                r.event
                for r in await world.cp.store.read(after=0)
                if isinstance(r.event, SshSessionClosed)
            ]
            if len(closes) >= count:
                return closes
            await world.cp.changed(0.2)


async def _closed(conn: Any, within_s: float = 10) -> bool:
    """Whether the client connection ``conn`` is closed by the gateway within ``within_s``."""
    try:
        async with asyncio.timeout(within_s):
            await conn.wait_closed()
    except TimeoutError:
        return False
    return True


async def _refusal(conn: Any, task_id: str) -> str:
    try:
        await conn.open_connection(task_id, 22)
    except asyncssh.ChannelOpenError as exc:
        return str(exc.reason)
    return ""


def test_removing_a_key_cuts_the_connections_logged_in_with_it(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, bool, str, bytes, bool]:
        vps = await VpsServer().start()
        async with gateway_world(tmp_path) as world:
            # Given alice logged in twice, with her registered key and with another key:
            await world.user("alice", key_id="k1")
            other = asyncssh.generate_private_key("ssh-ed25519")
            await world.add_key("alice", other, "k2")
            task_id = await world.vps("alice", vps.port)
            first = await world.connect("alice")
            second = await world.connect("alice", other)
            reader, _ = await first.open_connection(task_id, 22)
            await reader.readline()
            # When she removes the first key:
            await world.record(SshKeyRemoved(key_id="k1", user="alice"))
            # Then the connection that logged in with it is closed, its tunnel recorded
            # as cut by the removal, and the other connection still works.
            cut = await _closed(first)
            [closed] = await _closes(world, 1)
            reader2, _ = await second.open_connection(task_id, 22)
            banner = await reader2.readline()
            kept = not await _closed(second, 0.2)
            second.close()
            # And the removed key logs in no more.
            try:
                async with world.connect("alice"):
                    again = True
            except asyncssh.PermissionDenied:
                again = False
        vps.close()
        return cut, kept, closed.reason, banner, again

    cut, kept, reason, banner, again = asyncio.run(scenario())
    assert cut and kept
    assert reason == "key removed"
    assert banner.startswith(b"SSH-2.0-")
    assert again is False


def test_demoting_an_admin_cuts_their_tunnels_into_others_vps(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, str, bool]:
        vps = await VpsServer().start()
        async with gateway_world(tmp_path) as world:
            await world.user("root", role="admin")
            await world.user("bob")
            await world.user("carol")
            bobs = await world.vps("bob", vps.port)
            # Given the admin in bob's VPS, and carol (not an admin) connected:
            admin = await world.connect("root")
            carol = await world.connect("carol")
            reader, _ = await admin.open_connection(bobs, 22)
            await reader.readline()
            # A promotion cuts nothing (carol's connection stays) ...
            await world.record(UserRoleChanged(name="carol", role="admin"))
            promoted_kept = not await _closed(carol, 0.2)
            # ... a demotion cuts the demoted admin's connection and tunnel.
            await world.record(UserRoleChanged(name="root", role="user"))
            cut = await _closed(admin)
            [closed] = await _closes(world, 1)
            carol.close()
        vps.close()
        return cut, closed.reason, promoted_kept

    cut, reason, promoted_kept = asyncio.run(scenario())
    assert cut and reason == "user's role changed"
    assert promoted_kept


@pytest.mark.parametrize(
    ("greeting", "said"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "it said 'HTTP/1.1"),
        (b"SSH-1.5-old\r\n", "it said 'SSH-1.5-old"),
        (b"", "it said nothing within 1 s"),
    ],
)
def test_nothing_is_relayed_to_what_is_not_an_ssh_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, greeting: bytes, said: str
) -> None:
    monkeypatch.setattr(ssh_gateway, "CONNECT_TIMEOUT_S", 1.0)

    async def scenario() -> tuple[str, bytes, str]:
        # Given a VPS whose reported port is something else than an sshd (an API, a
        # metadata service, a server that waits for the client to speak first):
        server = await VpsServer(greeting=greeting).start()
        async with gateway_world(tmp_path) as world:
            await world.user("alice")
            task_id = await world.vps("alice", server.port)
            async with world.connect("alice") as conn:
                refusal = await _refusal(conn, task_id)
            [closed] = await _closes(world, 1)
        server.close()
        return refusal, bytes(server.received), closed.reason

    refusal, received, reason = asyncio.run(scenario())
    # Then the tunnel is refused saying so, and not one byte of the client's reached it.
    assert "not an SSH server" in refusal and said in refusal, refusal
    assert received == b""
    assert reason.startswith("could not reach the VPS's sshd: not an SSH server")


def test_a_node_that_registered_loopback_from_elsewhere_is_not_connected_to(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[str, bytes]:
        vps = await VpsServer().start()
        # Given node n1 registered at 127.0.0.1, its agent link from another machine:
        async with gateway_world(tmp_path, peer="192.0.2.7") as world:
            await world.user("alice")
            task_id = await world.vps("alice", vps.port)
            async with world.connect("alice") as conn:
                refusal = await _refusal(conn, task_id)
        vps.close()
        return refusal, bytes(vps.received)

    refusal, received = asyncio.run(scenario())
    # Then the gateway does not connect to its own loopback for it.
    assert f"node {NODE} registered the address 127.0.0.1" in refusal, refusal
    assert "set runner_address to 192.0.2.7" in refusal
    assert received == b""


def test_a_snapshot_of_an_older_format_is_set_aside_and_the_log_folded(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int, set[str]]:
        host = settings(tmp_path)
        # Given a log whose newest snapshot is of the format before open sessions were kept:
        cp = await ControlPlane.open(host)
        try:
            await cp.execute(RecordFacts(events=(UserCreated(name="zoe"),)))
            old = msgspec.msgpack.encode(
                _Snapshot(format=1, last_seq=cp.last_seq, tasks=[], nodes=[], anomalies=[])
            )
            await cp.store.save_snapshot(CLUSTER, cp.last_seq, old)
            seq = cp.last_seq
        finally:
            await cp.store.close()  # (not cp.close: it would write a snapshot of today's)
        # When the host opens it, it starts, with the state folded from the log's start.
        again = await ControlPlane.open(host)
        try:
            return seq, again.last_seq, set(again.state.identity.users)
        finally:
            await again.close()

    seq, last_seq, users = asyncio.run(scenario())
    assert last_seq == seq and "zoe" in users
