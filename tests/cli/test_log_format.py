"""The host's and the runner's logs (cli/hakuriver/logs.py, events/log_lines.py).

A real host and runner, each logging to its own file: the host in JSON lines (``[logging]
format = "json"``), the runner in the human format (``--log-format human`` over that
key), both rotating at a few KiB. One line per event of interest, with the task and the
node on it; a task argument holding a newline or an escape sequence forges no line, in either
format; a rotation loses no line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cluster import Cluster

from cli.hakuriver.logs import (
    SANIC_LOGGERS,
    HumanFormatter,
    JsonFormatter,
    LogOptions,
    adopt_sanic,
    configure,
    merged,
    settings_of,
)

# An argument that would start a forged line in a naive log, and colour a terminal red
# (task names refuse control characters; a command's arguments are anything).
FORGING_ARG = "x\n2030-01-01 00:00:00.000 ERROR hakuriver.host: forged\x1b[31m red\u2028sep"
HUMAN_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: "
)
ROTATE_AT = 1024  # the least [logging] max_bytes takes
TASKS = 4


class LoggingCluster(Cluster):
    """A cluster whose processes get extra command-line options, by process name."""

    def __init__(self, root: Path, args: dict[str, tuple[str, ...]], **options: Any) -> None:
        super().__init__(root, **options)
        self.process_args = args

    def _spawn(self, name: str, *args: str, **options: Any) -> Any:
        return super()._spawn(name, *args, *self.process_args.get(name, ()), **options)


def lines_of(path: Path) -> list[str]:
    """Every line of a rotated log, oldest first (``.N`` ... ``.1``, then the file)."""
    rotated = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    text = "".join(p.read_text(encoding="utf-8") for p in [*rotated, path] if p.exists())
    return text.split("\n")[:-1]  # only "\n" ends a line (not U+2028 and friends)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A host logging JSON and a runner logging human lines; tasks run to their end."""
    root = tmp_path_factory.mktemp("logs")
    host_file, runner_file = root / "logs" / "host.jsonl", root / "logs" / "n1.log"
    extra = f'[logging]\nformat = "json"\nmax_bytes = {ROTATE_AT}\nbackups = 500\n'
    args = {
        "host": ("--log-file", str(host_file)),
        "agent-n1": ("--log-format", "human", "--log-file", str(runner_file)),
    }
    cluster = LoggingCluster(root, args, extra=extra)
    try:
        cluster.start_host()
        cluster.start_agent("n1")
        [named] = cluster.submit("echo", FORGING_ARG)
        others = [cluster.submit("true")[0] for _ in range(TASKS - 1)]
        for task_id in [named, *others]:
            assert cluster.wait_state(task_id)["state"] == "completed"

        def said_finished() -> bool:
            host = [line for line in lines_of(host_file) if '"task.finished"' in line]
            runner = [line for line in lines_of(runner_file) if "task finished" in line]
            return len(host) >= TASKS and len(runner) >= TASKS

        cluster.wait(said_finished, 20, "the finished lines")
        yield {
            "named": named,
            "tasks": [named, *others],
            "host_file": host_file,
            "runner_file": runner_file,
            "cluster": cluster,
        }
    finally:
        cluster.close()


def test_json_lines_carry_task_and_node(logged: dict[str, Any]) -> None:
    records = [json.loads(line) for line in lines_of(logged["host_file"])]
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= record.keys(), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])
    named = logged["named"]
    for_task = [r for r in records if r.get("task") == named]
    kinds = [r["event"] for r in for_task]
    for kind in ("task.submitted", "task.placed", "task.started", "task.finished"):
        assert kinds.count(kind) == 1, kinds  # one line per event
    assert all(r["node"] == "n1" for r in for_task if r["event"] != "task.submitted")
    assert all(r["logger"] == "hakuriver.host.events" and r["seq"] > 0 for r in for_task)
    # The argument round-trips whole, inside its one line.
    [submitted] = [r for r in for_task if r["event"] == "task.submitted"]
    assert shlex.join(["echo", FORGING_ARG]) in submitted["msg"]
    assert not any("forged" in r["msg"] for r in records if r is not submitted)
    node_lines = [r for r in records if r.get("event") == "node.registered"]
    assert node_lines and all(r["node"] == "n1" for r in node_lines)
    # Heartbeats are events, not lines.
    assert not any(r.get("event") == "node.heartbeat" for r in records)
    # Sanic's chatter stays out below DEBUG.
    assert not any(r["logger"].startswith("sanic.") for r in records)


