"""Submit and kill decisions: validation against the cluster, events out."""

from __future__ import annotations

import itertools

import pytest
from support.decisions import context, principal
from support.factories import record_in_memory

from control_plane.commands import KillTask
from control_plane.commands.submit import submitted_events
from control_plane.commands.tasks import decide_kill
from control_plane.errors import InvalidRequest, NotFound
from control_plane.requests import (
    SubmitTask,
)
from events.envelope import new_event
from events.types import GpuInfo, NodeRegistered, NumaNode, TaskFinished, TaskKillRequested
from projections.cluster import ClusterState

_ids = (f"id-{i}" for i in itertools.count())


def cluster() -> ClusterState:
    state = ClusterState()
    nodes = [
        NodeRegistered(
            node="node1",
            address="a",
            cores=8,
            memory_bytes=16_000_000_000,
            numa=(NumaNode(id=0, cpus=(0, 1, 2, 3)), NumaNode(id=1, cpus=(4, 5, 6, 7))),
            executors=("process", "docker"),
            run_tasks_as="owner",  # no VPS on either node: users are never root there
        ),
        NodeRegistered(
            node="node3",
            address="b",
            cores=4,
            memory_bytes=8_000_000_000,
            gpus=(GpuInfo(id=0, name="A"), GpuInfo(id=1, name="A")),
            executors=("process", "docker"),
            run_tasks_as="owner",
        ),
    ]
    state.apply_all(record_in_memory([new_event(n, source=n.node) for n in nodes]))
    return state


def submit(state: ClusterState, **fields: object) -> list:
    request = SubmitTask(**{"command": "echo", **fields})  # type: ignore[arg-type]
    return submitted_events(state, request, new_id=lambda: next(_ids), default_container="base")


def test_one_event_per_target_in_one_batch() -> None:
    events = submit(cluster(), targets=["node1", "node1:1", "node3::0,1"], cores=2, memory="1G")
    assert len(events) == 3
    assert len({e.spec.batch_id for e in events}) == 1
    assert len({e.task_id for e in events}) == 3
    assert [e.spec.target for e in events] == ["node1", "node1:1", "node3::0,1"]
    assert events[1].spec.numa_id == 1 and events[2].spec.gpu_ids == (0, 1)
    assert all(e.spec.memory_bytes == 1_000_000_000 and e.spec.container == "base" for e in events)


def test_no_target_means_one_task_for_automatic_placement() -> None:
    (event,) = submit(cluster(), container="NULL")
    assert event.spec.target is None and event.spec.container is None


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"targets": ["node1", "nodeX"]}, "targets[1]", "unknown node 'nodeX'"),
        ({"targets": ["node3::2"]}, "targets[0]", "no GPU [2]"),
        ({"targets": ["node1"], "cores": 9}, "targets[0]", "asks for 9 cores, node1 has 8"),
        ({"targets": ["node1:2"]}, "targets[0]", "no NUMA node 2"),
        ({"targets": ["node1:0"], "cores": 5}, "targets[0]", "NUMA node 0 of node1 has 4"),
        ({"cores": 64}, "cores", "no registered node is large enough"),
        ({"memory": "64G"}, "memory", "no registered node is large enough"),
        ({"cores": 64, "memory": "1G"}, "cores", "no registered node is large enough"),
        ({"targets": ["node1"], "memory": "20G"}, "targets[0]", "memory"),
        ({"env": {"A=B": "x"}}, "env", "invalid variable name"),
        ({"privileged": True}, "privileged", "does not allow"),
        ({"task_type": "vps", "targets": ["node1", "node3"]}, "targets", "at most one"),
        ({"task_type": "vps", "command": ""}, "task_type", "no registered node can run a VPS"),
    ],
)
def test_tasks_that_can_never_run_are_refused(fields: dict, field: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        submit(cluster(), **fields)
    assert err.value.field == field
    assert words in err.value.message


def test_before_any_node_registers_tasks_may_queue() -> None:
    (event,) = submit(ClusterState(), cores=64)
    assert event.spec.cores == 64


def test_kill_of_a_queued_task_finishes_it_at_once() -> None:
    state = cluster()
    (submitted,) = submit(state)
    state.apply_all(record_in_memory([new_event(submitted, source="host")], start_seq=10))
    decision = decide_kill(
        state, KillTask(task_id=submitted.task_id, actor=principal("alice", "admin")), context()
    )
    events = decision.events
    assert [type(e) for e in events] == [TaskKillRequested, TaskFinished]
    assert events[1].state == "killed"  # type: ignore[union-attr]
    assert decision.sends == []  # nothing to tell any node
    with pytest.raises(NotFound, match="no task"):
        decide_kill(state, KillTask(task_id="nope", actor=principal("alice")), context())


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"memory": 0}, "memory", "no memory at all"),
        ({"memory": "0"}, "memory", "no memory at all"),
        ({"memory": "-5G"}, "memory", "is negative"),
    ],
)
def test_memory_that_cannot_work_is_refused_at_submit(
    fields: dict[str, object], field: str, says: str
) -> None:
    # Recorded, a zero limit made the task die at once with SIGSEGV.
    with pytest.raises(InvalidRequest, match=says) as refused:
        submit(cluster(), **fields)
    assert refused.value.field == field


@pytest.mark.parametrize("spelling", ["NULL", "null", "Null"])
def test_null_in_any_case_runs_a_plain_process(spelling: str) -> None:
    (event,) = submit(cluster(), container=spelling)
    assert event.spec.container is None
