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


async def test_a_stalled_event_loop_is_not_counted_as_a_nodes_silence(tmp_path: Path) -> None:
    """Issue 14, item 5: while the loop is blocked (a huge batch decoded on it), agents'
    frames wait unread; the monitor, running late after it, must not count that time as
    their silence. A node that stays silent while the loop runs still goes offline."""
    settings = HostSettings.from_mapping(
        {
            "paths": {"shared_dir": str(tmp_path / "shared")},
            "timing": {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.5},
        },
        data_dir=str(tmp_path),
    )
    cp = await ControlPlane.open(settings)
    try:
        node = NodeRegistered(node="n1", address="n1", cores=2, memory_bytes=0)
        await cp.execute(RecordFacts(events=(node,)))
        cp.start()
        cp.heard_from("n1")
        start = cp.liveness.checks
        await async_wait_until(lambda: cp.liveness.checks > start, 5)
        # When the event loop stalls for twice the heartbeat timeout
        time.sleep(1.0)  # noqa: ASYNC251 (the fault itself: the loop can run nothing meanwhile)
        stalled = cp.liveness.checks
        # Then the late checks that follow find n1 within its deadline
        await async_wait_until(lambda: cp.liveness.checks >= stalled + 2, 5)
        assert cp.state.nodes["n1"].online
        assert cp.liveness.late_max_s >= 0.9 and cp.liveness.credited_s >= 0.9
        # And silence while the loop runs is still silence
        await async_wait_until(lambda: not cp.state.nodes["n1"].online, 5)
    finally:
        await cp.close()