def test_human_lines_carry_task_and_node(logged: dict[str, Any]) -> None:
    lines = lines_of(logged["runner_file"])
    assert all(HUMAN_LINE.match(line) or line.startswith("    ") for line in lines), lines
    for task_id in logged["tasks"]:
        mine = [line for line in lines if f" task={task_id} " in line]
        assert [line.split(": ", 1)[1].split(" (")[0].split(":")[0] for line in mine] == [
            "task started",
            "task finished",
        ], mine
        assert all(line.endswith(" node=n1") for line in mine), mine
    # The runner names its node on each line, its own link's too.
    connected = [line for line in lines if "connected to" in line]
    assert connected and all(" node=n1" in line for line in connected)


def test_rotation_loses_no_line(logged: dict[str, Any]) -> None:
    for path in (logged["host_file"], logged["runner_file"]):
        assert path.with_name(path.name + ".1").exists(), sorted(path.parent.iterdir())
        for rotated in path.parent.glob(path.name + "*"):
            assert rotated.stat().st_size <= ROTATE_AT
            assert rotated.stat().st_mode & 0o077 == 0  # names users and commands: private
    records = [json.loads(line) for line in lines_of(logged["host_file"])]
    finished = [r["task"] for r in records if r.get("event") == "task.finished"]
    assert sorted(finished) == sorted(logged["tasks"])
    submitted = [r["task"] for r in records if r.get("event") == "task.submitted"]
    assert sorted(submitted) == sorted(logged["tasks"])
    runner = [line for line in lines_of(logged["runner_file"]) if ": task started" in line]
    assert len(runner) == TASKS


def test_a_task_argument_forges_no_human_line(tmp_path: Path) -> None:
    """A host logging human lines: the argument's newline and ESC are escapes in one line."""
    log_file = tmp_path / "logs" / "host.log"  # not host.log: the process's output
    cluster = LoggingCluster(
        tmp_path, {"host": ("--log-format", "human", "--log-file", str(log_file))}
    )
    try:
        cluster.start_host()
        [task_id] = cluster.submit("echo", FORGING_ARG)
        cluster.wait(
            lambda: any(f"task={task_id}" in line for line in lines_of(log_file)),
            20,
            "the submitted line",
        )
    finally:
        cluster.close()
    lines = lines_of(log_file)
    assert all(HUMAN_LINE.match(line) for line in lines), lines
    [submitted] = [line for line in lines if f"task={task_id}" in line]
    assert "\x1b" not in submitted and "\u2028" not in submitted
    assert "\\n2030-01-01 00:00:00.000 ERROR hakuriver.host: forged\\x1b[31m red\\u2028sep" in (
        submitted
    )
    assert not any(line.startswith("2030-") for line in lines)


def test_up_logs_its_host_and_its_runner_each_to_a_file(tmp_path: Path) -> None:
    """``up`` with ``[logging]``: the runner it starts gets the format and a file of its own."""
    from support.up import UpCluster

    up = UpCluster(tmp_path)
    host_file = tmp_path / "logs" / "up.jsonl"
    with up.config.open("a") as config:
        config.write(f'[logging]\nformat = "json"\nfile = "{host_file}"\n')
    runner_file = tmp_path / "logs" / "up-runner.jsonl"
    try:
        up.start()
        answer = up.http.post("/api/tasks", json={"command": "true", "container": "NULL"})
        assert answer.status_code == 201, answer.text
        [task_id] = answer.json()["task_ids"]

        def finished(path: Path) -> bool:
            return any(
                json.loads(line).get("event") == "task.finished"
                and json.loads(line).get("task") == task_id
                for line in lines_of(path)
            )

        up.wait(lambda: finished(host_file) and finished(runner_file), 30, "finished lines")
        up.stop()
    finally:
        up.close()
    runner = [json.loads(line) for line in lines_of(runner_file)]
    assert runner and all(r["node"] == "local" for r in runner)
    assert not any(r["logger"].startswith(("hakuriver.host", "sanic.")) for r in runner)


# -- the formatters and the settings, in this process ---------------------------------------


def _record(message: str, **context: Any) -> logging.LogRecord:
    record = logging.LogRecord("hakuriver.test", logging.WARNING, __file__, 1, message, (), None)
    for key, value in context.items():
        setattr(record, key, value)
    return record


