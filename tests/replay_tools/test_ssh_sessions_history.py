"""SSH sessions (gateway tunnels and ``vps shell``) in ``task history`` and the SQL views.

Their events live in the session's own stream (``ssh:<session>``); a task's history
gathers those that name it, and the ``ssh_sessions`` view has one row per session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from replay_logs import write_log

from cli.hakuriver.main import main
from control_plane.history import HistoryService
from events.envelope import NewEvent, new_event
from events.store import EventStore
from events.types import (
    AnyEvent,
    NodeRegistered,
    SshSessionClosed,
    SshSessionOpened,
    SshVia,
    TaskFinished,
    TaskKillRequested,
    TaskPlaced,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
    VpsReady,
)
from replay_tools.analytics import run_readonly_sql
from replay_tools.logfile import LogFile
from replay_tools.queries import SqlQuery
from replay_tools.task_names import UnknownTask
from replay_tools.timeline import task_history, task_timeline

pytestmark = pytest.mark.timeout(60)

VPS = TaskSpec(
    task_type="vps",
    command="",
    container="ubuntu",
    owner="alice",
    batch_id="b",
    ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey alice@laptop",
)
KEY = "SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def host(event: AnyEvent) -> NewEvent:
    return new_event(event, source="host")


def n1(event: AnyEvent) -> NewEvent:
    return new_event(event, source="n1")


def gateway_open(session: str, task: str, user: str = "alice") -> NewEvent:
    return host(
        SshSessionOpened(
            session_id=session,
            task_id=task,
            user=user,
            client_address="203.0.113.7:50022",
            via="gateway",
            node="n1",
            address="10.0.0.11",
            port=32768,
            key_fingerprint=KEY,
        )
    )


def shell_open(session: str, task: str) -> NewEvent:
    return host(
        SshSessionOpened(
            session_id=session,
            task_id=task,
            user="alice",
            client_address="127.0.0.1",
            via="shell",
            node="n1",
        )
    )


def closed(session: str, task: str, via: SshVia, **facts: Any) -> NewEvent:
    return host(SshSessionClosed(session_id=session, task_id=task, user="alice", via=via, **facts))


def cluster() -> list[NewEvent]:
    """Two VPS tasks on n1: ``vps-a`` with a finished gateway tunnel and a shell still
    open when it is killed, ``vps-b`` with a tunnel of its own, interleaved (seqs 1-14)."""
    registered = NodeRegistered(node="n1", address="10.0.0.11", cores=4, memory_bytes=8 << 30)
    return [
        n1(registered),
        host(TaskSubmitted(task_id="vps-a", spec=VPS)),
        host(TaskSubmitted(task_id="vps-b", spec=VPS)),
        host(TaskPlaced(task_id="vps-a", node="n1", cores=1)),
        host(TaskPlaced(task_id="vps-b", node="n1", cores=1)),
        n1(TaskStarted(task_id="vps-a", node="n1", container_id="c-a", ssh_port=32768)),
        n1(VpsReady(task_id="vps-a", node="n1", address="10.0.0.11", ssh_port=32768)),
        gateway_open("gw-1", "vps-a"),  # 8
        gateway_open("gw-b", "vps-b", user="bob"),  # 9
        closed(
            "gw-1",
            "vps-a",
            "gateway",
            bytes_in=4096,
            bytes_out=123456,
            duration_s=61.5,
            reason="client closed",
        ),  # 10
        shell_open("sh-1", "vps-a"),  # 11
        closed(
            "gw-b",
            "vps-b",
            "gateway",
            bytes_in=1,
            bytes_out=2,
            duration_s=0.25,
            reason="vps closed",
        ),  # 12
        host(TaskKillRequested(task_id="vps-a", requested_by="alice", reason="stopped")),
        n1(TaskFinished(task_id="vps-a", state="killed", exit_code=-15)),  # 14
    ]


@pytest.fixture
async def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "events.duckdb"
    await write_log(path, cluster())
    return path


def test_a_tasks_history_holds_its_sessions_between_its_own_events(log_path: Path) -> None:
    # Given a VPS task with a gateway tunnel and a shell, and another task's tunnel between
    # When its history is read from the log file
    document = task_history(log_path, "vps-a")
    # Then its sessions' events sit among its own, in seq order, and the other's are absent
    assert [(e["seq"], e["kind"]) for e in document["events"]] == [
        (2, "task.submitted"),
        (4, "task.placed"),
        (6, "task.started"),
        (7, "vps.ready"),
        (8, "ssh.session_opened"),
        (10, "ssh.session_closed"),
        (11, "ssh.session_opened"),
        (13, "task.kill_requested"),
        (14, "task.finished"),
    ]
    details = {e["seq"]: e["detail"] for e in document["events"]}
    assert details[8] == (
        "alice tunnelled to task vps-a on n1 (sshd at 10.0.0.11:32768) from 203.0.113.7:50022"
    )
    assert details[10].startswith("alice's tunnel to task vps-a closed after 61.5 s")
    assert "client closed" in details[10]
    assert details[11] == "alice opened a shell in VPS task vps-a on n1 from 127.0.0.1"
    # The time since the previous event counts from the session's event before it.
    assert document["events"][5]["since_previous_s"] is not None
    # And the state is the one its own events give: killed on n1, its durations set
    assert (document["state"], document["node"]) == ("killed", "n1")
    assert document["run_time_s"] is not None


def test_the_cli_shows_sessions_in_the_offline_history(
    log_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "240")
    monkeypatch.setenv("HAKURIVER_CONFIG", str(log_path.parent / "none.toml"))
    assert main(["task", "history", "vps-a", "--db", str(log_path)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "ssh.session_" in line]
    assert len(lines) == 3, out
    assert "alice tunnelled to task vps-a on n1 (sshd at 10.0.0.11:32768)" in lines[0]
    assert "alice's tunnel to task vps-a closed after 61.5 s" in lines[1]
    assert "alice opened a shell in VPS task vps-a" in lines[2]
    assert "killed on n1" in out.splitlines()[0]


def test_an_unrelated_tasks_history_has_only_its_own_sessions(log_path: Path) -> None:
    timeline = task_timeline(log_path, "vps-b")
    assert [(e.seq, e.kind) for e in timeline] == [
        (3, "task.submitted"),
        (5, "task.placed"),
        (9, "ssh.session_opened"),
        (12, "ssh.session_closed"),
    ]
    assert timeline[2].detail.startswith("bob tunnelled to task vps-b")
    document = task_history(log_path, "vps-b")
    assert document["state"] == "assigning"  # never started: sessions do not move it


async def test_sessions_alone_do_not_make_a_task_known(tmp_path: Path) -> None:
    # A session naming a task that has no event of its own (a forged or foreign log).
    path = tmp_path / "orphan.duckdb"
    await write_log(path, [gateway_open("gw-x", "ghost")])
    with pytest.raises(UnknownTask):
        task_history(path, "ghost")


def test_the_log_reads_a_tasks_sessions_alone(log_path: Path) -> None:
    with LogFile(log_path) as log:
        assert [r.seq for r in log.read(sessions_of="vps-a")] == [8, 10, 11]
        assert [r.seq for r in log.read(sessions_of="vps-a", after=8, until=10)] == [10]
        assert log.read(sessions_of="nobody") == []


SESSION_COLUMNS = [
    "session_id",
    "task_id",
    "user",
    "via",
    "client_address",
    "node",
    "address",
    "port",
    "key_fingerprint",
    "opened_at",
    "opened_at_us",
    "closed_at",
    "closed_at_us",
    "duration_s",
    "bytes_in",
    "bytes_out",
    "reason",
]


def test_the_ssh_sessions_view_has_a_row_per_session(log_path: Path) -> None:
    columns, rows, _ = run_readonly_sql(
        log_path, "SELECT * FROM ssh_sessions ORDER BY opened_at_us"
    )
    assert columns == SESSION_COLUMNS
    by_id = {row[0]: dict(zip(columns, row, strict=True)) for row in rows}
    assert sorted(by_id) == ["gw-1", "gw-b", "sh-1"]
    with LogFile(log_path) as log:
        at = {r.seq: r.recorded_at_us for r in log.read()}
    # A closed gateway tunnel: where it went, and how it ended
    tunnel = by_id["gw-1"]
    assert {k: tunnel[k] for k in SESSION_COLUMNS if not k.endswith("_at")} == {
        "session_id": "gw-1",
        "task_id": "vps-a",
        "user": "alice",
        "via": "gateway",
        "client_address": "203.0.113.7:50022",
        "node": "n1",
        "address": "10.0.0.11",
        "port": 32768,
        "key_fingerprint": KEY,
        "opened_at_us": at[8],
        "closed_at_us": at[10],
        "duration_s": 61.5,
        "bytes_in": 4096,
        "bytes_out": 123456,
        "reason": "client closed",
    }
    assert int(tunnel["opened_at"].timestamp() * 1e6) == at[8]
    # An open shell: opened, nothing of an end yet
    shell = by_id["sh-1"]
    assert (shell["task_id"], shell["via"], shell["opened_at_us"]) == ("vps-a", "shell", at[11])
    assert (shell["address"], shell["port"], shell["key_fingerprint"]) == ("", 0, "")
    ended = ("closed_at", "closed_at_us", "duration_s", "bytes_in", "bytes_out", "reason")
    assert all(shell[k] is None for k in ended)
    assert (by_id["gw-b"]["user"], by_id["gw-b"]["bytes_out"]) == ("bob", 2)


async def test_a_lone_end_and_a_repeated_end_still_give_one_row(tmp_path: Path) -> None:
    # An end recorded twice (a retried append is deduplicated by id; a second report is
    # not) and an end whose opening is missing from the log.
    path = tmp_path / "odd.duckdb"
    await write_log(
        path,
        [
            gateway_open("gw-1", "vps-a"),
            closed("gw-1", "vps-a", "gateway", bytes_in=10, reason="client closed"),
            closed("gw-1", "vps-a", "gateway", bytes_in=99, reason="gateway stopped"),
            closed("sh-9", "vps-a", "shell", bytes_out=7, reason="vps closed"),
        ],
    )
    _, rows, _ = run_readonly_sql(
        path,
        "SELECT session_id, task_id, user, via, opened_at_us IS NULL, bytes_in, bytes_out, reason"
        " FROM ssh_sessions ORDER BY session_id",
    )
    assert rows == [
        ("gw-1", "vps-a", "alice", "gateway", False, 10, 0, "client closed"),
        ("sh-9", "vps-a", "alice", "shell", True, 0, 7, "vps closed"),
    ]


def test_user_sql_may_aggregate_the_sessions_view(log_path: Path) -> None:
    # The documented example (docs/history.md): bytes per user per day.
    sql = """
        SELECT user, date_trunc('day', opened_at) AS day, count(*) AS sessions,
            sum(bytes_in) AS bytes_in, sum(bytes_out) AS bytes_out
        FROM ssh_sessions GROUP BY ALL ORDER BY user
    """
    columns, rows, _ = run_readonly_sql(log_path, sql)
    assert columns == ["user", "day", "sessions", "bytes_in", "bytes_out"]
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [
        ("alice", 2, 4096, 123456),
        ("bob", 1, 1, 2),
    ]


async def test_the_host_serves_sessions_in_history_and_sql(tmp_path: Path) -> None:
    # The live path: the host's history readers (TEMP views over its own store).
    store = await EventStore.open(tmp_path / "log.duckdb")
    service = HistoryService(store)
    try:
        await service.start()
        for event in cluster():
            await store.append([event])
        document = await service.run(lambda cur: service.history(cur).task_history("vps-a"))
        kinds = [e["kind"] for e in document["events"]]
        assert kinds.count("ssh.session_opened") == 2 and kinds.count("ssh.session_closed") == 1
        assert document["state"] == "killed"
        answer = await service.sql(
            SqlQuery("SELECT session_id, bytes_out FROM ssh_sessions ORDER BY session_id", 100)
        )
        assert answer["columns"] == ["session_id", "bytes_out"]
        assert answer["rows"] == [["gw-1", 123456], ["gw-b", 2], ["sh-1", None]]
    finally:
        await service.close()
        await store.close()
