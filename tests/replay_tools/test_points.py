"""Points of history as users write them: seqs, ISO 8601 times, relative times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.views import TaskOut
from events.types import TaskSpec
from projections.tasks import TaskView
from replay_tools.points import MAX_US, MIN_US, Point, iso, parse_point, parse_time

NOW = 1_795_255_200_000_000  # 2026-11-21T10:00:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1200", Point(seq=1200)),
        ("0", Point(seq=0)),
        ("now", Point(at_us=NOW)),
        ("-10m", Point(at_us=NOW - 600_000_000)),
        ("10m ago", Point(at_us=NOW - 600_000_000)),
        ("-1.5h", Point(at_us=NOW - 5_400_000_000)),
        ("-2d", Point(at_us=NOW - 2 * 86_400_000_000)),
        ("2026-11-21T10:00:00Z", Point(at_us=NOW)),
        ("2026-11-21T12:00:00+02:00", Point(at_us=NOW)),
        ("2026-11-21T12:00:00 02:00", Point(at_us=NOW)),  # "+" lost in a query string
        ("2026-11-21 10:00", Point(at_us=NOW)),
        ("2026-11-21T10:00:00.000042", Point(at_us=NOW + 42)),
        ("2026-11-21", Point(at_us=NOW - 10 * 3_600_000_000)),
    ],
)
def test_points_parse(text: str, expected: Point) -> None:
    assert parse_point(text, now_us=NOW) == expected


@pytest.mark.parametrize(
    ("text", "says"), [("-5", "not negative"), ("10m", "not a time"), ("yesterday", "not a time")]
)
def test_what_is_not_a_point_says_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_point(text, now_us=NOW)


def test_iso_is_exact_to_the_microsecond() -> None:
    assert iso(NOW + 1) == "2026-11-21T10:00:00.000001Z"
    assert iso(None) is None


@given(st.integers(min_value=MIN_US, max_value=MAX_US))
def test_every_time_the_log_can_hold_is_written_exactly_and_reads_back(us: int) -> None:
    # One formatter for every document (the API's task and node views included): exact
    # to the microsecond over DuckDB's whole range, where a float of seconds is not
    written = iso(us)
    assert written is not None and written.endswith("Z")
    assert parse_time(written, now_us=NOW) == us


def test_the_api_views_write_times_with_the_same_formatter() -> None:
    far = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z: a float of seconds rounds it
    task = TaskView(task_id="t", spec=TaskSpec(command="x", batch_id="b"), submitted_at_us=far)
    assert TaskOut.of(task).submitted_at == "9999-12-31T23:59:59.999999Z"
    assert TaskOut.of(TaskView(task_id="t", spec=task.spec)).submitted_at is None  # 0: not known
