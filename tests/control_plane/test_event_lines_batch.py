"""A commit's log lines are made on the log's writing thread (control_plane/log_lines.py).

The host's handler (cli/hakuriver/logs.py ``_OffTheLoop``) takes a whole commit as one
record: the event loop pays one queue put per commit, the writing thread makes the lines.
The lines are the ones made on the loop (every event of interest, its seq, the node of a
task event that names none as the state had it at the commit), and lines still queued
when the process exits are written, even after Sanic's ``dictConfig`` emptied logging's
list of handlers (issue 19).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from cli.hakuriver.logs import JsonFormatter, _OffTheLoop
from control_plane.log_lines import EventLines, event_lines
from events.envelope import Recorded, new_event
from events.types import EnvSynced, NodeHeartbeat, TaskKillRequested, kind_of
from projections.cluster import ClusterState

REPO = Path(__file__).resolve().parents[2]


class TaskAt:
    def __init__(self, node: str) -> None:
        self.node = node


class StateDouble:
    """The one part of the state a line reads: a task's node."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskAt] = {"t1": TaskAt("n1")}


def recorded(events: list[Any]) -> list[Recorded]:
    out = []
    for seq, event in enumerate(events, start=10):
        new = new_event(event, source="n1")
        out.append(
            Recorded(
                seq=seq,
                id=new.id,
                kind=kind_of(event),
                stream=event.stream,
                source="n1",
                occurred_at_us=new.occurred_at_us,
                recorded_at_us=new.occurred_at_us,
                schema_version=1,
                hash=b"",
                event=event,
            )
        )
    return out


class Counting(_OffTheLoop):
    def __init__(self, target: logging.Handler) -> None:
        super().__init__(target)
        self.enqueued: list[logging.LogRecord] = []

    def enqueue(self, record: logging.LogRecord) -> None:
        self.enqueued.append(record)
        super().enqueue(record)


@contextlib.contextmanager
def host_logger(handler: logging.Handler) -> Iterator[None]:
    """The host's event logger as the host has it, writing to ``handler`` alone (another
    test's ``dictConfig`` may have disabled it or set its level)."""
    log = logging.getLogger("hakuriver.host.events")
    saved = log.handlers[:], log.propagate, log.level, log.disabled
    log.handlers, log.propagate, log.disabled = [handler], False, False
    log.setLevel(logging.INFO)  # (clears the logger's cache of levels)
    try:
        yield
    finally:
        log.handlers, log.propagate, _, log.disabled = saved
        log.setLevel(saved[2])


def test_a_commit_is_one_record_and_its_lines_are_the_loops() -> None:
    state = StateDouble()
    listener = event_lines(lambda: cast(ClusterState, state))
    batch = recorded(
        [
            TaskKillRequested(task_id="t1", requested_by="alice"),  # names no node
            NodeHeartbeat(node="n1"),  # no line
            EnvSynced(name="env", node="n1", timestamp=1, sha256="ab" * 32, duration_s=1.5),
        ]
    )
    # Given the host's handler (its writer thread), and a plain one
    written = io.StringIO()
    target = logging.StreamHandler(written)
    target.setFormatter(JsonFormatter())
    handler = Counting(target)
    plain_out = io.StringIO()
    plain = logging.StreamHandler(plain_out)
    plain.setFormatter(JsonFormatter())
    try:
        # When a commit is logged through each
        with host_logger(handler):
            listener(batch)
            # Then the host's handler got one record for the whole commit
            assert len(handler.enqueued) == 1 and isinstance(handler.enqueued[0], EventLines)
            # And the node comes from the state at the commit, not when the line is made
            state.tasks["t1"] = TaskAt("n2")
            handler.drain()
    finally:
        handler.close()
    state.tasks["t1"] = TaskAt("n1")
    with host_logger(plain):
        listener(batch)

    def bodies(text: str) -> list[dict[str, Any]]:
        return [{**json.loads(line), "ts": ""} for line in text.splitlines()]

    got = bodies(written.getvalue())
    assert got == bodies(plain_out.getvalue())
    assert len(got) == 2, got
    assert got[0]["msg"] == "task kill requested by alice"
    assert (got[0]["task"], got[0]["node"], got[0]["seq"]) == ("t1", "n1", 10)
    assert got[1]["msg"] == "environment env synced in 1.5s" and got[1]["seq"] == 12


def test_lines_still_queued_at_exit_are_written(tmp_path: Path) -> None:
    """A process that exits with a commit's lines still queued writes them all, after a
    ``dictConfig`` (Sanic's, at the host's start) emptied logging's list of handlers."""
    path = tmp_path / "host.log"
    script = textwrap.dedent(
        f"""
        import logging, logging.config
        from cli.hakuriver import logs
        from control_plane.log_lines import EventLines
        from events.envelope import Recorded, new_event
        from events.types import EnvSynced

        logs.configure({{"logging": {{"file": {str(path)!r}}}}})
        logging.config.dictConfig({{"version": 1, "disable_existing_loggers": False}})
        logging.getLogger().setLevel(logging.INFO)
        event = EnvSynced(name="env", node="n1", timestamp=1, sha256="ab" * 32, duration_s=1.5)
        new = new_event(event, source="n1")
        one = Recorded(seq=1, id=new.id, kind="env.synced", stream=event.stream,
            source="n1", occurred_at_us=1, recorded_at_us=1, schema_version=1, hash=b"",
            event=event)
        log = logging.getLogger("hakuriver.host.events")
        for _ in range(10):
            log.handle(EventLines([one] * 2000, {{}}))
        """
    )
    subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        check=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO)},
    )
    lines = path.read_text().splitlines()
    assert len(lines) == 20_000 and all("environment env synced" in line for line in lines)


def test_a_line_logged_while_the_process_exits_is_written_and_the_exit_does_not_hang(
    tmp_path: Path,
) -> None:
    """A record that comes after the exit's drain is written on the caller's thread. Late in
    the exit (an error logged while the interpreter collects what is left), starting the
    writing thread again hung the host on its way out: the thread never gets to run, and
    its start waits forever (tests/chaos/test_chaos_partition.py's stop waited 30 s for it,
    every time; the hang itself needs that late moment, which this test does not reach)."""
    path = tmp_path / "host.log"
    script = textwrap.dedent(
        f"""
        import atexit, logging
        from cli.hakuriver import logs

        # Registered before the handler's own: called after the exit's drain (LIFO).
        atexit.register(lambda: logging.getLogger("hakuriver.host").error("collected at exit"))
        logs.configure({{"logging": {{"file": {str(path)!r}}}}})
        logging.getLogger("hakuriver.host").warning("before the exit")
        """
    )
    subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        check=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO)},
    )
    text = path.read_text()
    assert "before the exit" in text and "collected at exit" in text