def test_human_format_escapes_message_and_context() -> None:
    line = HumanFormatter().format(_record("boom\r\n\x1b]0;title\x07", task="t\n1", node="n1"))
    assert "\n" not in line and "\x1b" not in line and "\x07" not in line
    assert line.endswith("boom\\r\\n\\x1b]0;title\\x07 task=t\\n1 node=n1")


def test_the_formatters_clock_is_each_records_own_second() -> None:
    """A commit's lines share a second, so the formatters keep the last second's text:
    each line still carries its own record's time, as ``strftime`` writes it, whatever
    order the times come in (a late record, the next second, one from much earlier)."""
    human, as_json = HumanFormatter(), JsonFormatter()
    base = 1_700_000_000.0
    for created in (base + 0.1, base + 0.9, base + 1.0, base + 0.5, base + 86_400.25, base):
        record = _record("x")
        record.created = created
        millis = int(created * 1000) % 1000
        local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
        assert human.format(record).startswith(f"{local}.{millis:03d} ")
        utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        assert json.loads(as_json.format(record))["ts"] == f"{utc}.{millis:03d}Z"


def test_human_format_indents_a_traceback() -> None:
    try:
        raise ValueError("bad\nINFO forged")
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    first, *rest = HumanFormatter().format(record).split("\n")
    assert HUMAN_LINE.match(first) and rest
    assert all(line.startswith("    ") for line in rest), rest


def test_json_format_is_one_line() -> None:
    text = JsonFormatter().format(_record("a\nb\u2028c\x1b", task="t1", seq=3))
    assert "\n" not in text and "\u2028" not in text and "\x1b" not in text
    assert json.loads(text) | {"ts": ""} == {
        "ts": "",
        "level": "WARNING",
        "logger": "hakuriver.test",
        "msg": "a\nb\u2028c\x1b",
        "task": "t1",
        "seq": 3,
    }


def test_sanics_lines_come_through_ours(tmp_path: Path) -> None:
    """After ``Sanic()`` configured its loggers, its errors are written by our handler."""
    from sanic import Sanic

    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogger("hakuriver").level)
    # This process's loggers are left as they were found (other tests share it).
    kept = {
        name: (list(lg.handlers), lg.level, lg.propagate, lg.disabled)
        for name in (*SANIC_LOGGERS, "hakuriver")
        for lg in [logging.getLogger(name)]
    }
    log_file = tmp_path / "h.jsonl"
    handler = configure({"logging": {"format": "json", "file": str(log_file)}})
    try:
        Sanic("log_format_test")  # gives sanic.* handlers of their own (dictConfig)
        adopt_sanic()
        logging.getLogger("sanic.error").error("handler failed\nforged")
        logging.getLogger("sanic.server").info("Starting worker")  # chatter: not written
    finally:
        root.removeHandler(handler)
        handler.close()
        root.handlers[:] = before[0]
        root.setLevel(before[1])
        logging.getLogger("hakuriver").setLevel(before[2])
        for name, (handlers, level, propagate, disabled) in kept.items():
            lg = logging.getLogger(name)
            lg.handlers[:], lg.propagate, lg.disabled = handlers, propagate, disabled
            lg.setLevel(level)
    [line] = lines_of(log_file)
    assert json.loads(line)["logger"] == "sanic.error"
    assert json.loads(line)["msg"] == "handler failed\nforged"


def test_a_log_file_open_to_others_is_made_private(tmp_path: Path) -> None:
    from cli.hakuriver.logs import PrivateRotatingFileHandler

    path = tmp_path / "old.log"
    path.write_text("an older line\n")
    path.chmod(0o644)
    handler = PrivateRotatingFileHandler(path, maxBytes=1 << 20, backupCount=1)
    handler.close()
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_stalled_writer_does_not_stall_the_logging_caller() -> None:
    """The host logs on its event loop: a stderr pipe nobody drains (or a slow disk) must
    not block the caller; the lines are written, in order, once the pipe drains."""
    from cli.hakuriver.logs import HumanFormatter, _OffTheLoop

    read_fd, write_fd = os.pipe()
    writer = os.fdopen(write_fd, "w")
    target = logging.StreamHandler(writer)
    target.setFormatter(HumanFormatter())
    handler = _OffTheLoop(target)
    logger = logging.getLogger("hakuriver.test.stalled")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(handler)
    count, body = 200, "x" * 2000  # 400 kB: several times a pipe's buffer
    caller = threading.Thread(
        target=lambda: [logger.info("line %d %s", i, body) for i in range(count)]
    )
    caller.start()
    caller.join(20)
    try:
        assert not caller.is_alive(), "logging blocked on a pipe nobody reads"
    finally:
        chunks: list[bytes] = []
        drainer = threading.Thread(
            target=lambda: chunks.extend(iter(lambda: os.read(read_fd, 65536), b""))
        )
        drainer.start()
        logger.removeHandler(handler)
        handler.close()  # writes what is queued, then closes the pipe's end
        writer.close()
        drainer.join(20)
        os.close(read_fd)
    numbers = [int(m) for m in re.findall(rb"line (\d+) x", b"".join(chunks))]
    assert numbers == list(range(count))


