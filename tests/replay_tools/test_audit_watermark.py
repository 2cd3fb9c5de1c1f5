"""The audit's verified watermark: what it skips, what it still catches, and what it cannot."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import msgspec
import pytest
from replay_logs import write_log
from support.waiting import wait_until

from events.chain import GENESIS_HASH, canonical_head, chain_hash
from events.envelope import new_event
from events.types import (
    NodeRegistered,
    TaskFinished,
    TaskPlaced,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
)
from replay_tools import audit_watermark
from replay_tools.audit import audit

pytestmark = pytest.mark.timeout(60)


def last_seq(path: Path) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return int(con.execute("SELECT max(seq) FROM events").fetchall()[0][0])
    finally:
        con.close()


def run_sql(path: Path, *statements: str) -> None:
    con = duckdb.connect(str(path))
    try:
        for sql in statements:
            con.execute(sql)
    finally:
        con.close()


def marked_copy(src: Path, tmp_path: Path, new_rows: int) -> tuple[Path, Path, int]:
    """A copy of the log whose last ``new_rows`` rows came after a passing audit's mark."""
    copy = tmp_path / "copy.duckdb"
    shutil.copy(src, copy)
    mark = tmp_path / "mark.json"
    at = last_seq(copy) - new_rows
    first = audit(copy, upto=at, watermark=mark)
    assert first.ok and first.verified_from == 0 and first.rows_read == at
    return copy, mark, at


def edit_payload(seq: int) -> str:
    """An UPDATE changing one byte of row ``seq``'s payload, its hash left alone."""
    return f"""
        UPDATE events SET payload = left(payload, 10)
            || CASE WHEN substr(payload, 11, 1) = 'X' THEN 'Y' ELSE 'X' END || substr(payload, 12)
        WHERE seq = {seq}
    """


def test_an_incremental_verify_reads_only_the_new_rows(history_db: Path, tmp_path: Path) -> None:
    # Given a log whose rows up to `at` passed an audit that left a watermark
    copy, mark, at = marked_copy(history_db, tmp_path, new_rows=10)
    assert audit_watermark.read(mark)[0].seq == at  # type: ignore[union-attr]
    # When it is verified again: only the 10 rows after the mark are hashed
    report = audit(copy, watermark=mark)
    assert report.ok and report.verified_from == at and report.rows_read == 10
    assert report.checked == at + 10
    # and the mark moved to the end, so a third verify reads nothing
    assert audit_watermark.read(mark)[0].seq == at + 10  # type: ignore[union-attr]
    again = audit(copy, watermark=mark)
    assert again.ok and again.rows_read == 0 and again.verified_from == at + 10
    # --full reads every row, the anchor still checked
    full = audit(copy, watermark=mark, full=True)
    assert full.ok and full.rows_read == at + 10 and full.verified_from == 0


def test_tampering_above_the_watermark_is_found(history_db: Path, tmp_path: Path) -> None:
    copy, mark, at = marked_copy(history_db, tmp_path, new_rows=10)
    before = mark.read_bytes()
    run_sql(copy, edit_payload(at + 4))
    report = audit(copy, watermark=mark)
    assert not report.ok and report.first_bad_seq == at + 4
    assert report.problems[0].kind == "chain" and report.rows_read == 10
    assert mark.read_bytes() == before  # a failed audit does not move the mark


def test_an_edit_below_the_watermark_needs_full(history_db: Path, tmp_path: Path) -> None:
    # What the watermark does not protect against: a row below it edited, its stored
    # hash left alone. The incremental verify trusts the rows it verified before...
    copy, mark, _ = marked_copy(history_db, tmp_path, new_rows=10)
    run_sql(copy, edit_payload(5))
    assert audit(copy, watermark=mark).ok
    # ...and --full, which re-hashes every row, finds it.
    full = audit(copy, watermark=mark, full=True)
    assert not full.ok and full.first_bad_seq == 5 and full.problems[0].kind == "chain"


def test_a_chain_rewritten_below_the_watermark_is_found(history_db: Path, tmp_path: Path) -> None:
    # Given an attacker who edits row 5 and recomputes every hash from there on
    copy, mark, at = marked_copy(history_db, tmp_path, new_rows=10)
    rewrite_chain_from(copy, 5)
    # Then the chain alone is consistent again: an audit without the mark passes
    assert audit(copy).ok
    # but the mark anchors the hash of `at`: the rewrite shows, and a full verify runs
    report = audit(copy, watermark=mark)
    assert not report.ok and report.verified_from == 0
    assert [(p.seq, p.kind) for p in report.problems] == [(at, "watermark")]
    assert "rewritten" in report.problems[0].message
    assert audit(copy, watermark=mark, full=True).problems[0].kind == "watermark"


def rewrite_chain_from(path: Path, seq: int) -> None:
    """Edit row ``seq``'s payload and recompute the chain from it (what a forger does)."""
    con = duckdb.connect(str(path))
    try:
        con.execute(edit_payload(seq))
        rows = con.execute(
            "SELECT seq, id::VARCHAR, kind, stream, source, epoch_us(occurred_at),"
            " epoch_us(recorded_at), schema_version, payload FROM events"
            " WHERE seq >= ? ORDER BY seq",
            [seq],
        ).fetchall()
        found = con.execute("SELECT hash FROM events WHERE seq = ?", [seq - 1]).fetchall()
        prev = bytes(found[0][0]) if found else GENESIS_HASH
        for s, eid, kind, stream, source, occ, rec, version, payload in rows:
            head = canonical_head(s, eid, kind, stream, source, occ, rec, version)
            prev = chain_hash(prev, head, payload.encode())
            con.execute("UPDATE events SET hash = ? WHERE seq = ?", [prev, s])
    finally:
        con.close()


