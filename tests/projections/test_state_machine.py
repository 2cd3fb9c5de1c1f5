"""The task state machine and the fold's bookkeeping, event by event."""

from __future__ import annotations

import itertools

import pytest

from events.envelope import Recorded
from events.ids import new_id
from events.types import (
    AnyEvent,
    GpuInfo,
    NodeOffline,
    NodeRegistered,
    TaskDispatched,
    TaskFinished,
    TaskKillRequested,
    TaskLost,
    TaskPaused,
    TaskPlaced,
    TaskResumed,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
    kind_of,
)
from projections.cluster import ClusterState
from projections.tasks import FINAL_STATES, TRANSITIONS, next_state

_seq = itertools.count(1)


def rec(event: AnyEvent) -> Recorded:
    """Record an event by hand (the fold needs no store)."""
    seq = next(_seq)
    return Recorded(
        seq=seq,
        id=new_id(),
        kind=kind_of(event),
        stream=event.stream,
        source="test",
        occurred_at_us=seq,
        recorded_at_us=1_000 * seq,
        schema_version=1,
        hash=b"",
        event=event,
    )


def cluster_with_task(gpus: int = 2) -> tuple[ClusterState, str]:
    state = ClusterState()
    state.apply(
        rec(
            NodeRegistered(
                node="n1",
                address="10.0.0.1",
                cores=8,
                memory_bytes=16 << 30,
                gpus=tuple(GpuInfo(id=i, name="g") for i in range(gpus)),
            )
        )
    )
    tid = new_id()
    state.apply(rec(TaskSubmitted(task_id=tid, spec=TaskSpec(command="true", batch_id="b"))))
    return state, tid


def place(tid: str, cores: int = 2, gpus: tuple[int, ...] = ()) -> Recorded:
    return rec(TaskPlaced(task_id=tid, node="n1", cores=cores, memory_bytes=1 << 30, gpu_ids=gpus))


EXPECTED = {
    # (state, kind) -> state, for every legal pair; everything else is illegal
    ("pending", "task.placed"): "assigning",
    ("assigning", "task.started"): "running",
    ("running", "task.paused"): "paused",
    ("paused", "task.resumed"): "running",
    ("running", "task.finished"): "completed",
    ("lost", "task.finished"): "completed",
    ("running", "task.lost"): "lost",
    ("pending", "task.kill_requested"): "pending",
    ("running", "task.unreachable"): "unknown",
    ("paused", "task.unreachable"): "unknown",
    ("assigning", "task.unreachable"): "unknown",
    ("unknown", "task.reconnected"): "completed",  # the event names the state (here: reported)
    ("unknown", "task.finished"): "completed",
    ("unknown", "task.lost"): "lost",
    ("unknown", "task.kill_requested"): "unknown",
}


@pytest.mark.parametrize(("pair", "target"), EXPECTED.items())
def test_table_entries(pair: tuple[str, str], target: str) -> None:
    assert next_state(*pair, reported="completed") == target


def test_nothing_leaves_a_final_state() -> None:
    kinds = {kind for _, kind in TRANSITIONS}
    for state in FINAL_STATES:
        for kind in kinds:
            assert next_state(state, kind, "completed") is None


def test_unknown_accepts_no_report_but_a_final_one() -> None:
    """Reports from a node declared offline wait for its hello (reconnected first)."""
    for kind in ("task.started", "task.paused", "task.resumed", "task.dispatched"):
        assert next_state("unknown", kind, "running") is None
    assert next_state("pending", "task.unreachable") is None


def test_lost_accepts_only_a_late_finish() -> None:
    # ... and a rank's late setup report, which changes nothing.
    kinds = {kind for _, kind in TRANSITIONS}
    late = {k for k in kinds if next_state("lost", k, "failed")}
    assert late == {"task.finished", "job.setup_done"}
    assert next_state("lost", "job.setup_done") == "lost"


