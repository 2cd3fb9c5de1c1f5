"""How long a task waited and ran: one definition for the API, the CLI, SQL and reports.

* ``queue_wait``  = submitted -> placed: time in the scheduler's queue, waiting for room.
* ``start_delay`` = placed -> started: dispatch, environment sync, process or container start.
* ``run_time``    = started -> finished (or -> lost, when its node went away).

Each is in seconds, from the store's clock (``recorded_at``), and None (SQL NULL) while
its end has not happened. ``task status``, ``task history``, the ``tasks`` SQL view, the
``queue-wait`` report and the Parquet export all use these, under these names.
"""

from __future__ import annotations

from typing import NamedTuple

from projections.jobs import JobView
from projections.tasks import TaskView


class TaskDurations(NamedTuple):
    """A task's queue wait, start delay and run time in seconds (None: not reached yet)."""

    queue_wait_s: float | None
    start_delay_s: float | None
    run_time_s: float | None


def _between(start_us: int | None, end_us: int | None) -> float | None:
    if start_us is None or end_us is None:
        return None
    return (end_us - start_us) / 1e6


def durations(task: TaskView) -> TaskDurations:
    """The three durations of a task, as the SQL view computes them (``DURATIONS_SQL``)."""
    return TaskDurations(
        queue_wait_s=_between(task.submitted_at_us, task.placed_at_us),
        start_delay_s=_between(task.placed_at_us, task.started_at_us),
        run_time_s=_between(task.started_at_us, task.finished_at_us),
    )


# The same over the task view's columns: integer microseconds subtracted exactly, then
# divided as a double, as Python does, so both give bit-identical numbers.
DURATIONS_SQL = """
    (placed_at_us - submitted_at_us) / 1e6 AS queue_wait_s,
    (started_at_us - placed_at_us) / 1e6 AS start_delay_s,
    (finished_at_us - started_at_us) / 1e6 AS run_time_s
"""


class JobDurations(NamedTuple):
    """A job's queue wait, setup time and run time in seconds (None: not reached yet).

    * ``queue_wait``: submitted -> placed (every rank at once: a job waits for N nodes);
    * ``setup_time``: placed -> the run phase (every rank's setup, and the barrier);
    * ``run_time``: the run phase -> finished (None for a job that never reached it).
    """

    queue_wait_s: float | None
    setup_time_s: float | None
    run_time_s: float | None


def job_durations(job: JobView) -> JobDurations:
    """The three durations of a job, as the ``jobs`` SQL view computes them."""
    return JobDurations(
        queue_wait_s=_between(job.submitted_at_us, job.placed_at_us),
        setup_time_s=_between(job.placed_at_us, job.run_at_us),
        run_time_s=_between(job.run_at_us, job.finished_at_us),
    )


JOB_DURATIONS_SQL = """
    (placed_at_us - submitted_at_us) / 1e6 AS queue_wait_s,
    (run_at_us - placed_at_us) / 1e6 AS setup_time_s,
    (finished_at_us - run_at_us) / 1e6 AS run_time_s
"""
