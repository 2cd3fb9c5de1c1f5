"""Time travel: state at a seq or a time equals folding the log up to that point."""

from __future__ import annotations

from pathlib import Path

import pytest
from replay_logs import write_log

from events.envelope import new_event
from events.types import (
    NodeRegistered,
    TaskFinished,
    TaskLost,
    TaskPlaced,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
)
from projections.cluster import ClusterState
from projections.tasks import ENDED_STATES
from replay_tools.points import Point
from replay_tools.replay import (
    LogFile,
    diff,
    diff_between,
    state_at,
    without_ended,
    write_history_snapshots,
)
from replay_tools.snapshots import HistoryWriter, latest_history, restore_full
from replay_tools.task_names import AmbiguousTask, LogTasks, UnknownTask, find_task
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
        assert log.latest_snapshot(250) is None  # no cluster snapshot left
        found = latest_history(log, 250)
        assert found is not None and found.last_seq == 200
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


def live_part(state: ClusterState) -> tuple[list[bytes], list[bytes], int]:
    """What ``ended=False`` promises: nodes, and tasks not final, in order."""
    import msgspec

    tasks = [msgspec.msgpack.encode(t) for t in state.tasks.values() if t.state not in ENDED_STATES]
    nodes = [msgspec.msgpack.encode(n) for n in state.nodes.values()]
    return tasks, nodes, state.last_seq


def test_the_live_part_at_any_point_matches_the_fold(history_db: Path) -> None:
    # Given history snapshots every 100 seqs (and the control plane's at 120, 260, 400)
    write_history_snapshots(history_db, every=100)
    with LogFile(history_db) as log:
        last = log.last_seq
    for k in (0, 1, 99, 100, 101, 150, 260, 299, 300, 455, last):
        # When the state without ended tasks is asked for
        got = state_at(history_db, seq=k, ended=False)
        # Then it is the fold's nodes and unfinished tasks, in submission order
        assert live_part(got) == live_part(fold_first(history_db, k)), k
        assert not any(t.state in ENDED_STATES for t in got.tasks.values())
        assert list(got.pending) == list(without_ended(fold_first(history_db, k)).pending)


def test_a_full_restore_walks_the_chain_of_history_snapshots(history_db: Path) -> None:
    with LogFile(history_db) as log:
        for snap in log.snapshot_dir.glob("cluster-*.snap"):
            snap.unlink()
    write_history_snapshots(history_db, every=50)
    for k in (50, 333, 550):
        assert state_at(history_db, seq=k).snapshot() == fold_first(history_db, k).snapshot()
    # A missing link: the full state falls back to a fold, still exact.
    with LogFile(history_db) as log:
        (log.snapshot_dir / f"history-{100:015d}.snap").unlink()
    assert state_at(history_db, seq=333).snapshot() == fold_first(history_db, 333).snapshot()
    # And the writer, resuming from the newest chain it can restore, mends the rest.
    mended = write_history_snapshots(history_db, every=50)
    assert mended[0] == 100 and mended == list(range(100, mended[-1] + 1, 50))
    with LogFile(history_db) as log:
        snap = latest_history(log, 333)
        assert snap is not None and restore_full(log, snap) is not None


def test_a_writer_kept_between_calls_writes_what_a_fresh_one_would(
    history_db: Path, tmp_path: Path
) -> None:
    writer = HistoryWriter(every=70)
    with LogFile(history_db) as log:
        first = writer.catch_up(log)
        assert first and writer.catch_up(log) == []
        snap_dir = log.snapshot_dir
        blobs = {p.name: p.read_bytes() for p in snap_dir.glob("history-*.snap")}
        for p in snap_dir.glob("history-*.snap"):
            p.unlink()
    assert write_history_snapshots(history_db, every=70) == first
    assert {p.name: p.read_bytes() for p in snap_dir.glob("history-*.snap")} == blobs


async def test_an_ended_task_submitted_again_is_not_mistaken_for_a_new_one(
    tmp_path: Path,
) -> None:
    spec = TaskSpec(command="x", cores=1, batch_id="b")
    events = [
        new_event(NodeRegistered(node="n1", address="a", cores=4, memory_bytes=8), source="n1"),
        new_event(TaskSubmitted(task_id="t5", spec=spec), source="host"),
        new_event(TaskFinished(task_id="t5", state="killed"), source="host"),
        new_event(TaskSubmitted(task_id="t9", spec=spec), source="host"),
        # An illegal resubmission of the ended t5: the fold ignores it
        new_event(TaskSubmitted(task_id="t5", spec=spec), source="host"),
        new_event(TaskPlaced(task_id="t5", node="n1", cores=1), source="host"),
    ]
    path = tmp_path / "again.duckdb"
    await write_log(path, events)
    write_history_snapshots(path, every=3)
    for k in (4, 5, 6):
        got = state_at(path, seq=k, ended=False)
        assert live_part(got) == live_part(fold_first(path, k)), k
        assert list(got.tasks) == ["t9"]
    assert state_at(path, seq=6).snapshot() == fold_first(path, 6).snapshot()


