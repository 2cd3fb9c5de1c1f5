"""Jobs in the history tools: time travel, timelines and ``why`` over logs with jobs."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest
from replay_logs import write_log
from support.job_histories import JobSimulation

from events.envelope import NewEvent, new_event
from projections.cluster import ClusterState
from replay_tools.replay import LogFile, state_at, without_ended, write_history_snapshots
from replay_tools.snapshots import _parse, latest_history, restore_full

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
