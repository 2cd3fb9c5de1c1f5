"""What the host checks on the agent link before any decision, and forgetting a node
(issue 14, items 2 and 4): pure tests, no server."""

from __future__ import annotations

import re

import msgspec
import pytest
from support.decisions import context, principal
from support.factories import record_in_memory

from control_plane.agents import LinkRefused, check_agent_event, check_hello
from control_plane.commands import ForgetNode
from control_plane.commands.nodes import decide_forget
from control_plane.errors import Conflict, NotFound
from events import link
from events.envelope import new_event
from events.types import (
    SCHEMA_VERSIONS,
    EnvSynced,
    GpuInfo,
    NodeForgotten,
    NodeHeartbeat,
    NodeOffline,
    NodeRegistered,
    TaskFinished,
    TaskLost,
    TaskPaused,
    TaskPlaced,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
    TaskUnreachable,
)
from projections.cluster import ClusterState

# -- reports -------------------------------------------------------------------------------


def test_an_event_that_leaves_out_its_node_is_refused() -> None:
    # A task.finished with node None used to pass as this node's (only a wrong one was
    # refused), so its placement was never compared with the link's node.
    finished = new_event(TaskFinished(task_id="t1", state="completed"), source="n1")
    with pytest.raises(LinkRefused, match=r"events\[3\] \(task\.finished\): node is missing"):
        check_agent_event("n1", 3, finished)
    named = new_event(TaskFinished(task_id="t1", state="completed", node="n1"), source="n1")
    assert check_agent_event("n1", 0, named) == named
    # Events without a node field (pause, resume) are checked against the placement by the
    # decision (decide_report), as every task event is.
    paused = new_event(TaskPaused(task_id="t1"), source="n1")
    assert check_agent_event("n1", 0, paused) == paused


@pytest.mark.parametrize("claimed", [0, 2, 70000, -1])
def test_the_host_sets_the_schema_version_of_what_an_agent_reports(claimed: int) -> None:
    beat = msgspec.structs.replace(
        new_event(NodeHeartbeat(node="n1"), source="n1"), schema_version=claimed
    )
    recorded = check_agent_event("n1", 0, beat)
    assert recorded.schema_version == SCHEMA_VERSIONS["node.heartbeat"]
    assert recorded.id == beat.id and recorded.event == beat.event


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (NodeHeartbeat(node="n2"), "names node 'n2'"),
        (EnvSynced(name="e", node="n2", timestamp=1), "names node 'n2'"),
        (TaskPlaced(task_id="t1", node="n1", cores=1), "may not report task.placed"),
    ],
)
def test_an_agent_reports_only_its_own_facts(event: object, reason: str) -> None:
    with pytest.raises(LinkRefused, match=reason):
        check_agent_event("n1", 0, new_event(event, source="n1"))  # type: ignore[arg-type]


# -- hellos ----------------------------------------------------------------------------------


def _hello(**fields: object) -> bytes:
    base: dict[str, object] = {"type": "hello", "node": "n1", "cores": 4, "memory_bytes": 1 << 30}
    return msgspec.msgpack.encode({**base, **fields})


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"cores": 1_000_000}, "$.cores"),
        ({"cores": -1}, "$.cores"),
        ({"memory_bytes": 1 << 50}, "$.memory_bytes"),
        ({"gpus": [{"id": i, "name": "A"} for i in range(65)]}, "$.gpus"),
        ({"gpus": [{"id": -1, "name": "A"}]}, "$.gpus[0].id"),
        ({"address": "x" * 1000}, "$.address"),
        ({"running": [{"task_id": ""}]}, "$.running[0].task_id"),
    ],
)
def test_a_machine_that_cannot_be_is_refused_naming_the_field(
    fields: dict[str, object], where: str
) -> None:
    with pytest.raises(msgspec.ValidationError, match=rf"at `{re.escape(where)}`"):
        link.decode_agent_message(_hello(**fields))


def test_a_real_machines_hello_is_accepted() -> None:
    hello = link.decode_agent_message(
        _hello(cores=4096, memory_bytes=64 << 40, gpus=[{"id": i, "name": "A"} for i in range(64)])
    )
    assert isinstance(hello, link.Hello)
    check_hello(hello)


def test_gpus_and_numa_nodes_have_distinct_ids() -> None:
    twice = link.Hello(
        node="n1", cores=2, memory_bytes=0, gpus=(GpuInfo(id=0, name="A"), GpuInfo(id=0, name="B"))
    )
    with pytest.raises(LinkRefused, match="gpus: ids"):
        check_hello(twice)


# -- forgetting a node -------------------------------------------------------------------------


def _cluster() -> ClusterState:
    """n1 online; n2 offline with one task unknown there; n3 offline and idle."""
    spec = TaskSpec(command="sleep", batch_id="b")
    events = [
        new_event(NodeRegistered(node=n, address=n, cores=4, memory_bytes=0), source=n)
        for n in ("n1", "n2", "n3")
    ]
    events += [
        new_event(e, source="host")
        for e in (
            TaskSubmitted(task_id="t2", spec=spec),
            TaskPlaced(task_id="t2", node="n2", cores=2),
        )
    ]
    events.append(new_event(TaskStarted(task_id="t2", node="n2"), source="n2"))
    events += [
        new_event(e, source="host")
        for e in (
            NodeOffline(node="n2"),
            TaskUnreachable(task_id="t2", node="n2", was="running"),
            NodeOffline(node="n3"),
        )
    ]
    state = ClusterState()
    state.apply_all(record_in_memory(events))
    return state


def test_forgetting_an_online_or_unknown_node_is_refused() -> None:
    state = _cluster()
    admin = principal("root", "admin")
    with pytest.raises(Conflict, match="n1 is online"):
        decide_forget(state, ForgetNode(node="n1", actor=admin), context("n1"))
    # Offline in the log, but its agent is connected again (its hello is being decided)
    with pytest.raises(Conflict, match="n3 is online"):
        decide_forget(state, ForgetNode(node="n3", actor=admin), context("n3"))
    with pytest.raises(NotFound):
        decide_forget(state, ForgetNode(node="nope", actor=admin), context())


def test_forgetting_an_offline_node_gives_up_its_tasks_and_removes_it() -> None:
    state = _cluster()
    assert state.tasks["t2"].state == "unknown" and state.nodes["n2"].allocated_cores == 2
    decision = decide_forget(
        state, ForgetNode(node="n2", actor=principal("root", "admin"), reason="retired"), context()
    )
    assert decision.events == [
        TaskLost(task_id="t2", node="n2", reason="retired"),
        NodeForgotten(node="n2", reason="retired"),
    ]
    state.apply_all(
        record_in_memory([new_event(e, source="host") for e in decision.events], start_seq=100)
    )
    assert "n2" not in state.nodes and state.tasks["t2"].state == "lost"
    assert state.anomalies == []
    # A hello from it later registers a new node, with nothing allocated
    again = NodeRegistered(node="n2", address="n2", cores=8, memory_bytes=0)
    state.apply_all(record_in_memory([new_event(again, source="n2")], start_seq=200))
    assert state.nodes["n2"].cores == 8 and state.nodes["n2"].allocated_cores == 0
