"""The agent link's attacks of issue 14 (items 2, 3 host side, 4), tried for real.

A real host and a real agent ``n1`` on loopback; the attacker is an enrolled fake agent (or
holds n1's own credential) and speaks the link by hand: msgpack frames over a websocket.
Each attack is checked for what the host answers, for what it did *not* record, and for
what it did not do to the real node (no task lost, killed or reconnected because of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support.cluster import Cluster, running_cluster
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from events import link
from events.envelope import NewEvent, new_event
from events.types import GpuInfo, NodeHeartbeat, TaskFinished, TaskPaused

pytestmark = [pytest.mark.timeout(240), pytest.mark.xdist_group("link-hardening")]

HAKURIVER = [sys.executable, "-m", "cli.hakuriver"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    timing = {"heartbeat_interval": 0.5, "heartbeat_timeout": 5.0}
    with running_cluster(tmp_path_factory.mktemp("link"), agents=("n1",), **timing) as cluster:
        yield cluster


@contextlib.asynccontextmanager
async def agent_link(cluster: Cluster, credential: str) -> AsyncIterator[ClientConnection]:
    url = cluster.url.replace("http", "ws", 1) + "/api/agents/ws"
    headers = {"Authorization": f"Bearer {credential}"}
    async with connect(url, additional_headers=headers, open_timeout=15, max_size=None) as ws:
        yield ws


async def say_hello(ws: ClientConnection, node: str, **fields: Any) -> link.HostMessage:
    """Send a hello; the host's first answer (a ``Welcome``), or ``ConnectionClosed``."""
    fields = {"cores": 2, "memory_bytes": 1 << 30, **fields}
    hello = link.Hello(node=node, **fields)
    await ws.send(link.encode(hello))
    return link.decode_host_message(await asyncio.wait_for(ws.recv(), 15))


def batch(number: int, events: list[NewEvent]) -> bytes:
    return link.encode(link.EventBatch(batch=number, body=msgspec.json.encode(events)))


async def answer(ws: ClientConnection) -> link.HostMessage:
    """The host's next answer that is not a command."""
    while True:
        message = link.decode_host_message(await asyncio.wait_for(ws.recv(), 30))
        if isinstance(message, (link.Ack, link.Nack)):
            return message


def beat(node: str, **fields: Any) -> NewEvent:
    envelope = {k: fields.pop(k) for k in ("schema_version", "occurred_at_us") if k in fields}
    event = NodeHeartbeat(node=node, **fields)
    return msgspec.structs.replace(new_event(event, source=node), **envelope)


def sql(cluster: Cluster, statement: str) -> list[list[Any]]:
    done = cluster.http.post("/api/sql", json={"sql": statement})
    assert done.status_code == 200, done.text
    rows: list[list[Any]] = done.json()["rows"]
    return rows


def count(cluster: Cluster, where: str) -> int:
    return int(sql(cluster, f"SELECT count(*) FROM events WHERE {where}")[0][0])


def host_log(cluster: Cluster) -> str:
    return "".join(p.read_text(errors="replace") for p in cluster.root.glob("host*.log"))


def running_task(cluster: Cluster, node: str = "n1") -> str:
    [task] = cluster.submit("sleep", "600", cores=0, targets=[node])
    cluster.wait_state(task, "running")
    return task


# -- item 2: one agent frame can poison the log ---------------------------------------------


async def _poison(cluster: Cluster, credential: str, node: str) -> list[link.HostMessage]:
    """What poisoned the log before: schema versions 0 and 70000 (heartbeat frames and
    batches), a NaN heartbeat, a clock past the year 9999. The answers to the batches."""
    answers = []
    async with agent_link(cluster, credential) as ws:
        assert isinstance(await say_hello(ws, node), link.Welcome)
        for version in (0, 70000):
            await ws.send(link.encode(link.Heartbeat(event=beat(node, schema_version=version))))
        await ws.send(link.encode(link.Heartbeat(event=beat(node, cpu_percent=float("nan")))))
        for number, event in enumerate(
            (
                beat(node, schema_version=70000),
                beat(node, schema_version=0),
                beat(node, occurred_at_us=2**63 - 1),
                beat(node, cpu_percent=1.0),  # the link still works after all that
            ),
            start=1,
        ):
            await ws.send(batch(number, [event]))
            answers.append(await answer(ws))
    return answers


