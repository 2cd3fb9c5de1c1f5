"""``hakuriver vps shell`` through the real host: the test plays the node's agent over a real
agent websocket (as tests/e2e/test_agent_link.py does), answering ``ShellOpen`` with
``ShellOutput`` and ``ShellExit``; the user's side is the CLI's own ``run_shell`` or a raw
websocket. The real docker + agent run comes with the runner's VPS executor.

Bytes flow both ways and the shell's exit code reaches the client; the session is in the
log with its byte counts; another user is refused; a client that stops reading has its
session ended without stalling the other shells and reports of its node; the agent's link
dropping ends its shells with an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
from collections.abc import AsyncIterator
from io import BytesIO
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support.cluster import Cluster, running_cluster
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from cli.hakuriver.client import ApiError
from cli.hakuriver.shell import run_shell
from control_plane.commands import OpenSshSession
from control_plane.vps_shells import MAX_BUFFERED, ShellSession, VpsShells
from events import link
from events.envelope import new_event
from events.types import NodeHeartbeat, TaskFinished, TaskStarted

pytestmark = pytest.mark.timeout(90)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMVgsrjvUWjrmylU9ejqs+tPeSN7XdrZcMyuKLEQSbyv alice"
NODE = "vpsnode"


class FakeAgent:
    """The node's agent, by hand: starts what it is told to run, and serves shells that
    echo their input (``exit N`` ends one with code N, ``flood`` writes 24 MiB)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.opened: dict[str, link.ShellOpen] = {}
        self.typed: dict[str, bytearray] = {}
        self.resized: list[link.ShellResize] = []
        self.hung_up: list[str] = []
        self.acks: list[link.Ack] = []
        self.started: list[str] = []
        self._batch = 0
        self._lock = asyncio.Lock()
        self.changed = asyncio.Event()

    async def send(self, message: link.Message) -> None:
        async with self._lock:
            await self.ws.send(link.encode(message))

    async def report(self, *events: Any) -> None:
        self._batch += 1
        body = msgspec.json.encode([new_event(e, source=NODE) for e in events])
        await self.send(link.EventBatch(batch=self._batch, body=body))

    async def serve(self) -> None:
        with contextlib.suppress(Exception):
            async for frame in self.ws:
                assert isinstance(frame, bytes)
                await self.take(link.decode_host_message(frame))
                self.changed.set()

    async def take(self, message: link.HostMessage) -> None:
        match message:
            case link.Run():
                self.started.append(message.task_id)
                await self.report(TaskStarted(task_id=message.task_id, node=NODE, pid=1))
            case link.Ack():
                self.acks.append(message)
            case link.ShellOpen():
                self.opened[message.session] = message
                self.typed[message.session] = bytearray()
                await self.send(link.ShellOutput(session=message.session, data=b"welcome\r\n"))
            case link.ShellInput():
                typed = self.typed[message.session]
                typed += message.data
                if b"flood" in message.data:
                    asyncio.get_running_loop().create_task(self.flood(message.session))
                elif b"exit " in typed:
                    code = int(bytes(typed).split(b"exit ", 1)[1].split()[0])
                    await self.send(link.ShellExit(session=message.session, code=code))
                else:
                    await self.send(link.ShellOutput(session=message.session, data=message.data))
            case link.ShellResize():
                self.resized.append(message)
            case link.ShellClose():
                self.hung_up.append(message.session)
                await self.send(link.ShellExit(session=message.session, code=None))

    async def flood(self, session: str) -> None:
        chunk = b"x" * link.MAX_SHELL_CHUNK
        for _ in range((24 << 20) // len(chunk)):
            if session in self.hung_up:
                return
            await self.send(link.ShellOutput(session=session, data=chunk))


@contextlib.asynccontextmanager
async def agent_of(cluster: Cluster, credential: str) -> AsyncIterator[FakeAgent]:
    url = cluster.url.replace("http", "ws") + "/api/agents/ws"
    async with connect(
        url, additional_headers={"Authorization": f"Bearer {credential}"}, max_size=None
    ) as ws:
        await ws.send(
            link.encode(
                link.Hello(
                    node=NODE,
                    address="127.0.0.1",
                    cores=4,
                    memory_bytes=1 << 33,
                    executors=("process", "docker"),
                )
            )
        )
        assert isinstance(link.decode_host_message(await ws.recv()), link.Welcome)
        agent = FakeAgent(ws)
        serving = asyncio.create_task(agent.serve())
        try:
            yield agent
        finally:
            serving.cancel()
            with contextlib.suppress(BaseException):
                await serving


async def until(agent: FakeAgent, check: Any, what: str, deadline_s: float = 15) -> None:
    """Wait until ``check()`` holds, woken by each message the agent handles."""
    async with asyncio.timeout(deadline_s):
        while not check():
            agent.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):  # also re-check what the host changed
                    await agent.changed.wait()
    assert check(), what


