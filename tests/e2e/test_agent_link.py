"""The agent link spoken by hand: a raw websocket client against the real host.

An agent may only report facts about itself; a batch with one bad event is
refused whole (``nack``) and nothing of it is recorded; a good batch is
acknowledged with its seqs, and re-sending it records nothing new.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from support.cluster import running_cluster
from websockets.asyncio.client import connect

from events import link
from events.envelope import new_event
from events.types import NodeHeartbeat, TaskSubmitted


def _batch(number: int, events: list[object]) -> bytes:
    return link.encode(link.EventBatch(batch=number, body=msgspec.json.encode(events)))


def _link(url: str, credential: str) -> connect:
    """The agent websocket, presenting ``credential``."""
    return connect(
        url.replace("http", "ws") + "/api/agents/ws",
        additional_headers={"Authorization": f"Bearer {credential}"},
    )


async def _talk(
    url: str, credential: str
) -> tuple[link.HostMessage, link.HostMessage, link.HostMessage]:
    async with _link(url, credential) as ws:
        await ws.send(link.encode(link.Hello(node="fake", cores=2, memory_bytes=1 << 30)))
        welcome = link.decode_host_message(await ws.recv())
        assert isinstance(welcome, link.Welcome)
        good = new_event(NodeHeartbeat(node="fake", cpu_percent=1.0), source="fake")
        forged = new_event(NodeHeartbeat(node="other"), source="fake")
        await ws.send(_batch(1, [good, forged]))
        refused = link.decode_host_message(await ws.recv())
        await ws.send(_batch(2, [good]))
        accepted = link.decode_host_message(await ws.recv())
        await ws.send(_batch(3, [good]))  # a re-send after a lost ack
        again = link.decode_host_message(await ws.recv())
        return refused, accepted, again


def test_a_bad_batch_is_refused_whole_and_a_resend_is_idempotent(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=()) as cluster:
        refused, accepted, again = asyncio.run(_talk(cluster.url, cluster.enroll("fake")))
        assert isinstance(refused, link.Nack) and refused.batch == 1
        assert "events[1]" in refused.reason and "other" in refused.reason
        assert isinstance(accepted, link.Ack) and accepted.batch == 2
        assert isinstance(again, link.Ack) and again.seqs == accepted.seqs
        cluster.stop_host()
    heartbeats = [e for e in cluster.events("node.heartbeat")]
    assert len(heartbeats) == 1 and heartbeats[0][0] == accepted.seqs[0]


async def _forge_submit(url: str, credential: str) -> link.HostMessage:
    async with _link(url, credential) as ws:
        await ws.send(link.encode(link.Hello(node="fake", cores=2, memory_bytes=1 << 30)))
        await ws.recv()
        from events.types import TaskSpec

        forged = new_event(
            TaskSubmitted(task_id="t", spec=TaskSpec(command="x", batch_id="b")), source="fake"
        )
        await ws.send(_batch(1, [forged]))
        return link.decode_host_message(await ws.recv())


def test_an_agent_may_not_record_decisions(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=()) as cluster:
        answer = asyncio.run(_forge_submit(cluster.url, cluster.enroll("fake")))
        assert isinstance(answer, link.Nack) and "task.submitted" in answer.reason
        assert cluster.http.get("/api/tasks").json()["tasks"] == []
