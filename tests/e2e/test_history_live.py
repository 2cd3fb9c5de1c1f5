"""History against a real cluster: time travel, the live feed, SQL guards, audit.

A real control plane and agents run as processes (``support.cluster``). Long tasks
wait on a gate file the test creates; every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import msgspec
import pytest
from support.cluster import Cluster, running_cluster
from support.waiting import async_wait_until

from control_plane.history import HistoryService, state_document
from events.envelope import new_event
from events.store import EventStore
from events.types import NodeHeartbeat, NodeRegistered, TaskSpec, TaskSubmitted
from projections.cluster import ClusterState
from replay_tools.logfile import LogFile
from replay_tools.queries import SqlQuery
from replay_tools.replay import state_at
from replay_tools.snapshots import latest_history, restore_full

pytestmark = pytest.mark.timeout(90)


def gated(gate: Path, then: str = "true") -> list[str]:
    """``sh -c`` arguments that wait for ``gate`` to exist, then run ``then``."""
    return ["-c", f"while [ ! -e '{gate}' ]; do sleep 0.02; done; {then}"]


def get(cluster: Cluster, path: str, **params: Any) -> Any:
    response = cluster.http.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def all_events(cluster: Cluster, **filters: Any) -> list[dict[str, Any]]:
    """Every event matching ``filters``, read page by page with ``next_after``."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        page = get(cluster, "/api/events", after=after, limit=7, **filters)
        found += page["events"]
        after = page["next_after"]
        if not page["more"]:
            return found


def offline_state(db: Path, seq: int, *, ended: bool) -> dict[str, Any]:
    document = state_document(state_at(db, seq=seq, ended=ended), ended=ended)
    decoded: dict[str, Any] = json.loads(msgspec.json.encode(document))
    return decoded


# -- time travel ----------------------------------------------------------------------------


def test_time_travel_equals_the_state_the_control_plane_showed_during_a_run(
    tmp_path: Path,
) -> None:
    captured: list[dict[str, Any]] = []
    with running_cluster(tmp_path, agents=("n1", "n2")) as cluster:
        gate = cluster.root / "gate"

        def capture() -> None:
            # The live state and its seq, from one answer each (so each pair is consistent)
            captured.append(get(cluster, "/api/state", tasks="all"))
            captured.append(get(cluster, "/api/state"))

        capture()
        n1_cores = cluster.node("n1")["cores"]  # type: ignore[index]
        # Given a run: a task holding all of n1, one failing, one queued behind the first
        [holder] = cluster.submit("sh", *gated(gate), cores=n1_cores, targets=["n1"])
        [failing] = cluster.submit("sh", "-c", "exit 3", targets=["n2"])
        cluster.wait_state(holder, "running")
        cluster.wait_state(failing)
        [queued] = cluster.submit("true", cores=1, targets=["n1"])
        assert cluster.task(queued)["state"] == "pending"
        capture()
        # A kill, and a node going away with its task
        [doomed] = cluster.submit("sh", *gated(cluster.root / "never"), targets=["n2"])
        cluster.wait_state(doomed, "running")
        capture()
        assert cluster.http.post(f"/api/tasks/{holder}/kill").status_code == 202
        cluster.wait_state(holder, "killed")
        cluster.wait_state(queued)
        cluster.stop_agent("n2")
        cluster.wait_node("n2", online=False)
        cluster.wait_state(doomed, "unknown")  # its node went silent: it may still run
        capture()
        # Given up by a kill while its node is unreachable: lost
        assert cluster.http.post(f"/api/tasks/{doomed}/kill").status_code == 202
        cluster.wait_state(doomed, "lost")
        capture()

        # Then each captured state is the state at its seq, as the control plane replays it
        assert len({c["seq"] for c in captured}) >= 4
        for live in captured:
            tasks = "all" if live["includes_ended_tasks"] else "active"
            assert get(cluster, "/api/state", at=live["seq"], tasks=tasks) == live
        assert {t["state"] for t in captured[-4]["tasks"]} >= {"killed", "failed", "unknown"}
        assert {t["state"] for t in captured[-2]["tasks"]} >= {"killed", "failed", "lost"}
        assert not any(t["state"] in ("killed", "failed") for t in captured[-1]["tasks"])

        # A time means the last event recorded by then
        seq = captured[4]["seq"]
        at = get(cluster, f"/api/events/{seq}")["recorded_at"]
        by_time = get(cluster, "/api/state", at=at, tasks="all")
        last_by_then = get(cluster, "/api/events", until=at, tail=1)["events"][0]["seq"]
        assert by_time["seq"] == last_by_then >= seq
        assert by_time == get(cluster, "/api/state", at=last_by_then, tasks="all")
        gate.touch()
        cluster.stop_host()

    # And offline, from the file, after the host stopped
    for live in captured:
        assert (
            offline_state(cluster.db_file, live["seq"], ended=live["includes_ended_tasks"]) == live
        )


