"""Jobs in the history tools: time travel, timelines, ``why`` and export over logs with jobs."""

from __future__ import annotations

import random
from pathlib import Path

import duckdb
import msgspec
import pytest
from replay_logs import write_log
from rich.console import Console
from support.job_histories import JobSimulation

from cli.hakuriver.history_file import FileSource
from cli.hakuriver.history_render import timeline_table
from events.envelope import NewEvent, new_event
from projections.cluster import ClusterState
from projections.jobs import JobView
from replay_tools.export import export_parquet
from replay_tools.history import History
from replay_tools.queries import HistoryError
from replay_tools.replay import LogFile, state_at, without_ended, write_history_snapshots
from replay_tools.snapshots import _parse, latest_history, restore_full
from replay_tools.timeline import task_history, why

pytestmark = pytest.mark.timeout(120)


def fold_first(path: Path, k: int) -> ClusterState:
    with LogFile(path) as log:
        state = ClusterState()
        state.apply_all(log.read(until=k))
        return state


def job_events(seed: int, jobs: int) -> list[NewEvent]:
    return list(JobSimulation(random.Random(seed), nodes=3).events(jobs))


@pytest.fixture
async def jobs_db(tmp_path: Path) -> Path:
    """A log of 12 jobs on 3 nodes (completed, failed, stopped), without snapshots."""
    path = tmp_path / "jobs.duckdb"
    await write_log(path, job_events(7, 12))
    return path


def test_state_at_every_seq_keeps_the_jobs_across_history_snapshots(jobs_db: Path) -> None:
    # Given history snapshots every 13 seqs (jobs start, run and end between them)
    written = write_history_snapshots(jobs_db, every=13)
    with LogFile(jobs_db) as log:
        last = log.last_seq
    assert len(written) == last // 13 >= 8
    fold = ClusterState()
    with LogFile(jobs_db) as log:
        records = log.read()
    for k in range(last + 1):
        fold.apply_all(records[:k])
        # When the state at seq k is asked for (a history snapshot and a tail of events)
        got = state_at(jobs_db, seq=k)
        # Then it is the fold's, byte for byte, jobs included, and nothing is an anomaly
        assert got.snapshot() == fold.snapshot(), k
        assert list(got.active_jobs) == list(fold.active_jobs), k
        assert got.anomalies == [], k
        # And the live part has the jobs not ended, in submission order
        live = state_at(jobs_db, seq=k, ended=False)
        assert list(live.jobs) == list(fold.active_jobs) == list(live.active_jobs), k
        assert [j.phase for j in live.jobs.values()] == [
            fold.jobs[j].phase for j in fold.active_jobs
        ], k
    ended = [j for j in fold.jobs.values() if j.final_state is not None]
    assert {j.final_state for j in ended} >= {"completed", "failed"}


def test_ended_jobs_are_written_once_in_the_snapshot_after_they_ended(jobs_db: Path) -> None:
    write_history_snapshots(jobs_db, every=25)
    fold = fold_first(jobs_db, 10**9)
    with LogFile(jobs_db) as log:
        snap = latest_history(log, log.last_seq)
        assert snap is not None
        seen: list[str] = []
        link = snap
        while True:
            ended = msgspec.msgpack.decode(link.ended_jobs)
            seen += [entry[1]["job_id"] for entry in ended]
            for _, job in link.active_jobs:
                assert job.final_state is None
            if not link.previous:
                break
            older = log.snapshots.read_unchecked("history", link.previous)
            assert older is not None
            parsed = _parse(older[1], link.previous)
            assert parsed is not None
            link = parsed
        ended_by_last = {
            j.job_id for j in fold_first(jobs_db, snap.last_seq).jobs.values() if j.final_state
        }
        assert sorted(seen) == sorted(ended_by_last)  # each once
        full = restore_full(log, snap)
        assert full is not None
        assert full.snapshot() == fold_first(jobs_db, snap.last_seq).snapshot()
    assert fold.jobs


