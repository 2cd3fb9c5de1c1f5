"""Audit: a tampered, truncated or reordered copy of the log fails at the right seq."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
from replay_logs import write_log

from events.chain import canonical_head, verify_chain
from events.envelope import new_event
from events.schema import SELECT_COLUMNS
from events.types import (
    NodeRegistered,
    TaskFinished,
    TaskPlaced,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
)
from replay_tools import audit as audit_module
from replay_tools.audit import _BODY_SQL, audit

pytestmark = pytest.mark.timeout(60)


def tampered_copy(src: Path, tmp_path: Path, *statements: str) -> Path:
    """A copy of the database with raw SQL applied (the store itself has no update API)."""
    copy = tmp_path / "copy.duckdb"
    shutil.copy(src, copy)
    con = duckdb.connect(str(copy))
    for sql in statements:
        con.execute(sql)
    con.close()
    return copy


def store_verdict(path: Path) -> int | None:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return verify_chain(con).first_bad_seq
    finally:
        con.close()


def test_an_untouched_log_passes(history_db: Path) -> None:
    report = audit(history_db)
    assert report.ok and report.first_bad_seq is None and report.problems == []
    assert report.checked > 500


def test_one_changed_payload_byte_fails_at_its_seq(history_db: Path, tmp_path: Path) -> None:
    copy = tampered_copy(
        history_db,
        tmp_path,
        # The payload's 11th byte (inside the kind tag) becomes another letter.
        """
        UPDATE events SET payload = left(payload, 10)
            || CASE WHEN substr(payload, 11, 1) = 'X' THEN 'Y' ELSE 'X' END || substr(payload, 12)
        WHERE seq = 42
        """,
    )
    report = audit(copy)
    assert not report.ok and report.first_bad_seq == 42 == store_verdict(copy)
    assert [(p.seq, p.kind) for p in report.problems] == [(42, "chain")]


def test_a_deleted_row_fails_at_the_missing_seq(history_db: Path, tmp_path: Path) -> None:
    copy = tampered_copy(history_db, tmp_path, "DELETE FROM events WHERE seq = 77")
    report = audit(copy)
    assert report.first_bad_seq == 77 == store_verdict(copy)
    assert report.problems[0].kind == "seq" and "77 missing" in report.problems[0].message


def test_swapped_payloads_fail_at_the_first_of_the_two(history_db: Path, tmp_path: Path) -> None:
    copy = tampered_copy(
        history_db,
        tmp_path,
        """
        UPDATE events SET payload = CASE seq
            WHEN 30 THEN (SELECT payload FROM events WHERE seq = 31)
            ELSE (SELECT payload FROM events WHERE seq = 30) END
        WHERE seq IN (30, 31)
        """,
    )
    report = audit(copy)
    assert report.first_bad_seq == 30 == store_verdict(copy)
    assert {p.seq for p in report.problems if p.kind == "chain"} == {30, 31}


def test_reordered_rows_fail(history_db: Path, tmp_path: Path) -> None:
    copy = tampered_copy(
        history_db,
        tmp_path,
        "UPDATE events SET seq = CASE seq WHEN 50 THEN 60 ELSE 50 END WHERE seq IN (50, 60)",
    )
    report = audit(copy)
    assert report.first_bad_seq == 50 == store_verdict(copy)


def test_a_duplicated_row_is_reported(history_db: Path, tmp_path: Path) -> None:
    copy = tampered_copy(
        history_db, tmp_path, "INSERT INTO events SELECT * FROM events WHERE seq = 10"
    )
    report = audit(copy)
    kinds = {p.kind for p in report.problems}
    assert "id" in kinds and "seq" in kinds and report.first_bad_seq == 10


async def test_an_illegal_transition_is_reported_at_its_seq(tmp_path: Path) -> None:
    spec = TaskSpec(command="x", cores=1, batch_id="b")
    path = tmp_path / "illegal.duckdb"
    await write_log(
        path,
        [
            new_event(NodeRegistered(node="n1", address="a", cores=2, memory_bytes=0), source="n1"),
            new_event(TaskSubmitted(task_id="t1", spec=spec), source="host"),
            new_event(TaskPlaced(task_id="t1", node="n1", cores=1), source="host"),
            new_event(TaskStarted(task_id="t1", node="n1"), source="n1"),
            new_event(TaskFinished(task_id="t1", state="completed"), source="n1"),
            new_event(TaskStarted(task_id="t1", node="n1"), source="n1"),  # seq 6: illegal
            new_event(TaskFinished(task_id="ghost", state="failed"), source="n1"),  # seq 7
        ],
    )
    report = audit(path)
    assert not report.ok and report.first_bad_seq == 6
    assert [(p.seq, p.kind) for p in report.problems] == [(6, "transition"), (7, "transition")]
    assert "task.started for task t1 in state completed" in report.problems[0].message
    assert "never submitted" in report.problems[1].message


async def test_overallocation_and_a_gpu_held_twice_are_reported(tmp_path: Path) -> None:
    spec = TaskSpec(command="x", cores=2, batch_id="b")
    path = tmp_path / "overcommit.duckdb"
    registered = NodeRegistered(node="n1", address="a", cores=3, memory_bytes=0)
    await write_log(
        path,
        [
            new_event(registered, source="n1"),
            new_event(TaskSubmitted(task_id="a", spec=spec), source="host"),
            new_event(TaskSubmitted(task_id="b", spec=spec), source="host"),
            new_event(TaskSubmitted(task_id="c", spec=spec), source="host"),
            new_event(TaskPlaced(task_id="a", node="n1", cores=2, gpu_ids=(0,)), source="host"),
            new_event(TaskFinished(task_id="a", state="completed"), source="n1"),
            new_event(TaskPlaced(task_id="b", node="n1", cores=2, gpu_ids=(0,)), source="host"),
            new_event(TaskPlaced(task_id="c", node="n1", cores=2, gpu_ids=(0,)), source="host"),
        ],
    )
    report = audit(path)
    assert report.first_bad_seq == 8
    messages = [p.message for p in report.problems]
    assert all(p.seq == 8 and p.kind == "resources" for p in report.problems)
    assert any("cores overcommitted on n1: 4 of 3" in m for m in messages)
    assert any("GPU 0 double-allocated on n1" in m for m in messages)


def test_rows_stored_out_of_order_but_intact_pass(history_db: Path, tmp_path: Path) -> None:
    # Given a copy whose rows are physically stored newest first, each row unchanged
    copy = tampered_copy(
        history_db,
        tmp_path,
        "CREATE TABLE reversed AS SELECT * FROM events ORDER BY seq DESC",
        "DROP TABLE events",
        "ALTER TABLE reversed RENAME TO events",
    )
    # Then the audit (which falls back to reading in seq order) finds nothing wrong
    report = audit(copy)
    assert report.ok and report.checked == audit(history_db).checked


def test_the_chain_is_checked_across_read_batches(
    history_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_module, "_BATCH", 7)
    assert audit(history_db).ok
    copy = tampered_copy(
        history_db, tmp_path, "UPDATE events SET source = 'mallory' WHERE seq IN (50, 333)"
    )
    report = audit(copy)
    assert [(p.seq, p.kind) for p in report.problems] == [(50, "chain"), (333, "chain")]
    assert audit(copy, upto=100).first_bad_seq == 50
    assert audit(copy, upto=49).ok


def test_the_hashed_bytes_are_the_writers_canonical_bytes(history_db: Path) -> None:
    # The audit builds each row's bytes in SQL (``_BODY_SQL``); they must be exactly the
    # writer's (``events.chain.canonical_head`` + payload), field by field and separator by
    # separator, or a log could pass the audit that the store's own check fails.
    con = duckdb.connect(str(history_db), read_only=True)
    try:
        rows = con.execute(f"SELECT {SELECT_COLUMNS} FROM events ORDER BY seq").fetchall()
        built = dict(
            (seq, body)
            for seq, _, body in con.execute(_BODY_SQL.format(first=0, last=len(rows))).fetchall()
        )
    finally:
        con.close()
    assert len(rows) > 500 and len(built) == len(rows)
    for seq, eid, kind, stream, source, occ, rec, version, payload, _ in rows:
        head = canonical_head(seq, eid, kind, stream, source, occ, rec, version)
        assert built[seq].encode() == head + payload.encode(), seq


def test_a_log_broken_everywhere_stops_at_1000_chain_problems(
    history_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every row edited: the chain check stops reading at its 1000th problem, mid-stream
    # (small batches, so the stream is left with batches unread), and the audit still
    # finishes with the invariants' verdicts beside it.
    monkeypatch.setattr(audit_module, "_BATCH", 7)
    copy = tmp_path / "big.duckdb"
    shutil.copy(history_db, copy)
    con = duckdb.connect(str(copy))
    ((rows,),) = con.execute("SELECT count(*) FROM events").fetchall()
    # Append copies of the log after itself (seqs shifted, hashes kept: all wrong) until
    # there are more than 1000 rows, then edit every row's source.
    while rows <= 1100:
        con.execute(
            "INSERT INTO events SELECT seq + ? AS seq, uuid(), kind, stream || '-copy', source,"
            " occurred_at, recorded_at, schema_version, payload, hash FROM events",
            [rows],
        )
        ((rows,),) = con.execute("SELECT count(*) FROM events").fetchall()
    con.execute("UPDATE events SET source = 'mallory'")
    con.close()
    report = audit(copy)
    chain = [p for p in report.problems if p.kind == "chain"]
    assert len(chain) == 1000 and chain[0].seq == 1 and report.first_bad_seq == 1
    assert [p.seq for p in chain] == list(range(1, 1001))
    assert report.checked == rows