def test_poisoned_frames_are_set_right_or_refused_and_the_host_restarts_after_kill_9(
    tmp_path: Path,
) -> None:
    timing = {"heartbeat_interval": 0.3, "heartbeat_timeout": 5.0}
    with running_cluster(tmp_path, agents=("n1",), **timing) as cluster:
        fakes = {f"poison-{i}": cluster.enroll(f"poison-{i}") for i in range(4)}
        # Given n1 running tasks (its batches share group commits with the attackers')
        tasks = [cluster.submit("true", cores=0, targets=["n1"])[0] for _ in range(12)]

        async def attack() -> list[list[link.HostMessage]]:
            return list(
                await asyncio.gather(*(_poison(cluster, cred, n) for n, cred in fakes.items()))
            )

        # When four fake agents send every poisoned frame at once
        for answers in asyncio.run(attack()):
            acked_70000, acked_0, too_late, fine = answers
            # Then the host sets the schema version itself: both are recorded, as version 1
            assert isinstance(acked_70000, link.Ack) and isinstance(acked_0, link.Ack)
            # A time the log cannot hold is refused, naming the field; the link goes on
            assert isinstance(too_late, link.Nack), too_late
            assert "occurred_at_us" in too_late.reason
            assert isinstance(fine, link.Ack)
        # And n1's tasks all completed: its commits never failed with the attackers'
        for task in tasks:
            assert cluster.wait_state(task)["state"] == "completed"
        assert sql(cluster, "SELECT DISTINCT schema_version FROM events") == [[1]]
        assert count(cluster, "kind IN ('task.lost', 'task.unreachable', 'node.offline')") == 0
        nan = "kind = 'node.heartbeat' AND payload LIKE '%\"cpu_percent\":null%'"
        assert count(cluster, nan) == 0
        seq = int(sql(cluster, "SELECT max(seq) FROM events")[0][0])
        # And after a kill -9 the host starts again, and reads its history
        cluster.stop_host(signal.SIGKILL)
        cluster.start_host()
        state = cluster.http.get("/api/state", params={"at": str(seq)})
        assert state.status_code == 200, state.text
        audit = cluster.http.get("/api/audit").json()
        assert audit["ok"] is True, audit
        summary = cluster.health()
        assert summary["undecodable_events"] == 0
        cluster.wait_node("n1", online=True)
        log = host_log(cluster)
        assert "agent link to" not in log and "Traceback" not in log, log[-3000:]


# -- item 4: forged and misattributed reports -------------------------------------------------


def test_a_report_without_its_node_or_on_another_nodes_task_is_refused(lab: Cluster) -> None:
    victim = running_task(lab)
    credential = lab.enroll("forger")

    async def forge() -> tuple[str, list[link.HostMessage]]:
        async with agent_link(lab, credential) as ws:
            assert isinstance(await say_hello(ws, "forger"), link.Welcome)
            # A task of its own, placed on it (the host sends the run command)
            [own] = lab.submit("true", cores=0, targets=["forger"])
            while not isinstance(
                run := link.decode_host_message(await asyncio.wait_for(ws.recv(), 15)), link.Run
            ):
                pass
            assert run.task_id == own
            out = []
            for number, event in enumerate(
                (
                    TaskFinished(task_id=own, state="completed", exit_code=0),  # no node
                    TaskFinished(task_id=victim, state="completed", exit_code=0),  # no node
                    TaskPaused(task_id=victim),  # no node field at all
                ),
                start=1,
            ):
                await ws.send(batch(number, [new_event(event, source="forger")]))
                out.append(await answer(ws))
            return own, out

    own, (own_without_node, no_node, paused) = asyncio.run(forge())
    for refused in (own_without_node, no_node):
        assert isinstance(refused, link.Nack), refused
        assert "node is missing" in refused.reason, refused
    assert isinstance(paused, link.Nack) and "not placed on node forger" in paused.reason
    assert lab.task(victim)["state"] == "running"
    for task in (own, victim):
        assert (
            count(lab, f"stream = 'task:{task}' AND kind IN ('task.finished', 'task.paused')") == 0
        )
    lab.http.post(f"/api/tasks/{own}/kill")


def test_a_machine_that_cannot_be_is_refused_naming_the_field(lab: Cluster) -> None:
    credential = lab.enroll("huge")

    async def claim(**fields: Any) -> str:
        async with agent_link(lab, credential) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await say_hello(ws, "huge", **fields)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        return closed.value.rcvd.reason

    assert "$.cores" in asyncio.run(claim(cores=1_000_000))
    assert "$.memory_bytes" in asyncio.run(claim(memory_bytes=1 << 50))
    gpus = (GpuInfo(id=0, name="A"), GpuInfo(id=0, name="B"))
    assert "gpus: ids" in asyncio.run(claim(gpus=gpus))
    assert count(lab, "stream = 'node:huge' AND kind <> 'node.enrolled'") == 0
    assert lab.node("huge") is None