def test_a_runner_sharing_the_hosts_configuration_writes_a_file_of_its_own() -> None:
    """The systemd units give host and runner the same --config: two processes rotating
    one file lose lines, so the runner writes NAME-runner.EXT beside it; --log-file wins."""
    config = {"logging": {"file": "/var/log/hakuriver/river.log"}}
    assert settings_of(merged(config)).file == "/var/log/hakuriver/river.log"
    runner = settings_of(merged(config, runner=True)).file
    assert runner == "/var/log/hakuriver/river-runner.log"
    chosen = LogOptions(log_file=Path("/tmp/mine.log"))
    assert settings_of(merged(config, chosen, runner=True)).file == "/tmp/mine.log"
    assert settings_of(merged({}, runner=True)).file == ""


def test_options_over_the_file_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAKURIVER_LOG", raising=False)
    config = {"logging": {"format": "json", "level": "debug", "file": "/var/log/h.log"}}
    options = LogOptions(log_format="human", log_file=None, log_level="warning")
    settings = settings_of(merged(config, options))
    assert (settings.format, settings.level, settings.file) == (
        "human",
        "WARNING",
        "/var/log/h.log",
    )
    monkeypatch.setenv("HAKURIVER_LOG", "error")
    assert settings_of(merged(config)).level == "ERROR"
    from cli.hakuriver.config import ConfigError

    for bad, field in (
        ({"format": "xml"}, "format"),
        ({"level": "LOUD"}, "level"),
        ({"max_bytes": 10}, "max_bytes"),
        ({"colour": True}, "colour"),
    ):
        with pytest.raises(ConfigError, match=field):
            settings_of({"logging": bad})


def test_host_refuses_a_bad_log_option(tmp_path: Path) -> None:
    """The CLI's options reach the set-up: a wrong one is refused in one line, exit 2."""
    import subprocess

    from support.cluster import REPO

    env = dict(os.environ, PYTHONPATH=str(REPO), HAKURIVER_CONFIG=str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    (tmp_path / "not-a-table.toml").write_text("logging = 3\n")
    for module, words, said in (
        ("cli.hakuriver", ["host", "--log-level", "LOUD"], "[logging] level"),
        # A file that cannot be made, by both entry points: one line, never a traceback
        ("cli.hakuriver", ["runner", "--log-file", str(tmp_path)], "[logging] file"),
        ("cli.hakuriver.serve", ["runner", "--log-file", "/proc/nope/x.log"], "[logging] file"),
        (
            "cli.hakuriver",
            ["host", "--config", str(tmp_path / "not-a-table.toml")],
            "[logging] must be a table",
        ),
    ):
        command = [sys.executable, "-m", module, *words]
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=REPO, check=False
        )
        assert done.returncode == 2, done
        assert said in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_record_queued_behind_the_writers_stop_is_written_by_the_drain() -> None:
    """Another thread can queue a record while the writing thread is being stopped (the
    drain at exit): it lands behind the stop's sentinel, and no thread is left to write
    it. The drain writes it on the caller's thread."""
    from cli.hakuriver.logs import HumanFormatter, _OffTheLoop

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    target = Keep()
    target.setFormatter(HumanFormatter())
    handler = _OffTheLoop(target)
    try:
        handler.drain()  # the writing thread stopped
        # Given a record put on the queue after the stop (the race, made deterministic)
        late = logging.LogRecord("hakuriver.test", logging.WARNING, __file__, 1, "late", None, None)
        handler.queue.put_nowait(late)  # type: ignore[attr-defined]
        # When the handler drains again (what exit does), the record is written
        handler.drain()
        assert any("late" in line for line in lines), lines
    finally:
        handler.close()
