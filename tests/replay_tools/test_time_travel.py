"""Time travel: state at a seq or a time equals folding the log up to that point."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_log

from events.envelope import new_event
from events.types import NodeRegistered, TaskFinished, TaskPlaced, TaskSpec, TaskSubmitted
from projections.cluster import ClusterState
from replay_tools.replay import LogFile, diff, state_at, write_history_snapshots
from replay_tools.timeline import task_timeline, why

pytestmark = pytest.mark.timeout(60)


def fold_first(path: Path, k: int) -> ClusterState:
    with LogFile(path) as log:
        state = ClusterState()
        state.apply_all(log.read(until=k))
        return state


def test_state_at_seq_equals_the_fold_of_the_first_k_events(history_db: Path) -> None:
    with LogFile(history_db) as log:
        last = log.last_seq
        assert len(list(log.snapshot_dir.glob("cluster-*.snap"))) == 3
    for k in (0, 1, 57, 120, 121, 259, 260, 333, 400, last - 1, last):
        # When: the state at seq k is asked for (from a snapshot where one is at or before k)
        got = state_at(history_db, seq=k)
        # Then: it is byte for byte the fold of the first k events
        assert got.last_seq == k
        assert got.snapshot() == fold_first(history_db, k).snapshot(), k


def test_state_at_a_time_is_the_state_after_the_last_event_recorded_by_then(
    history_db: Path,
) -> None:
    with LogFile(history_db) as log:
        rows = log.con.execute(
            "SELECT seq, epoch_us(recorded_at) FROM events WHERE seq IN (100, 300) ORDER BY seq"
        ).fetchall()
        for seq, at in rows:
            expected = log.seq_at(at)
            assert expected >= seq  # the whole commit batch shares one recorded_at
            got = state_at(log, at_us=at)
            assert got.snapshot() == fold_first(history_db, expected).snapshot()
        first_at = rows[0][1]
    assert state_at(history_db, at_us=first_at - 10**9).last_seq == 0


def test_history_snapshots_serve_points_the_cluster_snapshots_no_longer_cover(
    history_db: Path,
) -> None:
    with LogFile(history_db) as log:
        for snap in log.snapshot_dir.glob("cluster-*.snap"):
            snap.unlink()
    written = write_history_snapshots(history_db, every=100)
    assert written == [100, 200, 300, 400, 500][: len(written)] and len(written) >= 4
    assert write_history_snapshots(history_db, every=100) == []  # incremental: nothing new
    with LogFile(history_db) as log:
        assert log.latest_snapshot(250) is not None and log.latest_snapshot(250)[0] == 200  # type: ignore[index]
    for k in (99, 100, 250, 401):
        assert state_at(history_db, seq=k).snapshot() == fold_first(history_db, k).snapshot()


def test_a_snapshot_from_another_log_is_never_used(history_db: Path, tmp_path: Path) -> None:
    with LogFile(history_db) as log:
        bogus = log.snapshot_dir / "history-000000000000200.snap"
        bogus.write_bytes(bytes(32) + ClusterState().snapshot())
    assert state_at(history_db, seq=210).snapshot() == fold_first(history_db, 210).snapshot()


def test_both_seq_and_time_is_an_error(history_db: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        state_at(history_db, seq=3, at_us=5)


async def test_state_diff_on_a_known_sequence(tmp_path: Path) -> None:
    spec = TaskSpec(command="train", cores=2, batch_id="b", owner="alice")
    events = [
        new_event(NodeRegistered(node="n1", address="a", cores=4, memory_bytes=8), source="n1"),
        new_event(TaskSubmitted(task_id="t1", spec=spec), source="host"),
        new_event(TaskSubmitted(task_id="t2", spec=spec), source="host"),
        new_event(TaskPlaced(task_id="t1", node="n1", cores=2, gpu_ids=()), source="host"),
        new_event(TaskFinished(task_id="t1", state="completed", exit_code=0), source="n1"),
        new_event(TaskPlaced(task_id="t2", node="n1", cores=2), source="host"),
    ]
    path = tmp_path / "small.duckdb"
    await write_log(path, events)

    d = diff(state_at(path, seq=2), state_at(path, seq=6))

    assert (d.from_seq, d.to_seq) == (2, 6)
    assert [(c.task_id, c.state_from, c.state_to) for c in d.tasks_added] == [
        ("t2", None, "assigning")
    ]
    assert [(c.task_id, c.state_from, c.state_to, c.node_to) for c in d.tasks_changed] == [
        ("t1", "pending", "completed", "n1")
    ]
    assert d.tasks_removed == [] and d.nodes_added == []
    (node,) = d.nodes_changed
    assert (node.allocated_cores_from, node.allocated_cores_to) == (0, 2)
    as_dict = d.to_dict()
    assert as_dict["tasks_changed"][0]["state_to"] == "completed"
    # Backwards the roles swap, and a state diffed with itself is empty.
    back = diff(state_at(path, seq=6), state_at(path, seq=2))
    assert [c.task_id for c in back.tasks_removed] == ["t2"]
    assert diff(state_at(path, seq=4), state_at(path, seq=4)).empty

    # The timeline and the explanation of the same history
    timeline = task_timeline(path, "t1")
    assert [e.kind for e in timeline] == ["task.submitted", "task.placed", "task.finished"]
    assert timeline[0].since_previous_s is None and timeline[1].since_previous_s is not None
    assert timeline[1].detail.startswith("placed on n1")
    assert timeline[2].detail == "completed (exit code 0)"
    explained = why(path, "t1")
    assert explained.placed and explained.node == "n1" and explained.state == "completed"


async def test_why_a_pending_task_says_what_blocks_it(tmp_path: Path) -> None:
    big = TaskSpec(command="train", cores=8, batch_id="b", owner="bob")
    events = [
        new_event(NodeRegistered(node="n1", address="a", cores=4, memory_bytes=8), source="n1"),
        new_event(TaskSubmitted(task_id="t9", spec=big), source="host"),
    ]
    path = tmp_path / "pending.duckdb"
    await write_log(path, events)
    explained = why(path, "t9")
    assert not explained.placed and explained.state == "pending"
    assert explained.rejected[0].node == "n1" and "4 free cores < 8" in explained.rejected[0].reason