# -- items 3 (host side) and 4: a second hello for a name with a live link ------------------------


def test_a_hello_for_a_live_nodes_name_is_refused_and_nothing_is_killed(lab: Cluster) -> None:
    task = running_task(lab)
    # The real node's own credential (a second runner started with the same state dir)
    credential = (lab.root / "runner-n1" / "agent.token").read_text().strip()
    connects = host_log(lab).count("agent n1 connected")

    async def impersonate() -> list[tuple[int, str]]:
        async def one() -> tuple[int, str]:
            async with agent_link(lab, credential) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await say_hello(ws, "n1")  # claiming it runs nothing
            assert closed.value.rcvd is not None
            return closed.value.rcvd.code, closed.value.rcvd.reason

        return list(await asyncio.gather(one(), one(), one()))

    for code, reason in asyncio.run(impersonate()):
        assert code == 1008 and "connected already" in reason, reason
    # Nothing recorded, nothing sent: the task runs on, n1's link was never replaced
    assert lab.task(task)["state"] == "running"
    touched = "kind IN ('task.lost', 'task.kill_requested', 'task.finished', 'task.reconnected')"
    assert count(lab, f"stream = 'task:{task}' AND {touched}") == 0
    assert "n1" in lab.health()["agents_connected"]
    assert host_log(lab).count("agent n1 connected") == connects
    lab.http.post(f"/api/tasks/{task}/kill")
    assert lab.wait_state(task)["state"] == "killed"


def test_two_runners_racing_for_one_name_get_one_link(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=("n1",), heartbeat_timeout=5.0) as cluster:
        task = running_task(cluster)
        credential = (cluster.root / "runner-n1" / "agent.token").read_text().strip()
        # Given the real runner gone (its task still runs) and two started under its name
        cluster.stop_agent("n1", signal.SIGKILL)
        running = (link.AgentTask(task_id=task),)

        async def race() -> list[str]:
            refused = asyncio.Event()

            async def one() -> str:
                async with agent_link(cluster, credential) as ws:
                    try:
                        first = await say_hello(ws, "n1", running=running)
                    except ConnectionClosed as closed:
                        assert closed.rcvd is not None and closed.rcvd.code == 1008
                        refused.set()
                        return closed.rcvd.reason
                    assert isinstance(first, link.Welcome)
                    # Hold the link until the other runner's hello is decided
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(refused.wait(), 15)
                    return "welcome"

            return list(await asyncio.gather(one(), one()))

        outcomes = asyncio.run(race())
        # Then one got the link, the other was refused; the task was never given up
        assert sorted(outcomes)[1] == "welcome", outcomes
        assert "connected already" in sorted(outcomes)[0], outcomes
        assert count(cluster, f"stream = 'task:{task}' AND kind = 'task.lost'") == 0


# -- hakuriver node forget ------------------------------------------------------------------------


def _cli(cluster: Cluster, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HAKURIVER, *words], env=cluster.env(), capture_output=True, text=True, timeout=60
    )


def test_node_forget_removes_an_offline_node_and_refuses_an_online_one(lab: Cluster) -> None:
    lab.start_agent("n2")
    task = running_task(lab, "n2")
    refused = _cli(lab, "node", "forget", "n2")
    assert refused.returncode == 2 and "online" in refused.stderr, refused.stderr
    assert lab.node("n2") is not None
    # Given the machine gone for good (its runner killed; the host declares it offline)
    lab.stop_agent("n2", signal.SIGKILL)
    lab.wait_node("n2", online=False)
    assert lab.task(task)["state"] == "unknown"
    # When an admin forgets it
    done = _cli(lab, "node", "forget", "n2", "--reason", "retired", "--json")
    assert done.returncode == 0, done.stderr
    assert msgspec.json.decode(done.stdout) == {
        "node": "n2",
        "forgotten": True,
        "tasks_lost": [task],
    }
    # Then it is gone, its task lost, and the log says who did it
    assert lab.node("n2") is None
    assert "n2" not in [n["name"] for n in lab.http.get("/api/nodes").json()["nodes"]]
    assert lab.task(task)["state"] == "lost"
    rows = sql(
        lab,
        "SELECT kind, payload->>'$.actor.user' FROM events"
        " WHERE kind IN ('node.forgotten', 'task.lost') AND payload->>'$.node' = 'n2' ORDER BY seq",
    )
    assert rows == [["task.lost", "admin"], ["node.forgotten", "admin"]]
    assert _cli(lab, "node", "forget", "n2").returncode == 2  # unknown now: 404
    assert lab.http.get("/api/audit").json()["ok"] is True
    lab.kill_task_processes()
