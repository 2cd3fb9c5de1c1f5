"""Read-only SQL over the log: refusals, the views, canned reports and Parquet export."""

from __future__ import annotations

import shlex
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.thorough import examples

from events.codec import encode_event
from events.types import TaskSpec, TaskSubmitted
from projections.durations import durations
from replay_tools.analytics import SqlRefused, open_analytics, run_readonly_sql, view_sql
from replay_tools.export import export_parquet
from replay_tools.replay import state_at
from replay_tools.reports import REPORTS, report_table

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("COPY (SELECT * FROM events) TO '/tmp/stolen.csv'", "COPY"),
        ("COPY events TO '/tmp/stolen.parquet' (FORMAT parquet)", "COPY"),
        ("ATTACH '/tmp/other.duckdb' AS other", "ATTACH"),
        ("DETACH log", "DETACH"),
        ("INSTALL httpfs", "LOAD"),
        ("LOAD httpfs", "LOAD"),
        ("SELECT * FROM read_csv('/etc/passwd')", "read_csv()"),
        ("SELECT * FROM read_text('/etc/passwd')", "read_text()"),
        ("SELECT * FROM read_parquet('https://example.com/x.parquet')", "read_parquet()"),
        ("SELECT count(*) FROM glob('/etc/*')", "glob()"),
        ("SELECT * FROM sniff_csv('/etc/passwd')", "sniff_csv()"),
        ("SELECT * FROM '/etc/passwd'", "names a file"),
        ("SELECT * FROM 'https://example.com/data.csv'", "names a file"),
        ("SELECT * FROM query('SELECT 1')", "query()"),
        ("WITH x AS (SELECT * FROM read_json('/etc/hosts')) SELECT * FROM x", "read_json()"),
        (
            "SELECT * FROM tasks WHERE task_id IN (SELECT * FROM read_csv('/etc/passwd'))",
            "read_csv",
        ),
        ("DELETE FROM events", "DELETE"),
        ("UPDATE events SET kind = 'x'", "UPDATE"),
        ("INSERT INTO events SELECT * FROM events", "INSERT"),
        ("CREATE TABLE t AS SELECT 1", "CREATE"),
        ("DROP VIEW tasks", "DROP"),
        ("ALTER TABLE log.events ADD COLUMN x INT", "ALTER"),
        ("PRAGMA enable_profiling", "PRAGMA"),
        ("SET enable_external_access = true", "SET"),
        ("EXPORT DATABASE '/tmp/dump'", "EXPORT"),
        ("CALL pragma_version()", "CALL"),
        ("SELECT * FROM checkpoint()", "checkpoint()"),
        ("SELECT * FROM duckdb_secrets()", "duckdb_secrets()"),
        ("SELECT * FROM arrow_scan(0, 0, 0)", "arrow_scan()"),
        ("SELECT * FROM json_execute_serialized_sql('{}')", "json_execute_serialized_sql()"),
        ("SELECT * FROM range(3) r, LATERAL read_blob('/etc/hostname')", "read_blob()"),
        ("SELECT 1; DELETE FROM events", "exactly one statement"),
        ("SELEC 1", "does not parse"),
    ],
)
def test_statements_that_write_attach_install_or_touch_files_are_refused(
    history_db: Path, tmp_path: Path, sql: str, named: str
) -> None:
    with pytest.raises(SqlRefused, match="refused") as refused:
        run_readonly_sql(history_db, sql)
    assert named in str(refused.value)
    # And nothing was written anywhere.
    assert not Path("/tmp/stolen.csv").exists()
    assert run_readonly_sql(history_db, "SELECT count(*) FROM events")[1][0][0] > 500


def test_the_locked_connection_refuses_file_access_even_past_the_parser(history_db: Path) -> None:
    con = open_analytics(history_db)
    try:
        with pytest.raises(duckdb.PermissionException):
            con.execute("SELECT * FROM read_csv('/etc/passwd')")
        with pytest.raises(duckdb.Error):
            con.execute("SET enable_external_access = true")
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("DELETE FROM log.events")
    finally:
        con.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT kind, count(*) FROM events GROUP BY kind ORDER BY 2 DESC",
        "WITH w AS (SELECT queue_wait_s FROM tasks) SELECT max(queue_wait_s) FROM w",
        "FROM placements SELECT node, count(*) GROUP BY node",
        "DESCRIBE tasks",
        "SUMMARIZE node_heartbeats",
        "SELECT name, allocated_cores FROM nodes",
        "SELECT * FROM range(3)",
        "SELECT table_name FROM duckdb_tables()",
        "SELECT count(*) FROM events, unnest([1, 2])",
    ],
)
def test_read_only_queries_run(history_db: Path, sql: str) -> None:
    columns, rows, _ = run_readonly_sql(history_db, sql)
    assert columns and rows


def test_the_tasks_view_agrees_with_the_fold(history_db: Path) -> None:
    state = state_at(history_db)
    columns, rows, _ = run_readonly_sql(
        history_db,
        "SELECT task_id, state, node, final_state, queue_wait_s, start_delay_s, run_time_s"
        " FROM tasks",
    )
    assert columns[3:] == ["final_state", "queue_wait_s", "start_delay_s", "run_time_s"]
    assert {r[0]: (r[1], r[2]) for r in rows} == {
        t.task_id: (t.state, t.node) for t in state.tasks.values()
    }
    for task_id, _state, _node, final, *took in rows:
        task = state.tasks[task_id]
        assert final == (task.state if task.is_final or task.state == "lost" else None)
        # The one definition of projections/durations.py, to the bit
        assert tuple(took) == durations(task)
    assert any(r[5] is not None for r in rows)  # some tasks started: the check is not vacuous