def shell_url(cluster: Cluster, task: str) -> str:
    return cluster.url.replace("http", "ws") + f"/api/tasks/{task}/shell"


def user_socket(
    cluster: Cluster, task: str, token: str, *, small: bool = False, query: str = ""
) -> Any:
    """A user's shell websocket; ``small``: one that buffers little (a client that stops
    reading fills it at once)."""
    extra: dict[str, Any] = {}
    if small:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", cluster.port))
        extra = {"sock": sock, "max_queue": 1}
    return connect(
        shell_url(cluster, task) + query,
        additional_headers={"Authorization": f"Bearer {token}"},
        **extra,
    )


async def received(ws: ClientConnection, wanted: bytes, deadline_s: float = 10) -> bytes:
    """Binary frames until ``wanted`` has come."""
    got = b""
    async with asyncio.timeout(deadline_s):
        while wanted not in got:
            frame = await ws.recv()
            if isinstance(frame, bytes):
                got += frame
    return got


async def control(ws: ClientConnection, deadline_s: float = 10) -> dict[str, Any]:
    """The next text (control) frame, skipping terminal bytes."""
    async with asyncio.timeout(deadline_s):
        while True:
            frame = await ws.recv()
            if isinstance(frame, str):
                doc: dict[str, Any] = json.loads(frame)
                return doc


def closed_sessions(cluster: Cluster) -> list[dict[str, Any]]:
    r = cluster.http.get("/api/events", params={"kind": "ssh.session_closed"})
    assert r.status_code == 200, r.text
    return [e["payload"] for e in r.json()["events"]]


def opened_sessions(cluster: Cluster) -> list[dict[str, Any]]:
    r = cluster.http.get("/api/events", params={"kind": "ssh.session_opened"})
    assert r.status_code == 200, r.text
    return [e["payload"] for e in r.json()["events"]]


async def a_running_vps(cluster: Cluster, agent: FakeAgent, alice: str) -> str:
    with cluster.client_as(alice) as http:
        r = http.post(
            "/api/tasks",
            json={"task_type": "vps", "container": "env", "ssh_public_key": KEY, "targets": [NODE]},
        )
    assert r.status_code == 201, r.text
    (task_id,) = r.json()["task_ids"]
    await until(agent, lambda: task_id in agent.started, "the VPS was run")
    await until(agent, lambda: cluster.task(task_id)["state"] == "running", "the VPS runs")
    return task_id