def test_diff_between_two_points_equals_the_diff_of_the_whole_states(history_db: Path) -> None:
    write_history_snapshots(history_db, every=100)
    for a, b in ((10, 90), (90, 10), (150, 420), (420, 150), (333, 333), (0, 600)):
        expected = diff(state_at(history_db, seq=a), state_at(history_db, seq=b))
        got = diff_between(history_db, Point(seq=a), Point(seq=b))
        assert got == expected, (a, b)


def test_a_task_prefix_resolves_to_its_id(history_db: Path) -> None:
    with LogFile(history_db) as log:
        ((task_id,),) = log.con.execute(
            "SELECT substr(stream, 6) FROM events WHERE kind = 'task.submitted' LIMIT 1"
        ).fetchall()
        assert find_task(task_id, LogTasks(log.con)) == task_id
        assert find_task(task_id[:-3], LogTasks(log.con)) == task_id
        ((shared,),) = log.con.execute(
            "SELECT left(substr(stream, 6), 9) AS p FROM events WHERE kind = 'task.submitted'"
            " GROUP BY p HAVING count(*) > 1 LIMIT 1"
        ).fetchall()
        with pytest.raises(AmbiguousTask, match="prefix of several tasks"):
            find_task(shared, LogTasks(log.con))
        with pytest.raises(UnknownTask, match="no task 'nope'"):
            find_task("nope", LogTasks(log.con))


async def test_a_lost_task_its_node_reports_late_is_restored_and_diffed_exactly(
    tmp_path: Path,
) -> None:
    spec = TaskSpec(command="x", cores=1, batch_id="b")
    registered = NodeRegistered(node="n1", address="a", cores=4, memory_bytes=8)
    events = [
        new_event(registered, source="n1"),
        new_event(TaskSubmitted(task_id="t1", spec=spec), source="host"),
        new_event(TaskPlaced(task_id="t1", node="n1", cores=1), source="host"),
        new_event(TaskStarted(task_id="t1", node="n1"), source="n1"),
        new_event(TaskLost(task_id="t1", node="n1"), source="host"),  # seq 5
        new_event(TaskSubmitted(task_id="t2", spec=spec), source="host"),
        new_event(TaskSubmitted(task_id="t3", spec=spec), source="host"),
        # The node comes back and tells how t1 really ended
        new_event(TaskFinished(task_id="t1", state="completed", exit_code=0), source="n1"),
        new_event(TaskPlaced(task_id="t2", node="n1", cores=1), source="host"),
        new_event(TaskSubmitted(task_id="t4", spec=spec), source="host"),
    ]
    path = tmp_path / "late.duckdb"
    await write_log(path, events)
    write_history_snapshots(path, every=3)  # t1 is in one snapshot as lost, later completed
    for k in range(11):
        assert state_at(path, seq=k).snapshot() == fold_first(path, k).snapshot(), k
        assert live_part(state_at(path, seq=k, ended=False)) == live_part(fold_first(path, k))
    late = diff_between(path, Point(seq=6), Point(seq=10))
    assert late == diff(fold_first(path, 6), fold_first(path, 10))
    assert ("t1", "lost", "completed") in [
        (c.task_id, c.state_from, c.state_to) for c in late.tasks_changed
    ]


async def test_task_numbers_survive_history_snapshots_and_old_logs(tmp_path: Path) -> None:
    # Given a log written before task numbers (number 0), whose highest-numbered task ended
    # before a history snapshot that keeps only the live part, then more submissions
    spec = TaskSpec(command="x", cores=0, batch_id="b")
    events = [
        new_event(TaskSubmitted(task_id="t1", spec=spec), source="host"),
        new_event(TaskSubmitted(task_id="t2", spec=spec), source="host"),
        new_event(TaskFinished(task_id="t2", state="killed"), source="host"),
        new_event(TaskSubmitted(task_id="t3", spec=spec), source="host"),  # seq 4
        new_event(TaskFinished(task_id="t3", state="killed"), source="host"),
        new_event(TaskSubmitted(task_id="t4", spec=spec), source="host"),
        new_event(TaskSubmitted(task_id="t5", spec=spec, number=5), source="host"),  # a new host
    ]
    path = tmp_path / "numbers.duckdb"
    await write_log(path, events)
    write_history_snapshots(path, every=5)
    # When the state is restored from the live part and the tail folded on top
    live = state_at(path, ended=False)
    full = state_at(path)
    # Then every task has the number the full fold gives, 1..5 in submission order
    assert {t.task_id: t.number for t in full.tasks.values()} == {f"t{i}": i for i in range(1, 6)}
    assert {t.task_id: t.number for t in live.tasks.values()} == {"t1": 1, "t4": 4, "t5": 5}
    assert (live.last_number, full.last_number) == (5, 5)
    # And the offline resolver finds a task by its number, old event or new
    with LogFile(path) as log:
        tasks = LogTasks(log.con)
        assert [find_task(str(n), tasks) for n in (1, 3, 5)] == ["t1", "t3", "t5"]
        with pytest.raises(UnknownTask):
            find_task("6", tasks)
        with pytest.raises(UnknownTask):
            find_task("01", tasks)  # not a number (a leading zero): an id prefix, too short