@pytest.mark.parametrize("by", ["node", "owner"])
def test_the_queue_wait_report_sums_up_the_views_queue_wait(history_db: Path, by: str) -> None:
    con = open_analytics(history_db)
    try:
        columns, rows = report_table(con, "queue-wait", by=by)  # type: ignore[arg-type]
        expected = con.execute(
            f"SELECT {by}, count(*), round(avg(queue_wait_s), 3), round(max(queue_wait_s), 3)"
            " FROM tasks WHERE queue_wait_s IS NOT NULL GROUP BY 1 ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    wanted = ("tasks", "avg_wait_s", "max_wait_s")
    assert [(r[0], *(r[columns.index(c)] for c in wanted)) for r in rows] == expected


@pytest.mark.parametrize("name", REPORTS)
@pytest.mark.parametrize("by", ["node", "owner"])
def test_canned_reports(history_db: Path, name: str, by: str) -> None:
    con = open_analytics(history_db)
    try:
        columns, rows = report_table(con, name, by=by)  # type: ignore[arg-type]
        assert columns[0] == by and rows
        if by == "owner":
            assert {r[0] for r in rows} <= {"alice", "bob", "carol"}
        # Everything is older than a time in the future.
        _, none = report_table(con, name, by=by, since_us=2**62)  # type: ignore[arg-type]
        assert none == [] or all(r[1] == 0 for r in none)
    finally:
        con.close()


def test_failures_report_counts_match_the_fold(history_db: Path) -> None:
    state = state_at(history_db)
    con = open_analytics(history_db)
    try:
        columns, rows = report_table(con, "failures", by="owner")
    finally:
        con.close()
    failed = sum(r[columns.index("failed")] for r in rows)
    assert failed == sum(t.state == "failed" for t in state.tasks.values())
    with pytest.raises(ValueError, match="unknown report"):
        report_table(open_analytics(history_db), "nope")


def test_parquet_export_round_trips(history_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    written = export_parquet(history_db, out)
    assert set(written) == {
        "events",
        "tasks",
        "nodes",
        "node_heartbeats",
        "placements",
        "ssh_sessions",
        "jobs",
        "job_ranks",
    }
    source = duckdb.connect(str(history_db), read_only=True)
    reader = duckdb.connect()
    try:
        checksum = "SELECT count(*), sum(hash(id::VARCHAR)) FROM {}"
        original = source.execute(checksum.format("events")).fetchall()
        exported = reader.execute(checksum.format(f"'{out / 'events.parquet'}'")).fetchall()
        assert original == exported and written["events"][1] == original[0][0]
        ((n_tasks, task_sum),) = reader.execute(
            f"SELECT count(*), sum(hash(task_id)) FROM '{out / 'tasks.parquet'}'"
        ).fetchall()
        state = state_at(history_db)
        assert n_tasks == len(state.tasks) == written["tasks"][1]
        assert (
            task_sum
            == reader.execute(
                "SELECT sum(hash(t)) FROM unnest(?::VARCHAR[]) AS u(t)", [list(state.tasks)]
            ).fetchall()[0][0]
        )
        for name, (path, rows) in written.items():
            assert reader.execute(f"SELECT count(*) FROM '{path}'").fetchall()[0][0] == rows, name
    finally:
        source.close()
        reader.close()


def test_export_since_keeps_only_later_events(history_db: Path, tmp_path: Path) -> None:
    source = duckdb.connect(str(history_db), read_only=True)
    ((mid,),) = source.execute(
        "SELECT epoch_us(recorded_at) FROM events WHERE seq = 300"
    ).fetchall()
    ((expected,),) = source.execute(
        "SELECT count(*) FROM events WHERE epoch_us(recorded_at) >= ?", [mid]
    ).fetchall()
    source.close()
    written = export_parquet(history_db, tmp_path / "since", since_us=mid)
    assert written["events"][1] == expected < 600


# Any character an argv word can hold: no NUL, no lone surrogate (not encodable text).
_WORD_CHARACTERS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")


@settings(max_examples=examples(20, 200), deadline=None)
@given(
    commands=st.lists(
        st.tuples(
            st.text(alphabet=_WORD_CHARACTERS, min_size=1, max_size=12),
            st.lists(st.text(alphabet=_WORD_CHARACTERS, max_size=12)),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_the_tasks_view_holds_the_whole_command_line(
    commands: list[tuple[str, list[str]]],
) -> None:
    # Given submissions with any executable and arguments (quotes, spaces, empty words...)
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE log (seq BIGINT, kind VARCHAR, recorded_at TIMESTAMPTZ, payload JSON)"
    )
    for seq, (command, args) in enumerate(commands, 1):
        spec = TaskSpec(command=command, args=tuple(args), batch_id="b")
        payload = encode_event(TaskSubmitted(task_id=f"t{seq}", spec=spec)).decode()
        con.execute("INSERT INTO log VALUES (?, 'task.submitted', now(), ?)", [seq, payload])
    # Then the view keeps the executable in `command`, the arguments in `args`, and the
    # whole line, quoted as a shell would need it, in `command_line`
    rows = con.execute(
        f"SELECT command, args, command_line FROM ({view_sql('log')['tasks']}) ORDER BY task_id"
    ).fetchall()
    con.close()
    expected = sorted(
        ((f"t{seq}", c, a) for seq, (c, a) in enumerate(commands, 1)), key=lambda t: t[0]
    )
    assert rows == [(c, a, shlex.join([c, *a])) for _, c, a in expected]
