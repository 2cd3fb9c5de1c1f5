"""The SSH gateway's bounds and its host key, in process: a real ``ControlPlane`` on a DuckDB
file, the real asyncssh server on a loopback port, real clients (raw TCP, asyncssh).

The limits are module constants, lowered here so a test sees them bite in a second:
connections per client address, the time to log in, and keys refused per connection.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncssh
import msgspec
import pytest
from support.gateway_world import VpsServer, gateway_world

from control_plane import ssh_gateway
from control_plane.access import FailureLog
from control_plane.hub import ControlPlane
from control_plane.settings import HostNetwork, HostSettings
from control_plane.ssh_gateway import (
    HOST_KEY_FILE,
    GatewayUnavailable,
    SshGateway,
    address_group,
    host_key,
    start_gateway,
)

pytestmark = pytest.mark.timeout(60)


def _settings(data_dir: Path, **network: object) -> HostSettings:
    return HostSettings(
        data_dir=str(data_dir),
        network=msgspec.structs.replace(HostNetwork(host_ssh_proxy_port=0), **network),
    )


@asynccontextmanager
async def _gateway(data_dir: Path) -> AsyncIterator[SshGateway]:
    settings = _settings(data_dir)
    cp = await ControlPlane.open(settings)
    try:
        status = await start_gateway(cp, settings, FailureLog())
        assert status.gateway is not None, status.message
        try:
            yield status.gateway
        finally:
            await status.gateway.stop()
    finally:
        await cp.close()


async def _read_to_end(reader: asyncio.StreamReader, within_s: float) -> bytes:
    async with asyncio.timeout(within_s):
        return await reader.read(-1)


def test_connections_from_one_address_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_gateway, "MAX_CONNECTIONS_PER_ADDRESS", 2)

    async def scenario() -> bytes:
        async with _gateway(tmp_path) as gateway:
            held = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(2)]
            for reader, _ in held:  # both admitted: each gets the banner
                assert (await reader.readline()).startswith(b"SSH-2.0-HakuRiver_gateway")
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            refused = await _read_to_end(reader, 10)
            for _, w in [*held, (reader, writer)]:
                w.close()
            return refused

    refused = asyncio.run(scenario())
    assert b"too many connections from 127.0.0.1" in refused


def test_a_client_that_does_not_log_in_in_time_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_gateway, "LOGIN_TIMEOUT_S", 0.5)

    async def scenario() -> bytes:
        async with _gateway(tmp_path) as gateway:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            try:
                return await _read_to_end(reader, 10)  # asyncssh's own default: 2 minutes
            finally:
                writer.close()

    # Closed after the banner: the client never said a word (a read to the end returned).
    assert asyncio.run(scenario()).startswith(b"SSH-2.0-HakuRiver_gateway")


def test_a_client_is_cut_off_after_too_many_refused_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_gateway, "MAX_AUTH_FAILURES", 3)
    keys = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(6)]

    async def scenario() -> Exception:
        async with _gateway(tmp_path) as gateway:
            try:
                await asyncssh.connect(
                    "127.0.0.1",
                    gateway.port,
                    username="admin",
                    client_keys=keys,
                    known_hosts=None,
                    agent_path=None,
                    preferred_auth="publickey",
                )
            except (asyncssh.Error, OSError) as exc:
                return exc
            raise AssertionError("logged in with keys nobody registered")

    refused = asyncio.run(scenario())
    # Without the bound, asyncssh tries all six keys and gets "Permission denied".
    assert isinstance(refused, asyncssh.DisconnectError), refused
    assert "too many authentication failures" in str(refused)


def test_the_host_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    made = host_key(tmp_path)
    path = tmp_path / HOST_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.chmod(0o644)  # loosened by hand: tightened at the next start
    again = host_key(tmp_path)
    assert again.public_data == made.public_data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_unreadable_host_key_is_not_replaced_and_the_host_says_why(tmp_path: Path) -> None:
    path = tmp_path / HOST_KEY_FILE
    path.parent.mkdir(mode=0o700)
    path.write_text("not a key\n")
    with pytest.raises(GatewayUnavailable, match="move it away to make a new one"):
        host_key(tmp_path)
    assert path.read_text() == "not a key\n"

    async def scenario() -> ssh_gateway.GatewayStatus:
        settings = _settings(tmp_path)
        cp = await ControlPlane.open(settings)
        try:
            return await start_gateway(cp, settings, FailureLog())
        finally:
            await cp.close()

    status = asyncio.run(scenario())
    assert status.enabled is False and status.gateway is None
    assert "cannot read the gateway's host key" in status.message


def test_a_gateway_that_is_off_is_not_started(tmp_path: Path) -> None:
    async def scenario() -> ssh_gateway.GatewayStatus:
        settings = _settings(tmp_path, ssh_gateway=False)
        cp = await ControlPlane.open(settings)
        try:
            return await start_gateway(cp, settings, FailureLog())
        finally:
            await cp.close()

    status = asyncio.run(scenario())
    assert status.enabled is False and "[network] ssh_gateway" in status.message
    assert not (tmp_path / HOST_KEY_FILE).exists()


def test_tunnels_in_one_connection_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_gateway, "MAX_TUNNELS_PER_CONNECTION", 2)

    async def scenario() -> tuple[list[bytes], str]:
        vps = await VpsServer().start()
        async with gateway_world(tmp_path) as world:
            # Given a user whose VPS task is running with its "sshd" at the echo server:
            await world.user("erin")
            task_id = await world.vps("erin", vps.port)
            async with world.connect("erin") as conn:
                # When she opens tunnels to it in one connection, each relays ...
                echoed = []
                streams = []
                for _ in range(2):
                    reader, writer = await conn.open_connection(task_id, 22)
                    assert (await reader.readline()).startswith(b"SSH-2.0-")
                    writer.write(b"ping")
                    echoed.append(await reader.readexactly(4))
                    streams.append(writer)
                # ... up to the bound.
                try:
                    await conn.open_connection(task_id, 22)
                except asyncssh.ChannelOpenError as exc:
                    refusal = exc.reason
                else:
                    refusal = ""
        vps.close()
        return echoed, refusal

    echoed, refusal = asyncio.run(scenario())
    assert echoed == [b"ping", b"ping"]
    assert "at most 2 tunnels per connection" in refusal


def test_tunnels_of_one_user_are_bounded_over_their_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_gateway, "MAX_TUNNELS_PER_USER", 2)

    async def scenario() -> tuple[str, bytes]:
        vps = await VpsServer().start()
        async with gateway_world(tmp_path) as world:
            await world.user("erin")
            await world.user("fred")
            erins, freds = await world.vps("erin", vps.port), await world.vps("fred", vps.port)
            # Given Erin holds two tunnels, each in a connection of its own:
            async with world.connect("erin") as one, world.connect("erin") as two:
                held = [await c.open_connection(erins, 22) for c in (one, two)]
                async with world.connect("erin") as three:
                    # When she opens a third, it is refused ...
                    try:
                        await three.open_connection(erins, 22)
                    except asyncssh.ChannelOpenError as exc:
                        refusal = exc.reason
                    else:
                        refusal = ""
                    # ... and Fred's tunnel is not.
                    async with world.connect("fred") as fred:
                        reader, _ = await fred.open_connection(freds, 22)
                        banner = await reader.readline()
                for _, writer in held:
                    writer.close()
        vps.close()
        return refusal, banner

    refusal, banner = asyncio.run(scenario())
    assert "erin has 2 tunnels open through the gateway, the most one user may" in refusal
    assert banner.startswith(b"SSH-2.0-")


def test_connections_logging_in_are_bounded_apart_from_logged_in_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_gateway, "MAX_STARTUPS_PER_ADDRESS", 2)

    async def scenario() -> tuple[bytes, bytes]:
        async with gateway_world(tmp_path) as world:
            await world.user("erin")
            # Given two users logged in from this address (they hold no login slot):
            async with world.connect("erin"), world.connect("erin"):
                # When two clients connect and say nothing, both are served ...
                idle = [await asyncio.open_connection("127.0.0.1", world.gateway.port)]
                idle.append(await asyncio.open_connection("127.0.0.1", world.gateway.port))
                for reader, _ in idle:
                    assert (await reader.readline()).startswith(b"SSH-2.0-HakuRiver")
                # ... and a third is refused while they hold the login slots.
                reader, writer = await asyncio.open_connection("127.0.0.1", world.gateway.port)
                refused = await _read_to_end(reader, 10)
                writer.close()
                for _, w in idle:
                    w.close()
                # Once they are gone, logging in works again.
                async with asyncio.timeout(10):
                    while world.gateway.logging_in:
                        await world.cp.changed(0.05)
                async with world.connect("erin") as again:
                    version = again.get_extra_info("server_version")
            return refused, version.encode()

    refused, version = asyncio.run(scenario())
    assert b"too many connections logging in from 127.0.0.1" in refused
    assert version.startswith(b"SSH-2.0-HakuRiver")


def test_connections_logging_in_are_bounded_in_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_gateway, "MAX_STARTUPS", 1)

    async def scenario() -> bytes:
        async with gateway_world(tmp_path) as world:
            reader, writer = await asyncio.open_connection("127.0.0.1", world.gateway.port)
            assert (await reader.readline()).startswith(b"SSH-2.0-HakuRiver")
            second, other = await asyncio.open_connection("127.0.0.1", world.gateway.port)
            refused = await _read_to_end(second, 10)
            writer.close()
            other.close()
            return refused

    assert b"too many connections logging in; try again later" in asyncio.run(scenario())


@pytest.mark.parametrize(
    ("address", "group"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("", ""),
    ],
)
def test_an_ipv6_client_counts_by_its_64(address: str, group: str) -> None:
    assert address_group(address) == group
