"""Restart cost against history length (issue 19: ``rebuild_1m_vs_100k_ratio``).

A restart is a new process that opens the log, restores the newest ``cluster`` snapshot
and folds the tail after it. It must not grow with the history: the figure is the rebuild
time of a 1M-event log over that of a 100k one (``--full``: 10M over 1M), both built by
the same simulation with the same snapshot placement (half a period before the end, the
mean tail a crash leaves), so the tails are equally long and only the history differs.

Prints one ``name value`` line per figure, then the ratios (``ratios.report_ratios``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ratios import report, report_ratios
from support.histories import ClusterSimulation

from control_plane.state_files import StateFiles
from events.store import EventStore
from projections.cluster import ClusterState

SNAPSHOT_EVERY = 50_000
__all__ = ["SNAPSHOT_EVERY", "build_log", "main", "report"]


async def build_log(path: Path, n_events: int) -> int:
    """Write a simulated log of ``n_events`` with periodic snapshots; return its task count.

    The snapshots are taken as the control plane takes them (``ControlPlane.snapshot``):
    ended tasks go to the archive, the snapshot carries the others.
    """
    sim = ClusterSimulation(
        random.Random(11), nodes=20, heartbeat_share=0.47, offline_chance=0.0002
    )
    state = ClusterState()
    stream = sim.events(n_events)  # more tasks than needed: we stop at n_events
    written = 0
    # Snapshots fall half a period before the end, so the rebuild folds the mean tail
    # a crash leaves (a clean shutdown snapshots at the end and leaves none).
    next_snapshot = SNAPSHOT_EVERY // 2
    async with await EventStore.open(path) as store:
        archive = StateFiles(store)
        store.add_listener(state.apply_all)
        while written < n_events:
            chunk = [
                e for _, e in zip(range(min(10_000, n_events - written)), stream, strict=False)
            ]
            await store.append(chunk)
            written += len(chunk)
            if written >= next_snapshot:
                await archive.snapshot(state)
                next_snapshot += SNAPSHOT_EVERY
    return len(state.tasks)


REBUILD_CHILD = r"""
import asyncio, json, sys, time
t0 = time.perf_counter()
from events.store import EventStore
from control_plane.state_files import StateFiles
from projections.cluster import ClusterState
t_import = time.perf_counter() - t0

async def main():
    start = time.perf_counter()
    store = await EventStore.open(sys.argv[1])
    opened = time.perf_counter()
    if sys.argv[2] == "snapshot":
        state, after, tail = await StateFiles(store).rebuild()
    else:
        tail = await store.read(after=0)
        state = ClusterState.rebuild(None, tail)
    done = time.perf_counter()
    assert state.last_seq == store.last_seq, (state.last_seq, store.last_seq)
    print(json.dumps({"total": done - start, "open": opened - start, "tail": len(tail),
                      "tasks": len(state.tasks), "imports": t_import}))
    await store.close()

asyncio.run(main())
"""


def rebuild_in_fresh_process(path: Path, mode: str) -> dict[str, float]:
    """Time open + snapshot + tail + fold in a new interpreter (imports timed apart)."""
    out = subprocess.check_output(
        [sys.executable, "-c", REBUILD_CHILD, str(path), mode],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    return dict(json.loads(out))


async def build(tmp: Path, n_events: int, label: str) -> Path:
    """Build the simulated log of ``n_events`` (with its snapshots and archive)."""
    path = tmp / f"log_{label}.duckdb"
    t0 = time.perf_counter()
    tasks = await build_log(path, n_events)
    print(
        f"# built {label} log: {n_events} events, {tasks} tasks in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    return path


def bench_rebuilds(logs: dict[str, Path], runs: int = 5, full_fold: str | None = None) -> None:
    """Rebuild each log ``runs`` times in fresh processes, the logs taking turns (so that
    a burst of another process's work on this shared machine falls on both alike), and
    report each log's best: a restart's own cost."""
    results: dict[str, list[dict[str, float]]] = {label: [] for label in logs}
    for _ in range(runs):
        for label, path in logs.items():
            results[label].append(rebuild_in_fresh_process(path, "snapshot"))
    for label, runs_of in results.items():
        best = min(runs_of, key=lambda r: r["total"])
        report(f"rebuild_{label}_events_s", best["total"])
        report(f"rebuild_{label}_tail_events", best["tail"])
        report(f"rebuild_{label}_open_s", best["open"])
    if full_fold is not None:
        result = rebuild_in_fresh_process(logs[full_fold], "fold")
        report(f"fold_{full_fold}_events_without_snapshot_s", result["total"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="add the 10M-event case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hakuriver-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        logs = {
            "100k": await build(tmp, 100_000, "100k"),
            "1m": await build(tmp, 1_000_000, "1m"),
        }
        if args.full:
            logs["10m"] = await build(tmp, 10_000_000, "10m")
        bench_rebuilds(logs, full_fold="1m" if args.full else None)
    report_ratios()


if __name__ == "__main__":
    asyncio.run(main())