def test_a_shell_relays_both_ways_and_its_exit_and_bytes_are_recorded(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=()) as cluster:
        alice = cluster.add_user("alice")
        bob = cluster.add_user("bob")

        async def scenario() -> tuple[int, bytes, FakeAgent, str, dict[str, Any]]:
            async with agent_of(cluster, cluster.enroll(NODE)) as agent:
                task_id = await a_running_vps(cluster, agent, alice)
                # Another user: refused as if the task did not exist, nothing recorded
                async with user_socket(cluster, task_id, bob) as ws:
                    refused = await control(ws)
                # Alice, with the CLI's own client: stdin a pipe, stdout a buffer
                read_end, write_end = os.pipe()
                out = BytesIO()
                result: dict[str, Any] = {}

                def client() -> None:
                    try:
                        result["code"] = run_shell(
                            shell_url(cluster, task_id), token=alice, stdin_fd=read_end, stdout=out
                        )
                    except ApiError as exc:
                        result["error"] = exc

                thread = threading.Thread(target=client)
                thread.start()
                await until(agent, lambda: len(agent.opened) == 1, "the shell opened")
                session = next(iter(agent.opened))
                os.write(write_end, b"hello there\n")
                await until(agent, lambda: b"hello" in agent.typed[session], "keys arrived")
                os.write(write_end, b"exit 7\n")
                await asyncio.to_thread(thread.join, 20)
                os.close(write_end)
                os.close(read_end)
                assert "error" not in result, result
                return result["code"], out.getvalue(), agent, task_id, refused

        code, screen, agent, task_id, refused = asyncio.run(scenario())
        # Then the shell's exit code is the client's, and its output came through
        assert code == 7
        assert screen.startswith(b"welcome\r\n") and b"hello there\n" in screen
        (opened,) = agent.opened.values()
        assert opened.task_id == task_id and opened.term
        assert refused["type"] == "error" and refused["status"] == 404
        assert refused["field"] == "task"
        # And the session is in the log: opened by alice via the shell, closed with the counts
        cluster.wait(lambda: closed_sessions(cluster), 10, "the session's end recorded")
        (start,) = opened_sessions(cluster)
        (end,) = closed_sessions(cluster)
        assert start["user"] == "alice" and start["via"] == "shell" and start["node"] == NODE
        assert end["session_id"] == start["session_id"] == opened.session
        assert end["bytes_in"] == len(b"hello there\nexit 7\n")
        assert end["bytes_out"] == len(b"welcome\r\nhello there\n")
        assert end["reason"] == "vps closed" and end["via"] == "shell" and end["user"] == "alice"
        assert end["duration_s"] > 0


def test_a_client_that_stops_reading_is_cut_off_and_the_link_goes_on(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=()) as cluster:
        alice = cluster.add_user("alice")

        async def scenario() -> tuple[str, bytes]:
            async with agent_of(cluster, cluster.enroll(NODE)) as agent:
                task_id = await a_running_vps(cluster, agent, alice)
                async with (
                    user_socket(cluster, task_id, alice, small=True) as stalled,
                    user_socket(cluster, task_id, alice, query="?rows=40&cols=120") as other,
                ):
                    await until(agent, lambda: len(agent.opened) == 2, "both shells opened")
                    await received(other, b"welcome")
                    # Given one client that reads nothing while its shell floods it
                    await stalled.send(b"flood\n")
                    first = [s for s, o in agent.opened.items() if o.rows == 24]
                    await until(agent, lambda: first[0] in agent.hung_up, "cut off", 30)
                    # Then the other shell, and the node's reports, still get through
                    await other.send(b"still here\n")
                    echoed = await received(other, b"still here")
                    await other.send(json.dumps({"type": "resize", "rows": 50, "cols": 160}))
                    await until(agent, lambda: agent.resized, "the resize reached the agent")
                    beat = NodeHeartbeat(node=NODE, cpu_percent=1.0)
                    await agent.report(beat)
                    await until(agent, lambda: agent.acks, "the report was acknowledged")
                    resized = agent.resized[0]
                    assert (resized.rows, resized.cols) == (50, 160)
                    return first[0], echoed

        first, echoed = asyncio.run(scenario())
        assert b"still here" in echoed
        cluster.wait(lambda: len(closed_sessions(cluster)) == 2, 15, "both sessions recorded")
        ends = {e["session_id"]: e for e in closed_sessions(cluster)}
        cut = ends[first]
        assert "stopped reading" in cut["reason"]
        assert cut["bytes_out"] < 24 << 20  # what the client was sent before it was cut off