def test_state_diff_on_a_known_sequence(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=("n1",)) as cluster:
        gate = cluster.root / "gate"
        [first] = cluster.submit("sh", *gated(gate), cores=1)
        cluster.wait_state(first, "running")
        before = get(cluster, "/api/state")["seq"]
        gate.touch()
        cluster.wait_state(first, "completed")
        [second] = cluster.submit("true", cores=1)
        cluster.wait_state(second, "completed")
        after = get(cluster, "/api/state")["seq"]

        change = get(cluster, "/api/state/diff", a=before, b=after)

        assert (change["from_seq"], change["to_seq"]) == (before, after)
        assert [
            (t["task_id"], t["state_from"], t["state_to"]) for t in change["tasks_changed"]
        ] == [(first, "running", "completed")]
        assert [(t["task_id"], t["state_to"], t["node_to"]) for t in change["tasks_added"]] == [
            (second, "completed", "n1")
        ]
        (node,) = change["nodes_changed"]
        assert (node["node"], node["allocated_cores_from"], node["allocated_cores_to"]) == (
            "n1",
            1,
            0,
        )
        backwards = get(cluster, "/api/state/diff", a=after, b=before)
        assert [t["task_id"] for t in backwards["tasks_removed"]] == [second]
        # b defaults to now; a bad point names its field
        assert get(cluster, "/api/state/diff", a=after)["tasks_changed"] == []
        bad = cluster.http.get("/api/state/diff", params={"a": "yesterday"})
        assert bad.status_code == 400 and bad.json()["field"] == "a"


# -- the live feed --------------------------------------------------------------------------


def sse(response: httpx.Response) -> Iterator[tuple[int | None, dict[str, Any] | None]]:
    """(id, event) per server-sent message; event None for an id-only (keep-alive) one."""
    event_id: int | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith("id:"):
            event_id = int(line[3:])
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and (data or event_id is not None):
            yield event_id, json.loads("\n".join(data)) if data else None
            data = []


