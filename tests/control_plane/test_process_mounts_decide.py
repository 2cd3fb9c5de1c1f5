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
        node=name,
        address=name,
        cores=4,
        memory_bytes=1 << 33,
        process_mounts=mounts,
        executors=("process", "docker"),
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


def owner_node(name: str, *, mounts: bool, accounts: tuple[str, ...]) -> NodeRegistered:
    return msgspec.structs.replace(
        node(name, mounts=mounts), run_tasks_as="owner", accounts=accounts
    )


def test_a_target_at_or_under_proc_or_sys_is_refused_naming_the_mount() -> None:
    state = ClusterState()
    apply(state, node("n1", mounts=True))
    for i, target in ((1, "/proc"), (1, "/proc/self"), (1, "/sys/fs/cgroup"), (1, "/sys/../sys/")):
        with pytest.raises(InvalidRequest) as refused:
            submit(state, mounts=["/srv/a:/mnt/a", f"/srv/b:{target}"], targets=["n1"])
        assert refused.value.field == f"mounts[{i}]"
        assert "/proc or /sys" in str(refused.value)
    # Names that only begin alike are no kernel view; a container's /proc is its own
    assert submit(state, mounts=["/srv/b:/processing", "/srv/c:/system"], targets=["n1"])
    assert submit(state, mounts=["/srv/b:/proc/x"], container="base", targets=["n1"])


def test_more_than_64_mounts_are_refused_naming_mounts() -> None:
    state = ClusterState()
    apply(state, node("n1", mounts=True))
    many = [f"/srv/{i}:/mnt/{i}" for i in range(65)]
    with pytest.raises(InvalidRequest) as refused:
        submit(state, mounts=many, container="base")
    assert refused.value.field == "mounts"
    assert "at most 64" in str(refused.value)
    assert submit(state, mounts=many[:64], container="base")


def test_the_account_and_the_binds_must_be_on_the_same_node() -> None:
    """One node can bind but lacks bob's account, another has it and cannot bind: an
    automatically placed process task with mounts would wait forever, so it is refused."""
    state = ClusterState()
    apply(
        state,
        owner_node("binds", mounts=True, accounts=("carol",)),
        owner_node("has-bob", mounts=False, accounts=("bob",)),
    )
    request = msgspec.convert({"command": "true", "mounts": ["/srv:/mnt"]}, SubmitTask)
    with pytest.raises(InvalidRequest) as refused:
        submitted_events(state, request, new_id=new_id, default_container=None, owner="bob")
    assert refused.value.field == "mounts"
    assert "'bob'" in str(refused.value)
    # With a node that has both, it is accepted
    apply(state, owner_node("both", mounts=True, accounts=("bob",)))
    assert submitted_events(state, request, new_id=new_id, default_container=None, owner="bob")


def test_a_job_refusal_names_the_reason_every_node_shares() -> None:
    """No node binds; one of them also lacks the account: the binds are what hold the
    job back everywhere, so ``volumes`` is named (not ``owner``)."""
    from control_plane.commands.jobs import _check_fits_somewhere

    state = ClusterState()
    apply(
        state,
        owner_node("n1", mounts=False, accounts=("carol",)),
        owner_node("n2", mounts=False, accounts=("bob",)),
    )
    rank = TaskSpec(
        command="true",
        batch_id="b",
        owner="bob",
        mounts=(Mount(host_path="/srv", container_path="/mnt"),),
    )
    with pytest.raises(InvalidRequest) as refused:
        _check_fits_somewhere(state, rank)
    assert refused.value.field == "volumes"
    state2 = ClusterState()
    apply(
        state2,
        owner_node("m1", mounts=True, accounts=("carol",)),
        owner_node("m2", mounts=True, accounts=("dave",)),
    )
    with pytest.raises(InvalidRequest) as refused:
        _check_fits_somewhere(state2, rank)
    assert refused.value.field == "owner"