def test_the_agent_link_dropping_ends_its_shells_with_an_error(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=()) as cluster:
        alice = cluster.add_user("alice")

        async def scenario() -> dict[str, Any]:
            agent_cm = agent_of(cluster, cluster.enroll(NODE))
            agent = await agent_cm.__aenter__()
            task_id = await a_running_vps(cluster, agent, alice)
            async with user_socket(cluster, task_id, alice) as ws:
                await received(ws, b"welcome")
                # When the node's link drops
                await agent.ws.close()
                await agent_cm.__aexit__(None, None, None)
                # Then the client is told why, and the shell ends
                return await control(ws)

        error = asyncio.run(scenario())
        assert error["type"] == "error" and error["status"] == 503
        assert "link dropped" in error["message"]
        cluster.wait(lambda: closed_sessions(cluster), 10, "the session's end recorded")
        (end,) = closed_sessions(cluster)
        assert "link dropped" in end["reason"]


def logged_closes(cluster: Cluster) -> list[dict[str, Any]]:
    """The ``ssh.session_closed`` payloads in the log file (the host stopped)."""
    import duckdb

    con = duckdb.connect(str(cluster.db_file), read_only=True)
    try:
        rows = con.execute(
            "SELECT payload FROM events WHERE kind = 'ssh.session_closed' ORDER BY seq"
        ).fetchall()
    finally:
        con.close()
    return [json.loads(row[0]) if isinstance(row[0], str) else row[0] for row in rows]


def test_a_host_stopped_with_a_shell_open_records_the_close(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=()) as cluster:
        alice = cluster.add_user("alice")

        async def scenario() -> tuple[dict[str, Any], str]:
            async with agent_of(cluster, cluster.enroll(NODE)) as agent:
                task_id = await a_running_vps(cluster, agent, alice)
                async with user_socket(cluster, task_id, alice) as ws:
                    await received(ws, b"welcome")
                    await ws.send(b"typed\n")
                    await received(ws, b"typed")
                    # When the host is asked to stop (SIGTERM) with the shell open
                    stopping = asyncio.create_task(asyncio.to_thread(cluster.stop_host))
                    # Then its client is told why
                    try:
                        told = await control(ws, 20)
                    except ConnectionClosed as closed:
                        told = {"closed": str(closed)}
                    await stopping
                    (session,) = agent.opened
                    return told, session

        told, session = asyncio.run(scenario())
        # And the close is in the log, written before the log closed
        (closed,) = logged_closes(cluster)
        assert closed["session_id"] == session and closed["via"] == "shell"
        assert closed["reason"] == "host stopping" and closed["bytes_in"] == len(b"typed\n")
        assert told.get("type") == "error" and told["status"] == 503, told
        assert "host stopping" in told["message"]


def test_a_shell_ends_when_its_token_user_role_or_task_says_so(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=()) as cluster:
        alice = cluster.add_user("alice")
        helper = cluster.add_user("helper", role="admin")
        made = cluster.http.post("/api/tokens", json={"user": "alice"})
        assert made.status_code == 201, made.text
        alice_two, alice_two_id = made.json()["token"], made.json()["id"]
        admin = cluster.http.headers["authorization"].split(" ", 1)[1]

        async def scenario() -> dict[str, dict[str, Any]]:
            async with agent_of(cluster, cluster.enroll(NODE)) as agent:
                task_id = await a_running_vps(cluster, agent, alice)
                async with (
                    user_socket(cluster, task_id, alice_two) as revoked,
                    user_socket(cluster, task_id, helper) as demoted,
                    user_socket(cluster, task_id, alice) as disabled,
                    user_socket(cluster, task_id, admin) as admins,
                ):
                    for ws in (revoked, demoted, disabled, admins):
                        await received(ws, b"welcome")
                    told = {}
                    # When the token a shell was opened with is revoked, that shell ends
                    answer = cluster.http.post(f"/api/tokens/{alice_two_id}/revoke")
                    assert answer.status_code == 200, answer.text
                    told["revoked"] = await control(revoked)
                    await disabled.send(b"still alice\n")
                    await received(disabled, b"still alice")
                    # When an admin in another's VPS is no longer one, theirs ends
                    answer = cluster.http.post("/api/users/helper/role", json={"role": "user"})
                    assert answer.status_code == 200, answer.text
                    told["demoted"] = await control(demoted)
                    # When the user is disabled, their shell ends
                    answer = cluster.http.post("/api/users/alice/disable")
                    assert answer.status_code == 200, answer.text
                    told["disabled"] = await control(disabled)
                    await admins.send(b"still admin\n")
                    await received(admins, b"still admin")
                    # When the task ends, every shell in it ends
                    await agent.report(TaskFinished(task_id=task_id, state="killed", node=NODE))
                    told["task"] = await control(admins)
                    return told

        told = asyncio.run(scenario())
        reasons = {
            "revoked": "token revoked",
            "demoted": "no longer an admin",
            "disabled": "user disabled",
            "task": "task ended",
        }
        for case, reason in reasons.items():
            assert told[case]["type"] == "error" and told[case]["status"] == 503, told[case]
            assert told[case]["message"] == reason, told[case]
        cluster.wait(lambda: len(closed_sessions(cluster)) == 4, 15, "the four closes recorded")
        assert sorted(e["reason"] for e in closed_sessions(cluster)) == sorted(reasons.values())


