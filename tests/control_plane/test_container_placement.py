"""Container tasks go only to nodes with a Docker engine (``docker`` among the executors a
runner says in its hello). With Docker the default environment (issue 18), a mixed
cluster's nodes without an engine must not take the tasks that name no ``--container``,
as Nomad keeps a task to the nodes whose driver can run it; a submission no node could
ever run is refused naming the field."""

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
from events.types import AnyEvent, NodeRegistered, TaskSpec, TaskSubmitted
from projections.cluster import ClusterState

_seq = itertools.count(1)


def apply(state: ClusterState, *events: AnyEvent) -> None:
    wrapped = [new_event(e, source="test") for e in events]
    state.apply_all(record_in_memory(wrapped, start_seq=next(_seq) * 1000))


def node(name: str, *executors: str) -> NodeRegistered:
    return NodeRegistered(
        node=name, address=name, cores=4, memory_bytes=1 << 33, executors=executors
    )


def submit(
    state: ClusterState, default: str | None = "hakuriver-base", **fields: object
) -> list[TaskSubmitted]:
    request = msgspec.convert({"command": "true", **fields}, SubmitTask)
    return submitted_events(state, request, new_id=new_id, default_container=default)


def test_the_scheduler_keeps_container_tasks_to_nodes_with_docker() -> None:
    state = ClusterState()
    apply(state, node("a-plain", "process"), node("b-engine", "process", "docker"))
    for container, where in (("hakuriver-base", "b-engine"), (None, "a-plain")):
        spec = TaskSpec(command="true", batch_id="b", container=container)
        apply(state, TaskSubmitted(task_id=new_id(), spec=spec))
        (placed,) = Scheduler("first-fit").plan(state)
        assert placed.node == where, (container, placed)
        if container is not None:
            assert [r.node for r in placed.rejected] == ["a-plain"]
            assert "no Docker engine" in placed.rejected[0].reason
        state = ClusterState()
        apply(state, node("a-plain", "process"), node("b-engine", "process", "docker"))


def test_a_container_task_no_node_could_run_is_refused_naming_the_field() -> None:
    state = ClusterState()
    apply(state, node("a-plain", "process"))
    # The default environment (no --container given): named as the container
    with pytest.raises(InvalidRequest) as refused:
        submit(state)
    assert refused.value.field == "container"
    assert "--container NULL" in refused.value.message
    # A node named that has no engine: the target is at fault
    with pytest.raises(InvalidRequest) as refused:
        submit(state, targets=["a-plain"], container="my-env")
    assert refused.value.field == "targets[0]" and "my-env" in refused.value.message
    assert "a-plain has no Docker engine" in refused.value.message
    # A process task is not its concern; nor is a cluster with no node registered yet
    assert submit(state, container="NULL", targets=["a-plain"])
    assert submit(ClusterState())


def test_a_mixed_cluster_takes_the_default_environment_on_its_docker_node() -> None:
    state = ClusterState()
    apply(state, node("a-plain", "process"), node("b-engine", "process", "docker"))
    [event] = submit(state)
    assert event.spec.container == "hakuriver-base"
    apply(state, event)
    (placed,) = Scheduler("first-fit").plan(state)
    assert placed.node == "b-engine"