def read_stream(
    cluster: Cluster, headers: dict[str, str], until_seq: int, **params: Any
) -> tuple[list[dict[str, Any]], int]:
    """Events of one connection until one at or past ``until_seq``; and the last id seen."""
    got: list[dict[str, Any]] = []
    last = 0
    with cluster.http.stream(
        "GET",
        "/api/events/stream",
        params={"keepalive": 0.2, **params},
        headers=headers,
        timeout=httpx.Timeout(10.0),
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event_id, event in sse(response):
            assert event_id is not None
            last = event_id
            if event is not None:
                assert event["seq"] == event_id
                got.append(event)
            if last >= until_seq:
                break  # and the connection drops here, mid-stream
    return got, last


@pytest.mark.parametrize("filters", [{}, {"kind": "task.*"}], ids=["everything", "task-events"])
def test_the_stream_resumes_after_a_disconnect_without_loss_or_duplicate(
    tmp_path: Path, filters: dict[str, str]
) -> None:
    with running_cluster(tmp_path, agents=("n1",)) as cluster:
        [early] = cluster.submit("true")
        cluster.wait_state(early)
        mark = get(cluster, "/api/events", tail=1)["events"][0]["seq"]
        # Given a client that read up to `mark` and dropped its connection
        first, last_id = read_stream(cluster, {}, mark, after=0, **filters)
        # When more happens while it is away
        [late] = cluster.submit("sh", "-c", "echo more")
        cluster.wait_state(late)
        target = get(cluster, "/api/events", tail=1)["events"][0]["seq"]
        # Then reconnecting with Last-Event-ID picks up exactly where it left off
        second, _ = read_stream(cluster, {"Last-Event-ID": str(last_id)}, target, **filters)
        seqs = [e["seq"] for e in first + second]
        expected = [e for e in all_events(cluster, **filters) if e["seq"] <= target]
        assert seqs == [e["seq"] for e in expected]
        assert first + second == expected
        assert second and {late} <= {e["stream"][5:] for e in second}


def test_event_pages_filters_and_errors(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=("n1",)) as cluster:
        [task_id] = cluster.submit("sh", "-c", "exit 0")
        cluster.wait_state(task_id)
        everything = all_events(cluster)
        assert [e["seq"] for e in everything] == list(range(1, len(everything) + 1))
        # Filters
        mine = all_events(cluster, task=task_id[:20])
        assert [e["kind"] for e in mine] == [
            "task.submitted",
            "task.placed",
            "task.dispatched",
            "task.started",
            "task.finished",
        ]
        assert all(e["stream"] == f"task:{task_id}" for e in mine)
        on_n1 = all_events(cluster, node="n1")
        assert {"node.registered", "task.placed", "task.started"} <= {e["kind"] for e in on_n1}
        assert all(e["kind"].startswith("task.") for e in all_events(cluster, kind="task.*"))
        placed = all_events(cluster, kind="task.placed,task.finished")
        assert [e["kind"] for e in placed] == ["task.placed", "task.finished"]
        assert all(e["source"] == "host" for e in all_events(cluster, source="host"))
        since = mine[2]["seq"]
        assert [e["seq"] for e in all_events(cluster, task=task_id, since=since)] == [
            e["seq"] for e in mine[2:]
        ]
        at = mine[1]["recorded_at"]
        assert all(e["recorded_at"] >= at for e in all_events(cluster, since=at))
        # One event; the payload is the stored JSON
        one = get(cluster, f"/api/events/{mine[0]['seq']}")
        assert one == mine[0] and one["payload"]["task_id"] == task_id
        assert one["summary"].startswith("submitted by")
        # Bad input is a 4xx naming the field
        for params, field in [
            ({"kind": "nope"}, "kind"),
            ({"task": "unknown-task"}, "task"),
            ({"node": "n9"}, "node"),
            ({"since": "yesterday"}, "since"),
            ({"after": "x"}, "after"),
            ({"limit": "0"}, "limit"),
            ({"limit": "999999"}, "limit"),
        ]:
            response = cluster.http.get("/api/events", params=params)
            assert 400 <= response.status_code < 500, (params, response.text)
            assert response.json()["field"] == field
        missing = cluster.http.get("/api/events/999999")
        assert missing.status_code == 404 and missing.json()["field"] == "seq"
        stream = cluster.http.get("/api/events/stream", headers={"Last-Event-ID": "x"})
        assert stream.status_code == 400 and stream.json()["field"] == "Last-Event-ID"


# -- SQL --------------------------------------------------------------------------------------

REFUSED = [
    "COPY (SELECT * FROM events) TO '{dir}/stolen.csv'",
    "COPY events TO '{dir}/stolen.parquet' (FORMAT parquet)",
    "ATTACH '{dir}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM tasks WHERE task_id IN (SELECT * FROM read_text('/etc/hostname'))",
    "DELETE FROM events",
    "UPDATE events SET kind = 'x'",
    "INSERT INTO events SELECT * FROM events",
    "CREATE TABLE t AS SELECT 1",
    "DROP TABLE events",
    "PRAGMA enable_profiling",
    "SET enable_external_access = true",
    "CHECKPOINT",
    "SELECT * FROM checkpoint()",
    "SELECT * FROM query('DELETE FROM events')",
    "SELECT 1; DELETE FROM events",
]


def test_sql_that_writes_attaches_installs_or_touches_files_is_refused(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=("n1",)) as cluster:
        [task_id] = cluster.submit("true")
        cluster.wait_state(task_id)
        before = get(cluster, "/api/events", tail=1)["events"][0]
        for statement in REFUSED:
            sql = statement.format(dir=tmp_path)
            response = cluster.http.post("/api/sql", json={"sql": sql})
            assert response.status_code == 400, (sql, response.text)
            body = response.json()
            assert body["field"] == "sql" and body["message"].startswith("refused"), body
        # Nothing was written, and the log is as it was
        assert not list(tmp_path.glob("stolen*")) and not (tmp_path / "other.duckdb").exists()
        assert get(cluster, f"/api/events/{before['seq']}") == before
        assert get(cluster, "/api/audit")["ok"] is True
        # The instance itself is locked down, past the parser
        settings = cluster.http.post(
            "/api/sql",
            json={
                "sql": "SELECT name, value FROM duckdb_settings() WHERE name IN"
                " ('enable_external_access', 'lock_configuration', 'autoload_known_extensions')"
                " ORDER BY name"
            },
        ).json()
        assert settings["rows"] == [
            ["autoload_known_extensions", "false"],
            ["enable_external_access", "false"],
            ["lock_configuration", "true"],
        ]
        # Read-only SQL over the views works, and max_rows cuts
        answer = cluster.http.post(
            "/api/sql", json={"sql": "SELECT task_id, state FROM tasks", "max_rows": 5}
        ).json()
        assert answer["columns"] == ["task_id", "state"] and answer["rows"] == [
            [task_id, "completed"]
        ]
        cut = cluster.http.post("/api/sql", json={"sql": "FROM events", "max_rows": 2}).json()
        assert cut["row_count"] == 2 and cut["truncated"] is True
        for body, field in [
            ({"sql": 3}, "sql"),
            ({"sql": "SELECT 1", "max_rows": 0}, "max_rows"),
            ({"sql": "SELECT nope FROM tasks"}, "sql"),
        ]:
            response = cluster.http.post("/api/sql", json=body)
            assert response.status_code == 400 and response.json()["field"] == field
        # The store still appends after the instance was hardened
        [after] = cluster.submit("true")
        assert cluster.wait_state(after)["state"] == "completed"


# -- audit --------------------------------------------------------------------------------


def test_audit_through_the_api_names_the_first_tampered_seq(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with running_cluster(tmp_path / "run", agents=("n1",)) as cluster:
        [task_id] = cluster.submit("true")
        cluster.wait_state(task_id)
        report = get(cluster, "/api/audit")
        assert report["ok"] and report["checked"] >= 6 and report["problems"] == []
        cluster.stop_host()
        db = cluster.db_file
    # Given a copy of the log with one payload byte changed at a task event
    copy_root = tmp_path / "tampered"
    copy_root.mkdir()
    shutil.copy(db, copy_root / "hakuriver.duckdb")
    shutil.copy(db.parent / "admin.token", copy_root / "admin.token")
    con = duckdb.connect(str(copy_root / "hakuriver.duckdb"))
    ((seq,),) = con.execute("SELECT min(seq) FROM events WHERE kind = 'task.placed'").fetchall()
    con.execute(
        "UPDATE events SET payload = replace(payload, '\"cores\":1', '\"cores\":2') WHERE seq = ?",
        [seq],
    )
    con.close()
    # When a control plane serves it, its audit names that seq
    tampered = Cluster(copy_root)
    try:
        tampered.start_host()
        report = get(tampered, "/api/audit")
        assert not report["ok"] and report["first_bad_seq"] == seq
        assert report["problems"][0]["kind"] == "chain"
    finally:
        tampered.close()


# -- the control plane's history service, in process ----------------------------------------


async def test_the_service_keeps_history_snapshots_and_hardens_the_instance(
    tmp_path: Path,
) -> None:
    spec = TaskSpec(command="x", batch_id="b")
    store = await EventStore.open(tmp_path / "log.duckdb")
    service = HistoryService(store, snapshot_every=40)
    try:
        await service.start()
        live = ClusterState()
        store.add_listener(live.apply_all)
        registered = NodeRegistered(node="n1", address="a", cores=4, memory_bytes=8)
        await store.append([new_event(registered, source="n1")])
        for i in range(130):
            event = (
                TaskSubmitted(task_id=f"t{i:03d}", spec=spec)
                if i % 3 == 0
                else NodeHeartbeat(node="n1", cpu_percent=float(i))
            )
            await store.append([new_event(event, source="n1")])
        # The writer follows the log as it grows
        snapshots = store.snapshot_dir
        await async_wait_until(
            lambda: (snapshots / f"history-{120:015d}.snap").exists(), deadline_s=10
        )

        def check(cursor: duckdb.DuckDBPyConnection) -> bool:
            log = service.log(cursor)
            snap = latest_history(log, 125)
            assert snap is not None and snap.last_seq == 120
            full = restore_full(log, snap)
            assert full is not None and len(full.tasks) == 40
            assert state_at(log).snapshot() == live.snapshot()
            with pytest.raises(duckdb.Error, match="locked"):
                cursor.execute("SET threads = 1")
            with pytest.raises(duckdb.PermissionException):
                cursor.execute("SELECT * FROM read_csv('/etc/passwd')")
            return True

        assert await service.run(check)
        # A statement running past its time is stopped, and refused
        with pytest.raises(Exception, match="longer than"):
            await service.sql(SqlQuery("SELECT sum(i) FROM range(10000000000000) t(i)", 10), 0.3)
    finally:
        await service.close()
        await store.close()
    with LogFile(tmp_path / "log.duckdb") as log:
        assert log.last_seq == 131


async def _append_events(store: EventStore, count: int) -> None:
    for i in range(count):
        await store.append([new_event(NodeHeartbeat(node="n1", cpu_percent=float(i)), source="n1")])


async def test_a_due_history_snapshot_waits_for_a_lull_in_the_log(tmp_path: Path) -> None:
    """A burst of events is written first: the snapshots it makes due (every 40 events
    here) are written once the log has had no commit for ``quiet_s``, not during it."""
    store = await EventStore.open(tmp_path / "log.duckdb")
    service = HistoryService(store, snapshot_every=40, quiet_s=3.0, max_delay_s=600)
    try:
        await service.start()
        # The first pass (at start, no lull waited for) done before the burst: it resumes
        # the writer's state, and the pool's one thread is free once it is over
        await async_wait_until(lambda: service.writer._state is not None, deadline_s=30)
        await asyncio.get_running_loop().run_in_executor(service._snapshots, lambda: None)
        await _append_events(store, 130)  # a few ms each: no pause of 3 s among them
        snapshots = store.snapshot_dir
        assert not list(snapshots.glob("history-*.snap"))
        await async_wait_until(
            lambda: (snapshots / f"history-{120:015d}.snap").exists(), deadline_s=30
        )
        assert sorted(p.name for p in snapshots.glob("history-*.snap")) == [
            f"history-{seq:015d}.snap" for seq in (40, 80, 120)
        ]
    finally:
        await service.close()
        await store.close()


async def test_under_a_load_that_never_pauses_history_snapshots_come_within_the_delay(
    tmp_path: Path,
) -> None:
    """No lull ever comes: the snapshot due is written ``max_delay_s`` after it fell due,
    while the events keep coming."""
    store = await EventStore.open(tmp_path / "log.duckdb")
    service = HistoryService(store, snapshot_every=40, quiet_s=600, max_delay_s=0.5)
    try:
        await service.start()
        snapshot = store.snapshot_dir / f"history-{40:015d}.snap"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not snapshot.exists():
            assert loop.time() < deadline, "no history snapshot under a steady load"
            await _append_events(store, 1)
        assert store.last_seq > 40
    finally:
        await service.close()
        await store.close()


async def test_history_readers_cannot_write_the_log(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "log.duckdb")
    service = HistoryService(store)
    try:
        await service.start()
        registered = NodeRegistered(node="n1", address="a", cores=4, memory_bytes=8)
        await store.append([new_event(registered, source="n1")])

        def delete(cursor: duckdb.DuckDBPyConnection) -> None:
            # The log's own table (``events`` on a reader is the view with actor columns).
            ((catalog,),) = cursor.execute("SELECT current_database()").fetchall()
            cursor.execute(f'DELETE FROM "{catalog}".main.events')

        def count(cursor: duckdb.DuckDBPyConnection) -> int:
            return int(cursor.execute("SELECT count(*) FROM events").fetchall()[0][0])

        # When work on a history reader tries to change the log, DuckDB refuses it
        for _ in range(4):  # on each reader thread's cursor
            with pytest.raises(duckdb.TransactionException, match="read-only"):
                await service.run(delete)
        # Then the log is whole, and each later read sees the commits made before it
        await store.append([new_event(NodeHeartbeat(node="n1"), source="n1")])
        assert [await service.run(count) for _ in range(4)] == [2, 2, 2, 2]
        assert (await store.verify()).checked == 2
    finally:
        await service.close()
        await store.close()


def test_an_unknown_point_kind_is_refused_at_every_time_route(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=()) as cluster:
        for path, params, field in [
            ("/api/state", {"at": "-5"}, "at"),
            ("/api/state", {"tasks": "some"}, "tasks"),
            ("/api/reports/runtime", {"since": "12"}, "since"),
            ("/api/reports/runtime", {"by": "color"}, "by"),
            ("/api/reports/nope", {}, "name"),
            ("/api/export/nope", {}, "name"),
            ("/api/tasks/abcdefgh/history", {}, "task_id"),
            ("/api/tasks/abcdefgh/why", {}, "task_id"),
        ]:
            response = cluster.http.get(path, params=params)
            assert 400 <= response.status_code < 500, (path, response.text)
            assert response.json()["field"] == field, (path, response.text)
        bad_json = cluster.http.post("/api/sql", content=b"{nope")
        assert bad_json.status_code == 400 and bad_json.json()["field"] == "body"


def test_out_of_range_points_and_unreturnable_values_are_refused_not_crashed(
    tmp_path: Path,
) -> None:
    huge = str(10**45)
    with running_cluster(tmp_path, agents=()) as cluster:
        for path, params, field in [
            ("/api/events", {"since": "-99999999999w"}, "since"),
            ("/api/events", {"until": "99999999999w ago"}, "until"),
            ("/api/events", {"after": huge}, "after"),
            ("/api/events", {"since": huge}, "since"),
            ("/api/state", {"at": "-99999999999w"}, "at"),
            ("/api/state", {"at": "1e999999999999d ago"}, "at"),
            ("/api/state/diff", {"a": "-99999999999w"}, "a"),
            ("/api/export/events", {"since": "-99999999999w"}, "since"),
            ("/api/reports/queue-wait", {"since": "-99999999999w"}, "since"),
        ]:
            response = cluster.http.get(path, params=params)
            assert 400 <= response.status_code < 500, (path, params, response.text)
            assert response.json()["field"] == field, (path, params, response.text)
        assert cluster.http.get(f"/api/events/{huge}").status_code == 404
        for sql in (
            "SELECT 'infinity'::TIMESTAMP",
            "SELECT TIMESTAMP '10000-01-01'",
            "SELECT " + "[" * 100 + "1" + "]" * 100,
            "SELECT repeat('x', 20000) FROM range(10000)",  # 200 MB: over the answer's limit
        ):
            response = cluster.http.post("/api/sql", json={"sql": sql, "max_rows": 100_000})
            assert response.status_code == 400, (sql[:40], response.text)
            assert response.json()["field"] == "sql"
        surrogate = b'{"sql": "SELECT \\ud800"}'
        response = cluster.http.post("/api/sql", content=surrogate)
        assert response.status_code == 400, response.text
        assert cluster.http.get("/api/health").status_code == 200
