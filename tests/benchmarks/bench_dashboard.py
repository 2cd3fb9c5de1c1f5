"""The dashboard's task list in a real browser (Debian's chromium through Playwright).

Prints one ``name value`` line per figure:

- ``dashboard_tasks_page_floor_ms``: from navigation start to the first row of the task
  list drawn, with one task in the log (the page, its scripts and one API answer);
- ``dashboard_tasks_page_10k_ms``: the same with 10,000 tasks in the log (recorded through
  ``POST /api/batches``), and ``dashboard_tasks_page_10k_ratio`` over the floor. Goal ≤ 1000;
- ``dashboard_live_update_ms`` (p50) and ``dashboard_live_update_max_ms``: from a task's
  ``task.finished`` being recorded (its ``recorded_at``, the store's clock) to its row's state
  changing in an open list (``Date.now()`` in a MutationObserver; one machine, one clock),
  for tasks a real agent runs and finishes. Goal ≤ 300.

Each page figure is the median of fresh navigations (``--full``: more of them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.browser import browser_context, chromium_path, login
from support.cluster import Cluster

# Set before any page script runs: when the first task row is in the document (ms since
# navigation start), and when each row's state first became a final one (epoch ms).
OBSERVER = """
window.__rowsAt = null;
window.__endedAt = {};
const FINAL = new Set(["completed", "failed", "killed", "killed_oom", "lost"]);
new MutationObserver((records) => {
  const now = performance.now(), wall = Date.now();
  if (window.__rowsAt === null && document.querySelector("tr[data-task]")) window.__rowsAt = now;
  for (const r of records) {
    const el = r.target;
    if (r.type === "attributes" && el.dataset && FINAL.has(el.dataset.state)
        && !(el.dataset.number in window.__endedAt)) window.__endedAt[el.dataset.number] = wall;
  }
}).observe(document, {
  subtree: true, childList: true, attributes: true, attributeFilter: ["data-state"],
});
"""


def report(name: str, value: float) -> None:
    """Print one figure."""
    print(f"{name} {value:.6g}", flush=True)


def first_rows_ms(context: Any, url: str, runs: int) -> float:
    """Median of ``runs`` fresh navigations to the list: navigation start → first row."""
    samples = []
    for round_ in range(runs + 1):
        page = context.new_page()
        page.goto(url + "/tasks")
        page.wait_for_function("() => window.__rowsAt !== null", timeout=30_000)
        if round_:  # the first warms the caches and is not counted
            samples.append(float(page.evaluate("() => window.__rowsAt")))
        page.close()
    return statistics.median(samples)


def record_tasks(cluster: Cluster, count: int) -> None:
    """``count`` queued tasks (no agent: they stay pending), in batches of 10,000."""
    while count > 0:
        n = min(count, 10_000)
        body = {
            "tasks": [{"command": "true", "container": "NULL", "name": f"t{i}"} for i in range(n)]
        }
        r = cluster.http.post("/api/batches", json=body, timeout=300)
        assert r.status_code == 201, r.text
        count -= n


def page_figures(root: Path, runs: int) -> None:
    root.mkdir()
    cluster = Cluster(root)
    try:
        cluster.start_host()
        assert cluster.admin_token
        record_tasks(cluster, 1)
        with browser_context() as context:
            context.add_init_script(OBSERVER)
            login(context.new_page(), cluster.url, cluster.admin_token, "/")
            floor = first_rows_ms(context, cluster.url, runs)
            start = time.perf_counter()
            record_tasks(cluster, 10_000)
            print(f"# 10,000 tasks recorded in {time.perf_counter() - start:.1f} s", flush=True)
            tenk = first_rows_ms(context, cluster.url, runs)
        report("dashboard_tasks_page_floor_ms", floor)
        report("dashboard_tasks_page_10k_ms", tenk)
        report("dashboard_tasks_page_10k_ratio", tenk / floor)
    finally:
        cluster.close()


def finished_at_ms(cluster: Cluster, task_id: str) -> float:
    """When the task's ``task.finished`` was recorded (epoch ms, the store's clock)."""
    history = cluster.http.get(f"/api/tasks/{task_id}/history").json()
    found = [e["recorded_at_us"] for e in history["events"] if e["kind"] == "task.finished"]
    assert found, history
    return float(found[0]) / 1000


def live_figures(root: Path, rounds: int) -> None:
    root.mkdir()
    cluster = Cluster(root, heartbeat_interval=1.0, heartbeat_timeout=5.0)
    try:
        cluster.start_host()
        cluster.start_agent("n1")
        assert cluster.admin_token
        samples = []
        with browser_context() as context:
            context.add_init_script(OBSERVER)
            page = context.new_page()
            login(page, cluster.url, cluster.admin_token, "/tasks")
            for _ in range(rounds):
                task_id = cluster.submit("sleep", "0.5", cores=0)[0]
                number = cluster.task(task_id)["number"]
                row = f"tr[data-number='{number}'][data-state='running']"
                page.wait_for_selector(row, timeout=30_000)
                page.wait_for_function(f"() => '{number}' in window.__endedAt", timeout=30_000)
                shown = float(page.evaluate(f"() => window.__endedAt['{number}']"))
                cluster.wait_state(task_id)
                samples.append(shown - finished_at_ms(cluster, task_id))
        report("dashboard_live_update_ms", statistics.median(samples))
        report("dashboard_live_update_max_ms", max(samples))
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true", help="more navigations and rounds")
    args = parser.parse_args()
    if chromium_path() is None:
        print("# bench_dashboard: no chromium on PATH; skipped", flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="hakuriver-bench-dashboard-") as tmp:
        page_figures(Path(tmp) / "pages", runs=15 if args.full else 5)
        live_figures(Path(tmp) / "live", rounds=30 if args.full else 10)


if __name__ == "__main__":
    main()