def test_a_full_lifecycle_allocates_then_releases() -> None:
    state, tid = cluster_with_task()
    state.apply(place(tid, cores=3, gpus=(1,)))
    node = state.nodes["n1"]
    assert (node.allocated_cores, node.allocated_gpus, node.free_gpus) == (3, [1], [0])
    assert tid not in state.pending
    for event in (
        TaskDispatched(task_id=tid, node="n1"),
        TaskStarted(task_id=tid, node="n1", pid=7),
        TaskPaused(task_id=tid),
        TaskResumed(task_id=tid),
    ):
        state.apply(rec(event))
    assert state.tasks[tid].state == "running" and state.tasks[tid].pid == 7
    assert node.allocated_cores == 3  # pause keeps the reservation
    state.apply(rec(TaskFinished(task_id=tid, state="failed", exit_code=2)))
    task = state.tasks[tid]
    assert (task.state, task.exit_code) == ("failed", 2)
    assert (node.allocated_cores, node.allocated_memory_bytes, node.allocated_gpus) == (0, 0, [])
    assert not state.anomalies


def test_illegal_transition_is_ignored_and_flagged() -> None:
    state, tid = cluster_with_task()
    event = rec(TaskStarted(task_id=tid, node="n1"))  # started before placed
    state.apply(event)
    assert state.tasks[tid].state == "pending"
    assert [(a.seq, a.subject) for a in state.anomalies] == [(event.seq, tid)]
    assert "illegal transition from pending" in state.anomalies[0].reason


def test_events_after_a_final_state_change_nothing() -> None:
    state, tid = cluster_with_task()
    state.apply(place(tid))
    state.apply(rec(TaskStarted(task_id=tid, node="n1")))
    state.apply(rec(TaskFinished(task_id=tid, state="completed", exit_code=0)))
    state.apply(rec(TaskFinished(task_id=tid, state="failed", exit_code=1)))
    state.apply(rec(TaskKillRequested(task_id=tid)))
    task = state.tasks[tid]
    assert (task.state, task.exit_code, task.kill_requested_by) == ("completed", 0, None)
    assert len(state.anomalies) == 2


def test_lost_task_releases_resources_and_a_late_finish_records_the_truth() -> None:
    state, tid = cluster_with_task()
    state.apply(place(tid, cores=4))
    state.apply(rec(TaskStarted(task_id=tid, node="n1")))
    state.apply(rec(NodeOffline(node="n1")))
    state.apply(rec(TaskLost(task_id=tid, node="n1")))
    assert state.tasks[tid].state == "lost"
    assert state.nodes["n1"].allocated_cores == 0 and not state.nodes["n1"].online
    # The node comes back: a late start is refused, a late finish is the truth
    state.apply(rec(TaskStarted(task_id=tid, node="n1")))
    assert state.tasks[tid].state == "lost"
    state.apply(rec(TaskFinished(task_id=tid, state="completed", exit_code=0)))
    assert state.tasks[tid].state == "completed"
    assert state.nodes["n1"].allocated_cores == 0  # not released twice
    assert len(state.anomalies) == 1


def test_kill_of_a_pending_task_leaves_the_queue() -> None:
    state, tid = cluster_with_task()
    assert list(state.pending) == [tid]
    state.apply(rec(TaskKillRequested(task_id=tid, requested_by="alice")))
    assert list(state.pending) == [tid]
    state.apply(rec(TaskFinished(task_id=tid, state="killed")))
    assert state.pending == {} and state.tasks[tid].kill_requested_by == "alice"


def test_double_allocated_gpu_is_flagged() -> None:
    state, first = cluster_with_task()
    second = new_id()
    state.apply(rec(TaskSubmitted(task_id=second, spec=TaskSpec(command="x", batch_id="b"))))
    state.apply(place(first, gpus=(0,)))
    state.apply(place(second, gpus=(0,)))
    assert any("double-allocated" in a.reason for a in state.anomalies)


def test_applying_an_event_twice_is_a_no_op() -> None:
    state, tid = cluster_with_task()
    placed = place(tid)
    state.apply(placed)
    state.apply(placed)
    assert state.nodes["n1"].allocated_cores == 2 and not state.anomalies


def test_event_for_unknown_task_is_flagged_not_fatal() -> None:
    state = ClusterState()
    state.apply(rec(TaskStarted(task_id="nope", node="n1")))
    assert state.anomalies[0].reason == "event for a task that was never submitted"
