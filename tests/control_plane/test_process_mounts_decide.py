"""Where a process task with ``--mount`` may go: only to nodes whose runner can give it a
mount namespace (``process_mounts``, said in the hello); refused naming ``mounts`` when
no node it could go to can."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from support.factories import record_in_memory

from control_plane.commands.submit import submitted_events
from control_plane.errors import InvalidRequest
from control_plane.requests import SubmitTask
from control_plane.scheduler import Scheduler
from events.envelope import new_event
from events.ids import new_id
from events.types import AnyEvent, Mount, NodeRegistered, TaskSpec, TaskSubmitted
from projections.cluster import ClusterState

_seq = itertools.count(1)


def apply(state: ClusterState, *events: AnyEvent) -> None:
    wrapped = [new_event(e, source="test") for e in events]
    state.apply_all(record_in_memory(wrapped, start_seq=next(_seq) * 1000))


def node(name: str, *, mounts: bool) -> NodeRegistered:
    return NodeRegistered(
        node=name, address=name, cores=4, memory_bytes=1 << 33, process_mounts=mounts
    )


def submit(state: ClusterState, **fields: object) -> list[TaskSubmitted]:
    request = msgspec.convert({"command": "true", **fields}, SubmitTask)
    return submitted_events(state, request, new_id=new_id, default_container=None)


def test_a_registration_recorded_before_the_capability_decodes_as_unable() -> None:
    old = b'{"node":"n1","address":"a","cores":2,"memory_bytes":1}'
    assert msgspec.json.decode(old, type=NodeRegistered).process_mounts is False


def test_a_process_task_with_mounts_is_refused_where_no_node_can_bind() -> None:
    state = ClusterState()
    apply(state, node("n1", mounts=False))
    for fields in ({"targets": ["n1"]}, {}):
        with pytest.raises(InvalidRequest) as refused:
            submit(state, mounts=["/srv/data:/data"], **fields)
        assert refused.value.field == "mounts"
    # A container task's mounts, and a process task without any, are not its concern
    assert submit(state, mounts=["/srv/data:/data"], container="base", targets=["n1"])
    assert submit(state, targets=["n1"])


def test_the_scheduler_passes_over_a_node_that_cannot_bind() -> None:
    state = ClusterState()
    apply(state, node("n1", mounts=False), node("n2", mounts=True))
    spec = TaskSpec(
        command="true", batch_id="b", mounts=(Mount(host_path="/srv", container_path="/mnt"),)
    )
    apply(state, TaskSubmitted(task_id=new_id(), spec=spec))
    (placed,) = Scheduler("first-fit").plan(state)
    assert placed.node == "n2"
    assert [r.node for r in placed.rejected] == ["n1"]
    assert "--mount" in placed.rejected[0].reason