def test_bad_terminal_sizes_are_refused_naming_the_field(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=()) as cluster:
        alice = cluster.add_user("alice")
        cases = [("?rows=0", "rows"), ("?cols=5000", "cols"), ("?term=x%20y", "term")]
        cases += [("?rows=abc", "rows")]

        async def scenario(query: str) -> dict[str, Any]:
            async with user_socket(cluster, "1", alice, query=query) as ws:
                return await control(ws)

        for query, field in cases:
            error = asyncio.run(scenario(query))
            assert (error["status"], error["field"]) == (400, field), query


# -- the registry, alone ---------------------------------------------------------------------


def _session(node: str, session_id: str, via: object = None) -> ShellSession:
    from support.decisions import principal

    command = OpenSshSession(task="1", actor=principal("alice"), session_id=session_id)
    return ShellSession(command, "t1", node, via)


def test_an_agent_cannot_write_into_another_nodes_shell() -> None:
    async def scenario() -> ShellSession:
        shells = VpsShells()
        session = _session("n1", "s1")
        shells.register(session)
        shells.deliver("n2", link.ShellOutput(session="s1", data=b"forged"))
        shells.deliver("n2", link.ShellExit(session="s1", code=0))
        return session

    session = asyncio.run(scenario())
    assert not session.exited and session._queued == 0


def test_more_shells_on_a_node_than_it_may_serve_are_refused() -> None:
    from control_plane.errors import TooMany

    async def scenario() -> None:
        shells = VpsShells(per_node=2)
        shells.register(_session("n1", "a"))
        shells.register(_session("n1", "b"))
        shells.register(_session("n2", "c"))  # another node's count is its own
        with pytest.raises(TooMany) as refused:
            shells.register(_session("n1", "d"))
        assert refused.value.field == "task" and refused.value.status == 429

    asyncio.run(scenario())


def test_output_past_the_buffer_cuts_the_session_and_only_its_link_ends_it() -> None:
    async def scenario() -> tuple[ShellSession, ShellSession, ShellSession]:
        shells = VpsShells()
        old_link, new_link = object(), object()
        full = _session("n1", "full", new_link)
        before = _session("n1", "before", old_link)
        after = _session("n1", "after", new_link)
        for session in (full, before, after):
            shells.register(session)
        chunk = b"x" * link.MAX_SHELL_CHUNK
        for _ in range(MAX_BUFFERED // len(chunk) + 1):
            shells.deliver("n1", link.ShellOutput(session="full", data=chunk))
        shells.link_lost("n1", old_link)  # a link replaced by a newer one of the same node
        return full, before, after

    full, before, after = asyncio.run(scenario())
    assert full.cut.is_set() and "stopped reading" in full.reason
    assert before.cut.is_set() and "link dropped" in before.reason
    assert not after.cut.is_set()