async def test_a_job_id_submitted_again_after_it_ended_is_refused_in_the_live_part_too(
    tmp_path: Path,
) -> None:
    # Given a job that ended before a history snapshot, and its id submitted again after
    events = job_events(3, 1)
    again = [new_event(e.event, source="host") for e in events if e.kind == "job.submitted"]
    path = tmp_path / "again.duckdb"
    await write_log(path, [*events, *again])
    with LogFile(path) as log:
        last = log.last_seq
    write_history_snapshots(path, every=last - 1)
    # When the live part at the end is asked for
    live = state_at(path, seq=last, ended=False)
    # Then the resubmission is refused as the fold refuses it: no job is active
    fold = fold_first(path, last)
    assert fold.anomalies and fold.anomalies[-1].reason == "job id submitted twice"
    assert live.jobs == {} == without_ended(fold).jobs
    assert state_at(path, seq=last).snapshot() == fold.snapshot()


def a_job(path: Path, *, ranks: int = 2, status: str | None = None) -> JobView:
    """The first job of the log with ``ranks`` ranks (and that final state)."""
    state = fold_first(path, 10**9)
    return next(
        j
        for j in state.jobs.values()
        if j.num_nodes == ranks and j.placed_at_us and (status is None or j.final_state == status)
    )


def test_a_ranks_history_has_the_jobs_events_that_concern_it_in_order(jobs_db: Path) -> None:
    job = a_job(jobs_db)
    rank0, rank1 = job.rank_task_ids
    # When rank 1's history is asked for
    doc = task_history(jobs_db, rank1)
    kinds = [e["kind"] for e in doc["events"]]
    seqs = [e["seq"] for e in doc["events"]]
    # Then it has its own events and the job's placement, phases and end, in seq order
    assert seqs == sorted(seqs)
    assert kinds[0] == "task.submitted"
    assert {"job.placed", "job.phase", "job.finished"} <= set(kinds)
    assert "job.submitted" not in kinds
    assert kinds.index("task.placed") < kinds.index("job.placed")  # one commit, ranks first
    # Its own setup report only, not rank 0's
    with LogFile(jobs_db) as log:
        own_setup = [
            r.seq for r in log.read(streams=[f"task:{rank1}"]) if r.kind == "job.setup_done"
        ]
        other_setup = [
            r.seq for r in log.read(streams=[f"task:{rank0}"]) if r.kind == "job.setup_done"
        ]
    assert [e["seq"] for e in doc["events"] if e["kind"] == "job.setup_done"] == own_setup
    assert not set(other_setup) & set(seqs)
    # The rank's state is its own (the job's events change no task)
    assert doc["state"] == fold_first(jobs_db, 10**9).tasks[rank1].state
    placed = next(e for e in doc["events"] if e["kind"] == "job.placed")
    assert placed["detail"].startswith("every rank placed at once: rank 0 on ")


def test_a_jobs_history_has_its_events_and_its_ranks_key_events(jobs_db: Path) -> None:
    job = a_job(jobs_db, status="completed")
    history = History(LogFile(jobs_db))
    try:
        assert history.is_job(job.job_id)
        doc = history.job_history(job.job_id)
        with pytest.raises(HistoryError) as unknown:
            history.job_history("zzzz9999")
        assert unknown.value.field == "job_id"
    finally:
        history.log.close()
    assert (doc["job_id"], doc["status"], doc["phase"]) == (job.job_id, "completed", "ended")
    assert doc["nodes"] == list(job.nodes) and doc["num_nodes"] == 2
    assert [r["task_id"] for r in doc["ranks"]] == list(job.rank_task_ids)
    assert [r["state"] for r in doc["ranks"]] == ["completed", "completed"]
    events = doc["events"]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert events[0]["kind"] == "job.submitted" and events[0]["rank"] is None
    assert events[-1]["kind"] == "job.finished"
    by_rank = {rank: [e["kind"] for e in events if e["rank"] == rank] for rank in (None, 0, 1)}
    assert by_rank[None] == [
        "job.submitted",
        "job.placed",
        "job.phase",
        "job.phase",
        "job.finished",
    ]
    for rank in (0, 1):
        # each rank placed, started, set up, finished; no submission nor dispatch
        assert by_rank[rank][0] == "task.placed" and by_rank[rank][-1] == "task.finished"
        assert "job.setup_done" in by_rank[rank]
        assert not {"task.submitted", "task.dispatched"} & set(by_rank[rank])
    # the run phase comes after every rank's setup report
    phases = [e for e in events if e["kind"] == "job.phase"]
    assert phases[1]["detail"].startswith("every rank's setup done: run phase")
    run = phases[1]["seq"]
    assert all(e["seq"] < run for e in events if e["kind"] == "job.setup_done")
    assert doc["queue_wait_s"] is not None and doc["run_time_s"] is not None


