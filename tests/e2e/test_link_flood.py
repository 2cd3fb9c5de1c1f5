"""Floods must not make the host declare a healthy node offline (issue 14, item 5).

Fake agents (enrolled, so they get past authentication) flood the agent link while the real
agent ``n1`` runs a task: first one oversized batch each at once (62 MB each made the host
declare n1 offline and lose its task), then batches at the link's limits for several seconds.
The oversized frames are refused by size; the rest delays acknowledgements, never n1's
liveness: the node is never declared offline and its task is never lost. The liveness
monitor's lateness under the flood is measured and printed (``-s`` shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path

import httpx
import msgspec
import pytest
from support.cluster import Cluster, running_cluster
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from events import link
from events.envelope import NewEvent
from events.ids import new_id
from events.types import NodeHeartbeat

pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("link-flood")]

FAKES = 4
OVERSIZED_BYTES = 48 << 20
FLOOD_S = 5.0  # past the heartbeat timeout (3 s) by half again
BATCH_EVENTS = 1000  # events.link.MAX_BATCH_EVENTS: a full batch


def _heartbeats(node: str, count: int) -> bytes:
    now = time.time_ns() // 1000
    return msgspec.json.encode(
        [
            NewEvent(id=new_id(), source=node, occurred_at_us=now, event=NodeHeartbeat(node=node))
            for _ in range(count)
        ]
    )


async def _flood(cluster: Cluster, node: str, credential: str, oversized: bytes) -> dict[str, int]:
    """One fake agent: an oversized batch, then full batches, four in flight, for FLOOD_S."""
    url = cluster.url.replace("http", "ws", 1) + "/api/agents/ws"
    headers = {"Authorization": f"Bearer {credential}"}
    seen = {"too_big": 0, "acked": 0, "refused": 0}
    async with connect(url, additional_headers=headers, max_size=None, open_timeout=30) as ws:
        await ws.send(link.encode(link.Hello(node=node, cores=1, memory_bytes=1 << 30)))
        await ws.recv()
        try:
            await ws.send(link.encode(link.EventBatch(batch=0, body=oversized)))
            await asyncio.wait_for(ws.recv(), 120)
        except ConnectionClosed as closed:
            # Refused by its size: 1009, or the connection dropped while the frame was still
            # being sent (no close frame got through). A host that declared the fake offline
            # closes with 1001: not a refusal.
            seen["too_big"] += closed.rcvd is None or closed.rcvd.code == 1009
    seen["closed"] = 0
    with contextlib.suppress(ConnectionClosed):
        await _full_batches(url, headers, node, seen)
    return seen


async def _full_batches(url: str, headers: dict[str, str], node: str, seen: dict[str, int]) -> None:
    try:
        await _send_full_batches(url, headers, node, seen)
    except ConnectionClosed:
        seen["closed"] += 1  # the host closed this fake's link (it declared it offline)
        raise


async def _send_full_batches(
    url: str, headers: dict[str, str], node: str, seen: dict[str, int]
) -> None:
    async with connect(url, additional_headers=headers, max_size=None, open_timeout=30) as ws:
        await ws.send(link.encode(link.Hello(node=node, cores=1, memory_bytes=1 << 30)))
        await ws.recv()
        end = time.monotonic() + FLOOD_S
        number = in_flight = 0
        while time.monotonic() < end or in_flight:
            while in_flight < 4 and time.monotonic() < end:
                number += 1
                in_flight += 1
                body = _heartbeats(node, BATCH_EVENTS)
                await ws.send(link.encode(link.EventBatch(batch=number, body=body)))
            answer = link.decode_host_message(await asyncio.wait_for(ws.recv(), 120))
            if isinstance(answer, (link.Ack, link.Nack)):
                in_flight -= 1
                seen["acked" if isinstance(answer, link.Ack) else "refused"] += 1


def test_a_flood_of_big_batches_never_takes_a_healthy_node_offline(tmp_path: Path) -> None:
    timing = {"heartbeat_interval": 0.3, "heartbeat_timeout": 3.0}
    with running_cluster(tmp_path, agents=("n1",), **timing) as cluster:
        [task] = cluster.submit("sleep", "600", cores=0, targets=["n1"])
        cluster.wait_state(task, "running")
        fakes = {f"flood-{i}": cluster.enroll(f"flood-{i}") for i in range(FAKES)}
        # One oversized body, renamed per fake (same length: the JSON stays valid)
        one = len(_heartbeats("flood-0", 1))
        template = _heartbeats("flood-0", OVERSIZED_BYTES // one)
        bodies = {name: template.replace(b'"flood-0"', f'"{name}"'.encode()) for name in fakes}
        # The health route's latency while it lasts (one thread, its own client)
        latencies: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=cluster.url, timeout=60) as client:
                while not stop.is_set():
                    started = time.monotonic()
                    client.get("/api/health")
                    latencies.append(time.monotonic() - started)
                    stop.wait(0.05)

        prober = threading.Thread(target=probe)
        prober.start()

        async def flood() -> list[dict[str, int]]:
            return list(
                await asyncio.gather(*(_flood(cluster, n, c, bodies[n]) for n, c in fakes.items()))
            )

        try:
            seen = asyncio.run(flood())
        finally:
            stop.set()
            prober.join()
        # Then n1 was never declared offline, its task never unknown or lost
        liveness = cluster.health().get("liveness") or {}
        print(f"\nflood: {seen}; health latency max {max(latencies):.2f}s; liveness: {liveness}")
        answer = cluster.http.post(
            "/api/sql",
            json={
                "sql": "SELECT kind, payload->>'$.reason' FROM events WHERE"
                " (kind = 'node.offline' AND payload->>'$.node' = 'n1')"
                " OR kind IN ('task.unreachable', 'task.lost')"
            },
        )
        assert answer.status_code == 200 and answer.json()["rows"] == [], answer.text
        assert cluster.node("n1")["online"] is True  # type: ignore[index]
        assert cluster.task(task)["state"] == "running"
        # And every oversized batch was refused by its size, the rest recorded
        assert all(s["too_big"] == 1 and s["acked"] >= 1 for s in seen), seen
        assert all(s["refused"] == s["closed"] == 0 for s in seen), seen
        recorded = cluster.http.post(
            "/api/sql",
            json={"sql": "SELECT count(*) FROM events WHERE source LIKE 'flood-%'"},
        ).json()["rows"][0][0]
        # Nothing of the oversized batches: only the full ones acknowledged (and the hellos)
        acked = sum(s["acked"] for s in seen)
        assert acked * BATCH_EVENTS <= recorded <= acked * BATCH_EVENTS + 2 * FAKES
        # And the monitor ran on time, within a heartbeat timeout even at the worst
        assert liveness and liveness["late_max_s"] < timing["heartbeat_timeout"], liveness
        cluster.http.post(f"/api/tasks/{task}/kill")
        assert cluster.wait_state(task)["state"] == "killed"
