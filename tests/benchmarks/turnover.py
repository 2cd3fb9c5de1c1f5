"""Where a slot's turnover goes, read back from the log of a throughput run (issue 19).

A slot on a full node turns over as: the agent sees a task's end and reports it
(``task.finished``'s ``occurred_at``), the host commits it (``recorded_at``), the next
queued task is placed (its ``task.placed``'s ``recorded_at``: the same commit since the
end's commit places into the room it frees, docs/decisions.md), and the agent runs it to
its end (the next ``task.finished``'s ``occurred_at``: the ``Run``'s way to the agent,
the spawn, the task, the exit seen). Printed as ``#`` comment lines, p50 and p90 of each
step, for docs/performance.md's "where the time goes".
"""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

import httpx


def _events(http: httpx.Client) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = http.get("/api/events", params={"after": after, "limit": 1000}).json()
        if not page["events"]:
            return events
        events += page["events"]
        after = page["next_after"]


def _ms(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000


def _line(name: str, values: list[float]) -> str:
    if len(values) < 2:
        return f"# {name}: n={len(values)}"
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
    return f"# {name}: p50 {statistics.median(values):.2f} ms, p90 {p90:.2f} ms (n={len(values)})"


def report_turnover(http: httpx.Client, label: str) -> None:
    """Print the steps of the slot turnover of the run whose log ``http`` serves."""
    tasks: dict[str, dict[str, float]] = {}
    for e in _events(http):
        task_id = e["payload"].get("task_id")
        if task_id is None or e["kind"] not in ("task.submitted", "task.placed", "task.finished"):
            continue
        steps = tasks.setdefault(task_id, {})
        steps[e["kind"] + "@recorded"] = _ms(e["recorded_at"])
        steps[e["kind"] + "@occurred"] = _ms(e["occurred_at"])
    ends = sorted(
        t["task.finished@recorded"] for t in tasks.values() if "task.finished@recorded" in t
    )
    reported, placed_after, ran = [], [], []
    for t in tasks.values():
        if "task.finished@recorded" in t:
            reported.append(t["task.finished@recorded"] - t["task.finished@occurred"])
        if "task.placed@recorded" not in t or "task.finished@occurred" not in t:
            continue
        ran.append(t["task.finished@occurred"] - t["task.placed@recorded"])
        placed = t["task.placed@recorded"]
        if placed == t.get("task.submitted@recorded"):
            continue  # placed at its submission: no end made room for it
        before = [end for end in ends if end <= placed]
        if before:
            placed_after.append(placed - before[-1])
    print(f"# slot turnover, {label}:", flush=True)
    print(_line("end seen by the agent -> its commit on the host", reported), flush=True)
    print(_line("an end's commit -> the next placement's commit", placed_after), flush=True)
    print(_line("placement's commit -> its end seen by the agent", ran), flush=True)