def test_rows_removed_below_or_after_the_watermark_are_found(
    history_db: Path, tmp_path: Path
) -> None:
    copy, mark, _ = marked_copy(history_db, tmp_path, new_rows=10)
    run_sql(copy, "DELETE FROM events WHERE seq = 7")
    report = audit(copy, watermark=mark)
    assert not report.ok and report.problems[0].kind == "seq" and report.first_bad_seq == 7
    assert any(p.kind == "watermark" and "removed or added" in p.message for p in report.problems)
    # A log cut short below the mark: its end shows
    (tmp_path / "cut").mkdir()
    cut, cut_mark, cut_at = marked_copy(history_db, tmp_path / "cut", new_rows=0)
    run_sql(cut, f"DELETE FROM events WHERE seq > {cut_at - 3}")
    report = audit(cut, watermark=cut_mark)
    assert not report.ok and report.problems[0].kind == "watermark"
    assert "removed from its end" in report.problems[0].message


@pytest.mark.parametrize("content", [None, b"", b"{not json", b'{"format": 1, "seq": 3}'])
def test_a_missing_or_corrupt_watermark_means_a_full_verify(
    history_db: Path, tmp_path: Path, content: bytes | None
) -> None:
    copy, mark, at = marked_copy(history_db, tmp_path, new_rows=10)
    if content is None:
        mark.unlink()
    else:
        mark.write_bytes(content)
    report = audit(copy, watermark=mark)
    assert report.ok and report.verified_from == 0 and report.rows_read == at + 10
    assert ("no watermark" if content is None else "corrupt") in report.watermark
    # and the passing audit wrote a good one at the end
    assert audit_watermark.read(mark)[0].seq == at + 10  # type: ignore[union-attr]


def test_a_forged_watermark_hash_is_refused(history_db: Path, tmp_path: Path) -> None:
    copy, mark, _ = marked_copy(history_db, tmp_path, new_rows=10)
    forged = msgspec.json.decode(mark.read_bytes())
    forged["hash"] = "00" * 32
    mark.write_bytes(msgspec.json.encode(forged))
    report = audit(copy, watermark=mark)
    assert not report.ok and report.problems[0].kind == "watermark"


async def test_the_new_rows_invariants_match_a_full_audit(tmp_path: Path) -> None:
    # Given a log whose illegal transition, overcommit and double GPU come after the mark
    spec = TaskSpec(command="x", cores=2, batch_id="b")
    path = tmp_path / "tail.duckdb"
    registered = NodeRegistered(node="n1", address="a", cores=3, memory_bytes=0)
    await write_log(
        path,
        [
            new_event(registered, source="n1"),
            new_event(TaskSubmitted(task_id="a", spec=spec), source="host"),
            new_event(TaskSubmitted(task_id="b", spec=spec), source="host"),
            new_event(TaskPlaced(task_id="a", node="n1", cores=2, gpu_ids=(0,)), source="host"),
            new_event(TaskStarted(task_id="a", node="n1"), source="n1"),  # seq 5: the mark
            new_event(TaskFinished(task_id="a", state="completed"), source="n1"),
            new_event(TaskSubmitted(task_id="c", spec=spec), source="host"),
            new_event(TaskPlaced(task_id="b", node="n1", cores=2, gpu_ids=(0,)), source="host"),
            new_event(TaskPlaced(task_id="c", node="n1", cores=2, gpu_ids=(0,)), source="host"),
            new_event(TaskStarted(task_id="a", node="n1"), source="n1"),  # after completed
            new_event(TaskSubmitted(task_id="b", spec=spec), source="host"),  # again
            new_event(TaskFinished(task_id="ghost", state="failed"), source="n1"),
        ],
    )
    mark = tmp_path / "mark.json"
    assert audit(path, upto=5, watermark=mark).ok
    tail = audit(path, watermark=mark)
    whole = audit(path)
    assert tail.verified_from == 5 and tail.rows_read == 7
    assert [(p.seq, p.kind, p.message) for p in tail.problems] == [
        (p.seq, p.kind, p.message) for p in whole.problems
    ]
    assert {p.seq for p in tail.problems} == {9, 10, 11, 12}


_WRITER = """
import sys
from pathlib import Path
from replay_tools import audit_watermark as w
path = Path(sys.argv[1])
seq = 1
while True:
    tasks = {f"t{i}": "running" for i in range(2000)}  # a few tens of KB per write
    w.write(path, w.Watermark(seq=seq, hash="ab" * 32, tasks=tasks, held={}, nodes={}))
    seq += 1
"""


def test_a_kill_while_writing_leaves_a_whole_watermark(tmp_path: Path) -> None:
    # Given a process rewriting the watermark as fast as it can
    mark = tmp_path / "mark.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(mark)], env=env)
    try:
        # When it is killed -9 once it has written a few times
        wait_until(
            lambda: mark.exists() and (audit_watermark.read(mark)[0] or _none()).seq >= 20,
            timeout=20,
        )
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    # Then the file is one whole watermark (the old or the new), never a torn one
    found, why = audit_watermark.read(mark)
    assert found is not None and found.seq >= 20 and len(found.tasks) == 2000, why


class _None:
    seq = 0


def _none() -> _None:
    return _None()
