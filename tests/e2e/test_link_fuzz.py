"""A bounded fuzz of the agent link (issue 14): random and mutated frames from an enrolled
fake agent, against a real host.

Every frame is answered (an ack, a nack, or the link closed with a reason) and nothing else:
no "agent link ... failed" traceback in the host's log, the host healthy, its log still
verifying and, after a ``kill -9``, the host starts again and decodes every event it holds.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.cluster import Cluster, running_cluster
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from events import link
from events.envelope import new_event
from events.types import NodeHeartbeat

pytestmark = [pytest.mark.timeout(600), pytest.mark.xdist_group("link-fuzz")]

NODE = "fuzz"

# Values that have broken hosts: huge and negative integers, NaN and infinities, odd text.
ints = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, -1, 65535, 65536, 70000, 2**31, 2**63 - 1, 2**64 - 1]),
)
floats = st.floats(allow_nan=True, allow_infinity=True)
texts = st.one_of(st.text(max_size=40), st.sampled_from(["", NODE, "n1", "host", "\x00", "é" * 3]))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts, st.binary(max_size=20))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)


def _event(kind_fields: dict[str, Any]) -> dict[str, Any]:
    """A NewEvent as a dict, from a valid heartbeat."""
    base: dict[str, Any] = msgspec.to_builtins(
        new_event(NodeHeartbeat(node=NODE, cpu_percent=1.0), source=NODE)
    )
    return {**base, **kind_fields}


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid heartbeat event with some envelope or payload fields replaced."""
    event = _event({})
    for key in draw(st.lists(st.sampled_from(list(event)), max_size=3, unique=True)):
        event[key] = draw(values)
    if not isinstance(event.get("event"), dict):
        return event
    payload = dict(event["event"])
    for key in draw(
        st.lists(
            st.sampled_from(
                ["kind", "node", "cpu_percent", "temperatures", "running_task_ids", "actor"]
            ),
            max_size=3,
            unique=True,
        )
    ):
        payload[key] = draw(
            st.one_of(values, st.sampled_from(["task.finished", "task.placed", "node.registered"]))
        )
    event["event"] = payload
    return event


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One frame an agent might send after its hello: garbage, a mutated message, a
    batch of mutated events, or a message with random fields."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(st.binary(max_size=64))
    if choice == 1:
        return msgspec.msgpack.encode(draw(values))
    if choice == 2:
        message = {"type": "heartbeat", "event": draw(mutated_events())}
        return msgspec.msgpack.encode(message)
    if choice == 3:
        events = draw(st.lists(mutated_events(), min_size=1, max_size=4))
        body = msgspec.json.encode(events)
        return msgspec.msgpack.encode({"type": "events", "batch": draw(ints), "body": body})
    if choice == 4:
        body = draw(st.one_of(st.binary(max_size=40), st.builds(msgspec.json.encode, values)))
        return msgspec.msgpack.encode({"type": "events", "batch": draw(values), "body": body})
    fields = draw(st.dictionaries(texts, values, max_size=4))
    return msgspec.msgpack.encode(
        {"type": draw(st.sampled_from(["hello", "events", "heartbeat", "ack", "run"])), **fields}
    )


@st.composite
def hellos(draw: st.DrawFn) -> bytes:
    """A hello for the fake's own node with random machine fields."""
    hello: dict[str, Any] = {"type": "hello", "node": NODE, "cores": 1, "memory_bytes": 1 << 30}
    for key in draw(
        st.lists(
            st.sampled_from(["cores", "memory_bytes", "gpus", "numa", "running", "link_version"]),
            max_size=3,
            unique=True,
        )
    ):
        hello[key] = draw(values)
    return msgspec.msgpack.encode(hello)


