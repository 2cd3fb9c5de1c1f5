"""The liveness check on a real control plane (its DuckDB log in ``tmp_path``, no server)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from support.waiting import async_wait_until

from control_plane.commands import RecordFacts
from control_plane.hub import ControlPlane
from control_plane.settings import HostSettings
from events.types import NodeRegistered

pytestmark = pytest.mark.timeout(30)


async def test_a_node_heard_from_while_the_check_waits_for_the_gate_stays_online(
    tmp_path: Path,
) -> None:
    settings = HostSettings.from_mapping(
        {"paths": {"shared_dir": str(tmp_path / "shared")}, "timing": {"heartbeat_timeout": 1.0}},
        data_dir=str(tmp_path),
    )
    cp = await ControlPlane.open(settings)
    try:
        node = NodeRegistered(node="n1", address="n1", cores=2, memory_bytes=0)
        await cp.execute(RecordFacts(events=(node,)))
        # Given a node silent past the timeout, and a long decision holding the gate
        cp._seen["n1"] = time.monotonic() - 10
        async with cp._gate.exclusive():  # a long decision holds the gate
            check = asyncio.ensure_future(cp.check_liveness())
            await async_wait_until(lambda: cp._gate._waiting > 0, 5)
            # When its heartbeat arrives while the check waits for the gate
            cp.heard_from("n1")
        # Then the check, deciding under the gate, finds nobody late
        assert await check == []
        assert cp.state.nodes["n1"].online
        # And a node still silent is declared offline as before
        cp._seen["n1"] = time.monotonic() - 10
        assert await cp.check_liveness() == ["n1"]
        assert not cp.state.nodes["n1"].online
    finally:
        await cp.close()
