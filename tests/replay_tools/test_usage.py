"""``replay_tools.usage``: the overview chart's numbers, over a small log written by hand
(an ``events`` table with the store's columns), checked against what they should be."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pytest

from replay_tools.queries import HistoryError
from replay_tools.usage import usage_series, usage_window

S = 1_000_000  # one second in microseconds
T0 = 1_800_000_000 * S


def _log(events: list[tuple[int, str, dict[str, Any]]]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        "CREATE TABLE events (seq BIGINT, kind VARCHAR, recorded_at TIMESTAMPTZ, payload JSON)"
    )
    for seq, (at_s, kind, payload) in enumerate(events, start=1):
        con.execute(
            "INSERT INTO events VALUES (?, ?, make_timestamptz(?), ?)",
            [seq, kind, T0 + at_s * S, json.dumps(payload)],
        )
    return con


def _node(at: int, name: str, cores: int, gpus: int = 0) -> tuple[int, str, dict[str, Any]]:
    return (
        at,
        "node.registered",
        {
            "node": name,
            "cores": cores,
            "memory_bytes": 1000,
            "gpus": [{"id": i} for i in range(gpus)],
        },
    )


def test_buckets_average_peak_and_total() -> None:
    con = _log(
        [
            _node(0, "a", 8, gpus=2),
            _node(0, "b", 4),
            # task 1: 2 cores and a GPU from 10 s to 30 s; task 2: 4 cores from 15 s to 16 s
            (10, "task.placed", {"task_id": "t1", "node": "a", "cores": 2, "gpu_ids": [0]}),
            (15, "task.placed", {"task_id": "t2", "node": "b", "cores": 4, "memory_bytes": 500}),
            (16, "task.finished", {"task_id": "t2", "state": "completed"}),
            (30, "task.finished", {"task_id": "t1", "state": "completed"}),
            (35, "node.offline", {"node": "b"}),
        ]
    )
    # 40 s in 4 buckets of 10 s: [0,10) [10,20) [20,30) [30,40]
    u = usage_series(con, end_us=T0 + 40 * S, hours=40 / 3600, points=4)
    assert u.step_s == pytest.approx(10)
    assert u.cores.allocated == pytest.approx([0, 2.0 + 0.4, 2.0, 0])
    assert u.cores.allocated_peak == [0, 6, 2, 2]  # 2 held at 30 s, until it ended then
    assert u.cores.total == [12, 12, 12, 8]  # b went offline at 35 s
    assert u.nodes_online == [2, 2, 2, 1]
    assert u.gpus.allocated_peak == [0, 1, 1, 1]
    assert u.gpus.total == [2, 2, 2, 2]
    assert u.memory_bytes.allocated_peak == [0, 500, 0, 0]
    assert u.t == pytest.approx([(T0 + k * 10 * S) / S for k in (1, 2, 3, 4)])


def test_a_task_placed_before_the_window_counts_from_its_start() -> None:
    con = _log(
        [
            _node(0, "a", 8),
            (1, "task.placed", {"task_id": "t1", "node": "a", "cores": 3}),
            (2, "task.placed", {"task_id": "t2", "node": "a", "cores": 1}),
            (3, "task.lost", {"task_id": "t2"}),
            (50, "node.forgotten", {"node": "a"}),
        ]
    )
    u = usage_series(con, end_us=T0 + 100 * S, hours=80 / 3600, points=2)  # [20,60) [60,100]
    assert u.cores.allocated == pytest.approx([3, 3])  # t1 never ended; t2 was lost early
    assert u.cores.total == [0, 0]  # a was forgotten at 50 s
    assert u.nodes_online == [0, 0]


@pytest.mark.parametrize(
    ("hours", "points", "field"),
    [("x", None, "hours"), ("0", None, "hours"), ("inf", None, "hours"), ("745", None, "hours"),
     (None, "1", "points"), (None, "1001", "points"), (None, "1e3", "points")],
)  # fmt: skip
def test_bad_windows_are_refused_naming_the_field(
    hours: str | None, points: str | None, field: str
) -> None:
    with pytest.raises(HistoryError) as refused:
        usage_window(hours, points)
    assert refused.value.field == field


def test_the_window_defaults() -> None:
    assert usage_window(None, None) == (6.0, 120)
    assert usage_window("0.5", "2") == (0.5, 2)
