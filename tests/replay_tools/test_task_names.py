"""One rule names a task, and the host's state and the log answer it alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from replay_logs import write_log

from events.envelope import new_event
from events.types import TaskSpec, TaskSubmitted
from replay_tools.logfile import LogFile
from replay_tools.replay import state_at
from replay_tools.task_names import (
    AmbiguousTask,
    LogTasks,
    StateTasks,
    TaskIndex,
    UnknownTask,
    find_task,
)

pytestmark = pytest.mark.timeout(60)

SPEC = TaskSpec(command="true", batch_id="b")
# Three ids that share 23 characters (submitted together), and one on its own.
TOGETHER = [f"01aaaaaa-0000-7000-8000-00000000000{i}" for i in (1, 2, 3)]
ALONE = "01bbbbbb-0000-7000-8000-000000000009"


@pytest.fixture
async def log_path(tmp_path: Path) -> Path:
    """A log whose first task was recorded before task numbers (number 0), then four more."""
    events = [new_event(TaskSubmitted(task_id="t1", spec=SPEC), source="host")]
    for number, task_id in enumerate([*TOGETHER, ALONE], start=2):
        events.append(
            new_event(TaskSubmitted(task_id=task_id, spec=SPEC, number=number), source="host")
        )
    path = tmp_path / "names.duckdb"
    await write_log(path, events)
    return path


def outcome(ident: str, index: TaskIndex) -> str:
    """The id found, or the error's type and message."""
    try:
        return find_task(ident, index)
    except UnknownTask as exc:
        return f"{type(exc).__name__}: {exc}"


def test_the_state_and_the_log_name_every_task_alike(log_path: Path) -> None:
    idents = [
        *("1", "2", "5", "6", "0", "01", "007"),  # numbers, and words that are not numbers
        *("t1", "t", "t2"),  # an id shorter than a prefix is found whole, never as a prefix
        *(TOGETHER[1], ALONE, ALONE[:8], ALONE[:-1], TOGETHER[0][:8], "01aa", "ffffffff"),
    ]
    state = state_at(log_path)
    with LogFile(log_path) as log:
        # Given the host's folded state and the log itself
        from_log: dict[str, str] = {}
        for ident in idents:
            from_log[ident] = outcome(ident, LogTasks(log.con))
            # (the connection still reads after each question: no result is left open)
            assert len(log.read(after=4)) == 1
        # When each names the same words, Then they answer the same
        assert {ident: outcome(ident, StateTasks(state)) for ident in idents} == from_log
    assert from_log["1"] == "t1"  # numbered by the fold: recorded before numbers
    assert from_log["5"] == ALONE and from_log[ALONE[:8]] == ALONE
    assert from_log["t1"] == "t1" and from_log[ALONE[:-1]] == ALONE
    assert from_log["6"] == (
        "UnknownTask: no task '6' (give its number, its id, or a unique prefix of 8+ characters)"
    )
    assert from_log["01aa"].startswith("UnknownTask: no task '01aa'")
    assert from_log[TOGETHER[0][:8]] == (
        f"AmbiguousTask: '01aaaaaa' is a prefix of several tasks ({', '.join(TOGETHER)}):"
        " give more of the id"
    )


def test_an_ambiguous_prefix_is_also_an_unknown_task_with_its_candidates(log_path: Path) -> None:
    with LogFile(log_path) as log, pytest.raises(AmbiguousTask) as raised:
        find_task("01aaaaaa-0000", LogTasks(log.con))
    assert isinstance(raised.value, UnknownTask)
    assert raised.value.matches == TOGETHER and raised.value.ident == "01aaaaaa-0000"