class FakeAgent:
    """The fuzzer's link to the host: reopened (with a plain hello) whenever it is closed."""

    def __init__(self, cluster: Cluster, credential: str) -> None:
        self.url = cluster.url.replace("http", "ws", 1) + "/api/agents/ws"
        self.headers = {"Authorization": f"Bearer {credential}"}
        self.ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()
        self.probes = 0
        self.closes: list[str] = []

    def open(self, hello: bytes | None = None) -> link.HostMessage | None:
        self.close()
        self.ws = self._stack.enter_context(
            connect(self.url, additional_headers=self.headers, open_timeout=15)
        )
        self.ws.send(hello or link.encode(link.Hello(node=NODE, cores=1, memory_bytes=1 << 30)))
        try:
            return link.decode_host_message(self.ws.recv(timeout=15))
        except ConnectionClosed as closed:
            self._closed(closed)
            return None

    def close(self) -> None:
        self.ws = None
        with contextlib.suppress(Exception):
            self._stack.close()

    def _closed(self, closed: ConnectionClosed) -> None:
        self.closes.append(closed.rcvd.reason if closed.rcvd is not None else "no close frame")
        self.ws = None

    def send_then_probe(self, frame: bytes) -> None:
        """Send a frame, then a good batch, and wait for the good batch's answer (or the
        link's close): the frame has been dealt with by then."""
        if self.ws is None:
            assert isinstance(self.open(), link.Welcome)
        assert self.ws is not None
        self.probes += 1
        good = new_event(NodeHeartbeat(node=NODE), source=NODE)
        probe = link.EventBatch(batch=-self.probes, body=msgspec.json.encode([good]))
        try:
            self.ws.send(frame)
            self.ws.send(link.encode(probe))
            while True:
                message = link.decode_host_message(self.ws.recv(timeout=30))
                if isinstance(message, (link.Ack, link.Nack)) and message.batch == probe.batch:
                    assert isinstance(message, link.Ack), message
                    return
        except ConnectionClosed as closed:
            self._closed(closed)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, FakeAgent]]:
    root = tmp_path_factory.mktemp("fuzz")
    with running_cluster(root, agents=(), heartbeat_interval=1.0, heartbeat_timeout=30.0) as c:
        agent = FakeAgent(c, c.enroll(NODE))
        try:
            yield c, agent
        finally:
            agent.close()


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)


def _poison(**fields: Any) -> bytes:
    """The frames that poisoned the log before issue 14, always among the examples."""
    event = _event({k: v for k, v in fields.items() if k != "cpu_percent"})
    if "cpu_percent" in fields:
        event["event"] = {**event["event"], "cpu_percent": fields["cpu_percent"]}
    return msgspec.msgpack.encode({"type": "heartbeat", "event": event})


@FUZZ
@example(frame=_poison(schema_version=70000))
@example(frame=_poison(schema_version=0))
@example(frame=_poison(cpu_percent=float("nan")))
@example(frame=_poison(occurred_at_us=2**63 - 1))
@given(frame=frames())
def test_random_and_mutated_frames_are_answered_never_failed(
    fuzzed: tuple[Cluster, FakeAgent], frame: bytes
) -> None:
    _, agent = fuzzed
    agent.send_then_probe(frame)


@settings(FUZZ, max_examples=40)
@given(hello=hellos())
def test_random_hellos_are_welcomed_or_refused_with_a_reason(
    fuzzed: tuple[Cluster, FakeAgent], hello: bytes
) -> None:
    _, agent = fuzzed
    answer = agent.open(hello)
    assert answer is None or isinstance(answer, link.Welcome), answer
    if answer is None:
        assert agent.closes[-1], "a refused hello says why"
    agent.close()


def test_after_the_fuzz_the_host_is_healthy_and_its_log_reads_back(
    fuzzed: tuple[Cluster, FakeAgent],
) -> None:
    cluster, agent = fuzzed
    agent.close()
    log = (cluster.root / "host.log").read_text(errors="replace")
    assert "Traceback" not in log and f"agent link to {NODE} failed" not in log, log[-4000:]
    assert cluster.http.get("/api/health").status_code == 200
    assert cluster.http.get("/api/audit").json()["ok"] is True
    versions = cluster.http.post(
        "/api/sql", json={"sql": "SELECT DISTINCT schema_version FROM events"}
    ).json()["rows"]
    assert versions == [[1]]
    # The log the fuzz wrote is read back whole by a restarted host
    cluster.stop_host(signal.SIGKILL)
    cluster.start_host()
    summary = cluster.health()
    assert summary["undecodable_events"] == 0 and summary["anomalies"] == 0, summary
    # And a good agent still gets in
    started = time.monotonic()
    assert isinstance(agent.open(), link.Welcome)
    assert time.monotonic() - started < 15
    beat = new_event(NodeHeartbeat(node=NODE), source=NODE)
    agent.send_then_probe(link.encode(link.Heartbeat(event=beat)))
    assert agent.ws is not None, agent.closes[-1:]