def test_task_history_of_a_job_id_offline_is_the_jobs_timeline(jobs_db: Path) -> None:
    job = a_job(jobs_db)
    source = FileSource(jobs_db)
    try:
        doc = source.task_history(job.job_id)
        rank = source.task_history(job.rank_task_ids[0])
    finally:
        source.close()
    assert doc["job_id"] == job.job_id and "task_id" not in doc
    assert rank["task_id"] == job.rank_task_ids[0]
    rendered = Console(width=200, record=True)
    rendered.print(timeline_table(doc))
    text = rendered.export_text()
    assert f"job {job.name} ({job.job_id})" in text and "RANK" in text


def test_why_a_rank_names_its_job_and_the_gang_placement(jobs_db: Path) -> None:
    job = a_job(jobs_db)
    got = why(jobs_db, job.rank_task_ids[1])
    assert got.placed and (got.job_id, got.rank) == (job.job_id, 1)
    assert got.message.startswith(
        f"placed on {job.nodes[1]} as rank 1 of job {job.name} ({job.job_id}): gang: "
    )


async def test_why_a_queued_rank_says_it_waits_for_every_node_at_once(tmp_path: Path) -> None:
    # Given a 3-node job on a cluster of 2 nodes: never placed
    sim = JobSimulation(random.Random(1), nodes=2)
    job_id = sim.submit(num_nodes=3)
    path = tmp_path / "queued.duckdb"
    await write_log(path, [e for commit in sim.take() for e in commit])
    rank = fold_first(path, 10**9).jobs[job_id].rank_task_ids[2]
    got = why(path, rank)
    assert not got.placed and got.rank == 2
    assert "waits until 3 nodes have room at the same time" in got.message
    assert [r.node for r in got.rejected] == ["node0", "node1"]


def test_the_jobs_export_round_trips(jobs_db: Path, tmp_path: Path) -> None:
    written = export_parquet(jobs_db, tmp_path / "dump")
    state = fold_first(jobs_db, 10**9)
    assert written["jobs"][1] == len(state.jobs)
    assert written["job_ranks"][1] == sum(j.num_nodes for j in state.jobs.values())
    con = duckdb.connect()
    try:
        rows = con.execute(
            f"SELECT job_id, status FROM '{written['jobs'][0]}' ORDER BY job_id"
        ).fetchall()
    finally:
        con.close()
    assert rows == sorted((j.job_id, j.final_state) for j in state.jobs.values())


async def test_volumes_are_kept_by_history_snapshots(tmp_path: Path) -> None:
    # Volumes never end: each history snapshot holds them all, so time travel from one is
    # still the fold byte for byte.
    from events.types import VolumeCreated

    path = tmp_path / "volumes.duckdb"
    volumes = [
        new_event(VolumeCreated(name=f"v{i}", created_by="u"), source="host") for i in range(3)
    ]
    await write_log(path, [volumes[0], *job_events(3, 4), *volumes[1:]])
    write_history_snapshots(path, every=7)
    with LogFile(path) as log:
        last = log.last_seq
        records = log.read()
    for k in [*range(0, last, 3), last]:
        fold = ClusterState()
        fold.apply_all(records[:k])
        assert state_at(path, seq=k).snapshot() == fold.snapshot(), k
        assert state_at(path, seq=k, ended=False).volumes == fold.volumes, k
    assert sorted(state_at(path, seq=last).volumes) == ["v0", "v1", "v2"]
