"""The history commands end to end: against a running cluster, then offline with --db.

Commands run in-process (``main([...])``) against a real control plane and agents
(``support.cluster``); ``events tail -f`` runs as a subprocess, across a restart of
the control plane. Offline, the same commands read the stopped host's file and must
print the same documents.
"""

from __future__ import annotations

import json
import queue
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from support.cluster import Cluster, running_cluster
from support.histories import ClusterSimulation
from support.waiting import wait_until

from cli.hakuriver.main import main
from cli.hakuriver.render import human_duration
from events.envelope import new_event
from events.store import EventStore
from events.types import TaskSpec, TaskStarted, TaskSubmitted
from replay_tools.replay import state_at

pytestmark = pytest.mark.timeout(90)

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def hakuriver(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``hakuriver WORDS`` in-process against a cluster: (exit code, stdout, stderr)."""

    def run(cluster: Cluster, *words: str) -> tuple[int, str, str]:
        monkeypatch.setenv("HAKURIVER_URL", cluster.url)
        monkeypatch.setenv("HAKURIVER_CONFIG", str(cluster.config))
        code = main(list(words))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def ok_json(result: tuple[int, str, str]) -> Any:
    code, out, err = result
    assert code == 0, (code, out, err)
    return json.loads(out)


def gated(gate: Path) -> list[str]:
    return ["-c", f"while [ ! -e '{gate}' ]; do sleep 0.02; done"]


def test_every_command_against_a_running_cluster_then_offline(
    tmp_path: Path, hakuriver: Run
) -> None:
    with running_cluster(tmp_path, agents=("n1",)) as cluster:
        gate = cluster.root / "gate"
        cores = cluster.node("n1")["cores"]  # type: ignore[index]
        [done] = cluster.submit("sh", "-c", "echo hi", owner="alice")
        [broken] = cluster.submit("sh", "-c", "exit 3", owner="bob")
        cluster.wait_state(done)
        cluster.wait_state(broken)
        [holder] = cluster.submit("sh", *gated(gate), cores=cores, owner="alice")
        cluster.wait_state(holder, "running")
        [waiting] = cluster.submit("true", cores=1, owner="bob")
        # A task still waiting says what blocks it
        pending_why = ok_json(hakuriver(cluster, "why", waiting, "--json"))
        assert not pending_why["placed"] and pending_why["state"] == "pending"
        assert "0 free cores" in pending_why["rejected"][0]["reason"]
        code, out, _ = hakuriver(cluster, "state")
        shown = {line.split()[0] for line in out.splitlines() if line.strip()}  # the ID column
        number = {t: str(cluster.task(t)["number"]) for t in (holder, waiting, done)}
        assert code == 0 and {number[holder], number[waiting]} <= shown
        assert number[done] not in shown
        mid = ok_json(hakuriver(cluster, "state", "--json", "--all"))
        kill = cluster.http.post(f"/api/tasks/{waiting}/kill")
        assert kill.status_code == 202
        gate.touch()
        cluster.wait_state(holder, "completed")
        cluster.wait_state(waiting, "killed")
        last = cluster.health()["last_seq"]

        # events
        code, out, _ = hakuriver(cluster, "events", "tail", "-n", "5", "--json")
        tail = [json.loads(line) for line in out.splitlines()]
        assert code == 0 and len(tail) == 5
        assert [e["seq"] for e in tail] == sorted({e["seq"] for e in tail})
        code, out, _ = hakuriver(cluster, "events", "tail", "--task", waiting[:20])
        assert code == 0 and "kill requested by admin" in out and "task.finished" in out
        since = ok_lines(
            hakuriver(cluster, "events", "tail", "--since", "1", "--kind", "task.*", "--json")
        )
        assert {e["kind"].split(".")[0] for e in since} == {"task"}
        first_placed = next(e for e in since if e["kind"] == "task.placed")
        code, out, _ = hakuriver(cluster, "events", "show", str(first_placed["seq"]))
        assert code == 0 and '"kind": "task.placed"' in out

        # the commands whose documents must not depend on where they were read
        words: list[list[str]] = [
            ["events", "show", str(first_placed["seq"]), "--json"],
            ["task", "history", waiting, "--json"],
            ["why", done, "--json"],
            ["state", "--at", str(mid["seq"]), "--all", "--json"],
            ["state", "--at", str(last), "--json"],
            ["state", "diff", str(mid["seq"]), str(last), "--json"],
            ["sql", "SELECT task_id, owner, state, exit_code FROM tasks ORDER BY 1", "--json"],
            ["report", "failures", "--by", "owner", "--json"],
            ["report", "queue-wait", "--json"],
        ]
        live = [ok_json(hakuriver(cluster, *w)) for w in words]
        history = live[1]
        assert [e["kind"] for e in history["events"]][-2:] == [
            "task.kill_requested",
            "task.finished",
        ]
        assert history["state"] == "killed"
        assert live[3] == mid
        change = live[5]
        assert {(c["task_id"], c["state_to"]) for c in change["tasks_changed"]} == {
            (holder, "completed"),
            (waiting, "killed"),
        }
        failures = {row[0]: row for row in live[7]["rows"]}
        assert failures["bob"][live[7]["columns"].index("failed")] == 1
        code, out, _ = hakuriver(
            cluster, "sql", "SELECT owner, count(*) AS n FROM tasks GROUP BY 1 ORDER BY 1", "--csv"
        )
        assert code == 0 and out.splitlines() == ["owner,n", "alice,2", "bob,2"]
        code, _, err = hakuriver(cluster, "sql", "COPY events TO 'x.csv'")
        assert code == 2 and "refused" in err
        code, out, _ = hakuriver(cluster, "audit", "verify")
        assert code == 0 and "OK" in out
        code, out, _ = hakuriver(cluster, "report", "runtime", "--by", "owner")
        assert code == 0 and "alice" in out and "avg_run_s" in out
        live_export = tmp_path / "live-export"
        exported = ok_json(hakuriver(cluster, "export", "--parquet", str(live_export), "--json"))
        # bad input is exit 2, naming what was wrong
        code, _, err = hakuriver(cluster, "task", "history", "nosuchtask")
        assert code == 2 and "nosuchtask" in err
        code, _, err = hakuriver(cluster, "state", "--at", "yesterday")
        assert code == 2 and "at:" in err

        # From here the log stays still: the node leaves (no more heartbeats), and two
        # tasks submitted together wait for a node (their ids share a prefix)
        cluster.stop_agent("n1")
        cluster.wait_node("n1", online=False)
        r = cluster.http.post("/api/batches", json={"tasks": [{"command": "true"}] * 2})
        queued = r.json()["task_ids"]
        shared = queued[0][:8]
        assert queued[1].startswith(shared), queued
        still = cluster.health()["last_seq"]
        quiet = words + every_history_command(still, number[holder], waiting, queued[0], shared)
        answers = [hakuriver(cluster, *w) for w in quiet]
        live_still = tmp_path / "live-still"
        exported_still = ok_json(
            hakuriver(cluster, "export", "--parquet", str(live_still), "--json")
        )
        cluster.stop_host()

    db = str(cluster.db_file)
    # Every history command answers the same, byte for byte, live and offline: documents,
    # tables, and the errors (exit code and message) of what it refuses
    assert ok_json(hakuriver(cluster, "state", "--json", "--db", db))["seq"] == still
    # (offline, `audit verify` keeps a verified watermark: each gets a fresh one, so it
    # reads every row as the host does, and what it says of its watermark is set aside)
    offline = [
        hakuriver(cluster, *command, "--db", db, *_fresh_mark(command, tmp_path / f"mark{i}"))
        for i, command in enumerate(quiet)
    ]
    differ = {
        " ".join(command): (live_answer, offline_answer)
        for command, live_answer, offline_answer in zip(quiet, answers, offline, strict=True)
        if _no_mark(command, live_answer) != _no_mark(command, offline_answer)
    }
    assert differ == {}
    offline_still = tmp_path / "offline-still"
    written_still = ok_json(
        hakuriver(cluster, "export", "--parquet", str(offline_still), "--json", "--db", db)
    )
    same_parquet(exported_still, written_still)
    code, out, _ = hakuriver(cluster, "audit", "verify", "--db", db)
    assert code == 0 and "OK" in out
    code, _, err = hakuriver(cluster, "events", "tail", "-f", "--db", db)
    assert code == 2 and "--follow" in err
    code, _, err = hakuriver(cluster, "state", "--db", str(tmp_path / "missing.duckdb"))
    assert code == 2 and "no event log" in err

    # Parquet: the live export and the offline one round-trip (counts, checksums of ids)
    offline_export = tmp_path / "offline-export"
    written = ok_json(
        hakuriver(cluster, "export", "--parquet", str(offline_export), "--json", "--db", db)
    )
    reader = duckdb.connect()
    source = duckdb.connect(db, read_only=True)
    try:
        checksum = "SELECT count(*), sum(hash(id::VARCHAR)) FROM {}"
        whole = source.execute(checksum.format("events")).fetchall()
        assert (
            reader.execute(checksum.format(f"'{offline_export}/events.parquet'")).fetchall()
            == whole
        )
        assert written["events"]["rows"] == whole[0][0]
        upto = exported["events"]["rows"]
        then = source.execute(checksum.format(f"events WHERE seq <= {upto}")).fetchall()
        assert reader.execute(checksum.format(f"'{live_export}/events.parquet'")).fetchall() == then
        for folder, seq in ((live_export, upto), (offline_export, None)):
            ids = reader.execute(
                f"SELECT list(task_id ORDER BY task_id) FROM '{folder}/tasks.parquet'"
            ).fetchall()[0][0]
            assert ids == sorted(state_at(db, seq=seq).tasks)
            for name, info in (exported if folder == live_export else written).items():
                rows = reader.execute(f"SELECT count(*) FROM '{folder}/{name}.parquet'").fetchall()
                assert rows[0][0] == info["rows"], name
    finally:
        reader.close()
        source.close()


def _fresh_mark(command: list[str], path: Path) -> list[str]:
    """A watermark file of its own for an offline ``audit verify``: it reads every row."""
    return ["--watermark", str(path)] if command[:2] == ["audit", "verify"] else []


def _no_mark(command: list[str], answer: tuple[int, str, str]) -> tuple[int, Any, str]:
    """An answer without what an ``audit verify`` says of its watermark (offline only)."""
    code, out, err = answer
    if command[:2] != ["audit", "verify"] or code != 0:
        return code, out, err
    if "--json" in command:
        doc = json.loads(out)
        assert doc.pop("verified_from", 0) == 0, doc  # a fresh watermark skips nothing
        doc.pop("watermark", None)
        return code, doc, err
    return code, [line for line in out.splitlines() if "watermark" not in line], err


def every_history_command(
    last: int, number: str, task_id: str, waiting: str, shared: str
) -> list[list[str]]:
    """Each history command, its filters and its refusals, on a log that ends at ``last``."""
    return [
        ["events", "tail", "--json"],
        ["events", "tail", "--all", "-n", "40", "--json"],
        ["events", "tail", "--since", "1", "--kind", "task.*,node.offline", "--json"],
        ["events", "tail", "--since", "-1h", "--node", "n1", "--json"],
        ["events", "tail", "--task", task_id[:20], "--source", "host", "--json"],
        ["events", "tail", "--task", number],
        ["events", "show", str(last), "--json"],
        ["task", "history", number, "--json"],
        ["task", "history", task_id[:13], "--json"],
        ["why", number, "--json"],
        ["why", waiting, "--json"],  # waiting: what keeps each node from taking it
        ["state", "--json"],
        ["state", "--all", "--json"],
        ["state", "--at", "1", "--json"],
        ["state", "diff", "1", str(last), "--json"],
        ["state", "diff", str(last), "3", "--json"],
        ["audit", "verify", "--json"],
        ["audit", "verify"],
        ["sql", "SELECT kind, count(*) AS n FROM events GROUP BY 1 ORDER BY 1", "--json"],
        ["sql", "SELECT task_id, state, node FROM tasks ORDER BY 1", "--csv"],
        ["sql", "SELECT seq FROM events ORDER BY seq", "--max-rows", "3", "--json"],
        ["report", "utilization", "--json"],
        ["report", "queue-wait", "--by", "owner", "--json"],
        ["report", "runtime", "--by", "owner", "--since", "2000-01-01", "--json"],
        ["report", "failures", "--since", "2000-01-01T00:00:00+02:00", "--json"],
        # refused: the same exit code and the same message
        ["why", shared],
        ["task", "history", "ffffffff"],
        ["task", "history", "99"],
        ["events", "show", str(last + 1000)],
        ["events", "tail", "--kind", "task.nope"],
        ["events", "tail", "--node", "nX"],
        ["events", "tail", "--task", "ffffffff"],
        ["events", "tail", "--task", shared],
        ["events", "tail", "--since", "soon"],
        ["state", "--at", "yesterday"],
        ["state", "diff", "-5", "1"],
        ["report", "queue-wait", "--since", "12"],
        ["sql", "COPY events TO 'x.csv'"],
        ["sql", "SELECT 1", "--max-rows", "100001"],
    ]


def same_parquet(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two exports (``export --json`` answers) hold the same files, row for row."""
    assert {k: v["rows"] for k, v in a.items()} == {k: v["rows"] for k, v in b.items()}
    con = duckdb.connect()
    try:
        for name in a:
            one, other = a[name]["path"], b[name]["path"]
            for x, y in ((one, other), (other, one)):
                rows = con.execute(f"SELECT count(*) FROM (FROM '{x}' EXCEPT ALL FROM '{y}')")
                assert rows.fetchall() == [(0,)], name
    finally:
        con.close()


def ok_lines(result: tuple[int, str, str]) -> list[dict[str, Any]]:
    code, out, err = result
    assert code == 0, (code, out, err)
    return [json.loads(line) for line in out.splitlines()]


# -- audit on tampered copies -------------------------------------------------------------


@pytest.fixture
async def stopped_log(tmp_path: Path) -> Path:
    """A stopped control plane's log: 50 tasks on a 3-node cluster, about 600 events."""
    sim = ClusterSimulation(random.Random(3), nodes=3, offline_chance=0.02)
    path = tmp_path / "hakuriver.duckdb"
    events = list(sim.events(50))
    async with await EventStore.open(path) as store:
        for start in range(0, len(events), 20):
            await store.append(events[start : start + 20])
    return path


def tampered(original: Path, name: str, *statements: str) -> Path:
    copy = original.with_name(name)
    shutil.copy(original, copy)
    con = duckdb.connect(str(copy))
    for sql in statements:
        con.execute(sql)
    con.close()
    return copy


def test_audit_verify_db_exits_1_at_the_first_tampered_seq(
    stopped_log: Path, tmp_path: Path, hakuriver: Run
) -> None:
    copies = {
        42: tampered(
            stopped_log,
            "byte.duckdb",
            "UPDATE events SET payload = left(payload, 10)"
            " || CASE WHEN substr(payload, 11, 1) = 'X' THEN 'Y' ELSE 'X' END"
            " || substr(payload, 12) WHERE seq = 42",
        ),
        77: tampered(stopped_log, "deleted.duckdb", "DELETE FROM events WHERE seq = 77"),
        100: tampered(
            stopped_log,
            "swapped.duckdb",
            "UPDATE events SET payload = CASE seq WHEN 100 THEN"
            " (SELECT payload FROM events WHERE seq = 101) ELSE"
            " (SELECT payload FROM events WHERE seq = 100) END WHERE seq IN (100, 101)",
        ),
    }
    offline = _OfflineRunner(hakuriver)
    code, out, _ = offline("audit", "verify", "--db", str(stopped_log))
    assert code == 0 and "OK" in out
    for seq, copy in copies.items():
        code, out, err = offline("audit", "verify", "--db", str(copy))
        assert code == 1, (seq, out, err)
        assert f"audit failed at seq {seq}:" in err and f"FAIL at seq {seq}" in out
        report = json.loads(offline("audit", "verify", "--db", str(copy), "--json")[1])
        assert report["first_bad_seq"] == seq and not report["ok"]


async def test_an_injected_illegal_transition_is_reported_by_audit_verify(
    stopped_log: Path, hakuriver: Run
) -> None:
    con = duckdb.connect(str(stopped_log), read_only=True)
    ((task_id,),) = con.execute(
        "SELECT payload->>'$.task_id' FROM events WHERE kind = 'task.finished' LIMIT 1"
    ).fetchall()
    con.close()
    # A properly chained event that the state machine forbids: a start after the end
    async with await EventStore.open(stopped_log) as store:
        (seq,) = await store.append(
            [new_event(TaskStarted(task_id=task_id, node="node0", pid=1), source="node0")]
        )
    code, out, err = _OfflineRunner(hakuriver)("audit", "verify", "--db", str(stopped_log))
    assert code == 1 and f"audit failed at seq {seq}: transition" in err
    assert "illegal transition: task.started" in out


async def test_audit_verify_db_reads_on_from_its_watermark(
    stopped_log: Path, tmp_path: Path, hakuriver: Run
) -> None:
    offline = _OfflineRunner(hakuriver)
    first = json.loads(offline("audit", "verify", "--db", str(stopped_log), "--json")[1])
    assert first["ok"] and first["verified_from"] == 0 and first["rows_read"] == first["checked"]
    # Three events appended since: only they are read, and the text says why
    spec = TaskSpec(command="true", cores=1, batch_id="b")
    async with await EventStore.open(stopped_log) as store:
        await store.append(
            [
                new_event(TaskSubmitted(task_id=f"new{i}", spec=spec), source="host")
                for i in range(3)
            ]
        )
    code, out, _ = offline("audit", "verify", "--db", str(stopped_log))
    assert code == 0 and "verified earlier" in out
    again = json.loads(offline("audit", "verify", "--db", str(stopped_log), "--json")[1])
    assert again["verified_from"] == first["checked"] + 3 and again["rows_read"] == 0
    full = json.loads(offline("audit", "verify", "--db", str(stopped_log), "--json", "--full")[1])
    assert full["ok"] and full["rows_read"] == first["checked"] + 3
    # A watermark kept elsewhere; and --watermark means nothing without --db
    mark = tmp_path / "elsewhere.json"
    code, _, _ = offline("audit", "verify", "--db", str(stopped_log), "--watermark", str(mark))
    assert code == 0 and mark.is_file()
    code, _, err = offline("audit", "verify", "--watermark", str(mark))
    assert code == 2 and "watermark" in err


class _OfflineRunner:
    """``hakuriver`` in-process with no control plane anywhere (only --db works)."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._cluster = _NoCluster()

    def __call__(self, *words: str) -> tuple[int, str, str]:
        return self._run(self._cluster, *words)


class _NoCluster:
    url = "http://127.0.0.1:9"
    config = Path("/nonexistent/config.toml")


# -- following ----------------------------------------------------------------------------


def test_events_tail_follow_resumes_after_the_control_plane_restarts(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=("n1",)) as cluster:
        [before] = cluster.submit("true")
        cluster.wait_state(before)
        words = ["events", "tail", "-f", "--json", "--kind", "task.*", "-n", "1000"]
        follower = subprocess.Popen(
            [sys.executable, "-m", "cli.hakuriver", *words],
            env=cluster.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [lines.put(line) for line in follower.stdout],
            daemon=True,  # type: ignore[union-attr]
        ).start()
        printed: list[dict[str, Any]] = []

        def printed_finish_of(task_id: str) -> Callable[[], bool]:
            def check() -> bool:
                while not lines.empty():
                    printed.append(json.loads(lines.get()))
                return any(
                    e["kind"] == "task.finished" and e["payload"]["task_id"] == task_id
                    for e in printed
                )

            return check

        try:
            wait_until(printed_finish_of(before), timeout=20)
            # When the control plane goes away and comes back (same port, same log)
            cluster.stop_host()
            cluster.start_host()
            cluster.wait_node("n1", online=True, timeout=30)
            [after] = cluster.submit("true")
            cluster.wait_state(after)
            # Then the follower, reconnected, printed the new task's events too
            wait_until(printed_finish_of(after), timeout=30)
            expected = [
                e["seq"]
                for e in cluster.http.get(
                    "/api/events", params={"kind": "task.*", "limit": 10000}
                ).json()["events"]
            ]
            seqs = [e["seq"] for e in printed]
            assert seqs == expected  # every task event once, in order, across the restart
        finally:
            follower.terminate()
            _, err = follower.communicate(timeout=10)
        assert "resuming after seq" in err


# -- one definition of queue wait ---------------------------------------------------------


def test_status_history_sql_report_and_export_give_the_same_durations(
    tmp_path: Path, hakuriver: Run
) -> None:
    with running_cluster(tmp_path, agents=("n1",)) as cluster:
        # Given tasks that wait in the queue, start, and run for a while
        ids = [cluster.submit("sh", "-c", "sleep 0.2", owner="dora")[0] for _ in range(3)]
        for task_id in ids:
            cluster.wait_state(task_id)
        sql = ok_json(
            hakuriver(
                cluster,
                "sql",
                "SELECT task_id, queue_wait_s, start_delay_s, run_time_s FROM tasks ORDER BY 1",
                "--json",
            )
        )
        in_sql = {row[0]: tuple(row[1:]) for row in sql["rows"]}
        for task_id in ids:
            # Then task status (JSON and text), task history and SQL give the same numbers
            status = ok_json(hakuriver(cluster, "task", "status", task_id, "--json"))
            assert status["queue_wait_s"] == in_sql[task_id][0]  # submitted -> placed
            took = (status["queue_wait_s"], status["start_delay_s"], status["run_time_s"])
            assert took == in_sql[task_id]
            assert took[1] > 0  # the start takes a round trip to the agent: not the queue
            history = ok_json(hakuriver(cluster, "task", "history", task_id, "--json"))
            assert (
                history["queue_wait_s"],
                history["start_delay_s"],
                history["run_time_s"],
            ) == took
            code, out, _ = hakuriver(cluster, "task", "status", task_id)
            assert code == 0
            assert f"queue wait         {human_duration(took[0])} " in out
            assert f"start delay        {human_duration(took[1])} " in out
        # And the report sums up exactly those queue waits
        report = ok_json(hakuriver(cluster, "report", "queue-wait", "--by", "owner", "--json"))
        [row] = [dict(zip(report["columns"], r, strict=True)) for r in report["rows"]]
        waits = [in_sql[task_id][0] for task_id in ids]
        assert row["owner"] == "dora" and row["tasks"] == 3
        assert row["max_wait_s"] == pytest.approx(max(waits), abs=5e-4)
        assert row["avg_wait_s"] == pytest.approx(sum(waits) / 3, abs=5e-4)
        # And so does the Parquet export
        out = tmp_path / "export"
        ok_json(hakuriver(cluster, "export", "--parquet", str(out), "--json"))
    parquet = duckdb.connect()
    exported = parquet.execute(
        "SELECT task_id, queue_wait_s, start_delay_s, run_time_s"
        f" FROM '{out / 'tasks.parquet'}' ORDER BY 1"
    )
    assert {row[0]: tuple(row[1:]) for row in exported.fetchall()} == in_sql
    # The export has the whole command: executable, arguments, and the line to paste in a shell
    commands = parquet.execute(
        f"SELECT DISTINCT command, args, command_line FROM '{out / 'tasks.parquet'}'"
    ).fetchall()
    assert commands == [("sh", ["-c", "sleep 0.2"], "sh -c 'sleep 0.2'")]


# -- one actor rule -----------------------------------------------------------------------


def test_kill_pause_and_resume_record_the_same_actor(
    tmp_path: Path, hakuriver: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_cluster(tmp_path, agents=("n1",)) as cluster:
        bob = cluster.add_user("bob")
        bob_id = bob.split(".")[0].split("_")[2]
        # Given bob's running task
        with cluster.client_as(bob) as as_bob:
            r = as_bob.post(
                "/api/tasks",
                json={
                    "command": "sh",
                    "args": list(gated(cluster.root / "never")),
                    "container": "NULL",
                },
            )
            assert r.status_code == 201, r.text
            [task_id] = r.json()["task_ids"]
        cluster.wait_state(task_id, "running")
        # When bob's CLI pauses, resumes and kills it
        monkeypatch.setenv("HAKURIVER_TOKEN", bob)
        for verb, state in (("pause", "paused"), ("resume", "running"), ("kill", "killed")):
            code, _, err = hakuriver(cluster, "task", verb, task_id)
            assert code == 0, err
            cluster.wait_state(task_id, state)
        monkeypatch.delenv("HAKURIVER_TOKEN")
        requests = ok_lines(
            hakuriver(
                cluster,
                "events",
                "tail",
                "--task",
                task_id,
                "--kind",
                "task.pause_requested,task.resume_requested,task.kill_requested",
                "--json",
            )
        )
        # Then each request is recorded as bob's, with the token he used
        actors = {
            e["kind"]: (e["payload"]["requested_by"], e["payload"]["actor"]) for e in requests
        }
        mine = ("bob", {"user": "bob", "token": bob_id})
        assert actors == {
            "task.pause_requested": mine,
            "task.resume_requested": mine,
            "task.kill_requested": mine,
        }
        assert cluster.task(task_id)["kill_requested_by"] == "bob"
        # History answers "who did this": events --actor, and the views' actor column
        bobs = ok_lines(hakuriver(cluster, "events", "--actor", "bob", "--json"))
        assert {e["payload"]["actor"]["user"] for e in bobs} == {"bob"}
        assert {e["kind"] for e in bobs} >= {
            "task.submitted",
            "task.kill_requested",
        }
        answer = cluster.http.post(
            "/api/sql",
            json={
                "sql": "SELECT DISTINCT e.actor, t.actor FROM events e JOIN tasks t"
                f" ON e.stream = 'task:' || t.task_id WHERE t.task_id = '{task_id}'"
                " AND e.kind = 'task.submitted'"
            },
        ).json()
        assert answer.get("rows") == [["bob", "bob"]], answer
        # And a client cannot name someone else: the old header and body are ignored
        [other] = cluster.submit("sh", *gated(cluster.root / "never"))
        cluster.wait_state(other, "running")
        named = {"X-HakuRiver-User": "zo%C3%AB"}
        assert cluster.http.post(f"/api/tasks/{other}/pause", headers=named).status_code == 202
        cluster.wait_state(other, "paused")
        legacy = cluster.http.post(f"/api/tasks/{other}/kill", json={"requested_by": "carol"})
        assert legacy.status_code == 202
        cluster.wait_state(other, "killed")
        by_kind = {
            e["kind"]: e["payload"]["requested_by"]
            for e in cluster.http.get(
                "/api/events", params={"task": other, "kind": "task.*"}
            ).json()["events"]
            if "requested_by" in e["payload"]
        }
        assert by_kind == {"task.pause_requested": "admin", "task.kill_requested": "admin"}


# -- heartbeats out of the way ------------------------------------------------------------


def test_events_tail_hides_heartbeats_unless_asked_for(tmp_path: Path, hakuriver: Run) -> None:
    with running_cluster(tmp_path, agents=("n1",)) as cluster:
        # Given a log where heartbeats (every 0.2 s here) outnumber everything else
        [task_id] = cluster.submit("true")
        cluster.wait_state(task_id)
        cluster.wait(lambda: heartbeats(cluster) >= 30, 20, "30 heartbeats")

        def kinds(*words: str) -> list[str]:
            return [e["kind"] for e in ok_lines(hakuriver(cluster, "events", "tail", *words))]

        # Then events tail shows what happened, without them
        shown = kinds("-n", "30", "--json")
        assert "node.heartbeat" not in shown
        assert {"task.submitted", "task.finished", "node.registered"} <= set(shown)
        assert "node.heartbeat" not in kinds("--node", "n1", "--kind", "node.*", "--json")
        # And shows them when asked for, by name or with --all
        assert set(kinds("-n", "5", "--kind", "node.heartbeat", "--json")) == {"node.heartbeat"}
        assert "node.heartbeat" in kinds("-n", "30", "--all", "--json")
        # While the REST feed keeps every kind unless told to leave some out
        feed = cluster.http.get("/api/events", params={"tail": 30}).json()["events"]
        assert "node.heartbeat" in {e["kind"] for e in feed}
        left_out = cluster.http.get(
            "/api/events", params={"tail": 30, "exclude": "node.heartbeat,env.*"}
        ).json()["events"]
        assert not {e["kind"] for e in left_out} & {"node.heartbeat"}
        refused = cluster.http.get("/api/events", params={"exclude": "node.beat"})
        assert refused.status_code == 400 and refused.json()["field"] == "exclude"

        # When following, the host filters them out: the follower sees the next task only
        follower = subprocess.Popen(
            [sys.executable, "-m", "cli.hakuriver", "events", "tail", "-f", "--json", "-n", "1"],
            env=cluster.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [lines.put(line) for line in follower.stdout],  # type: ignore[union-attr]
            daemon=True,
        ).start()
        printed: list[dict[str, Any]] = []
        try:
            # (the follower has printed its one line of tail: it is connected)
            wait_until(lambda: not lines.empty(), timeout=20)
            # Heartbeats arrive, then a task: had they been sent, they would come before it
            position = heartbeats(cluster)
            cluster.wait(lambda: heartbeats(cluster) >= position + 3, 20, "3 more heartbeats")
            [after] = cluster.submit("true")
            cluster.wait_state(after)

            def printed_the_finish() -> bool:
                while not lines.empty():
                    printed.append(json.loads(lines.get()))
                return any(
                    e["kind"] == "task.finished" and e["payload"]["task_id"] == after
                    for e in printed
                )

            wait_until(printed_the_finish, timeout=20)
        finally:
            follower.terminate()
            follower.communicate(timeout=10)
        assert "node.heartbeat" not in {e["kind"] for e in printed}
        cluster.stop_host()
    # And offline, on the file, the same
    assert "node.heartbeat" not in kinds("-n", "30", "--json", "--db", str(cluster.db_file))
    assert "node.heartbeat" in kinds("-n", "30", "--all", "--json", "--db", str(cluster.db_file))


def heartbeats(cluster: Cluster) -> int:
    """How many heartbeats the log holds."""
    page = cluster.http.get("/api/events", params={"kind": "node.heartbeat", "limit": 10000}).json()
    return len(page["events"])
