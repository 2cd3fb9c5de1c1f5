"""What a Prometheus scrape of ``GET /api/metrics`` costs the host (issue 18, item 7).

A scrape reads the live state on the event loop (control_plane/metrics.py): one pass over
the tasks and one over the nodes, then the text exposition. Prints one ``name value``
line per figure: the median of 20 scrapes of a state folded from the simulated cluster
(tests/support/histories.py) with 10,000 tasks on 100 nodes (``--full``: 100,000), and
the cost of one commit observation (three histogram observes), which the log's writer
pays once per group commit.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from support.factories import record_in_memory
from support.histories import ClusterSimulation

from control_plane.metrics import APPEND_BUCKETS, BATCH_BUCKETS, state_metrics
from events.envelope import now_us
from projections.cluster import ClusterState


def report(name: str, value: float) -> None:
    """Print one figure."""
    print(f"{name} {value:.6g}", flush=True)


class StateCollector(Collector):
    """The state-derived part of the host's collector, over a state built here."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        return state_metrics(self.state, now_us(), frozenset(self.state.nodes))


def bench_scrape(tasks: int, nodes: int) -> None:
    sim = ClusterSimulation(random.Random(7), nodes=nodes, heartbeat_share=0.3, max_active=2000)
    state = ClusterState()
    state.apply_all(record_in_memory(list(sim.events(tasks))))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(state))
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        body = generate_latest(registry)
        times.append(time.perf_counter() - t0)
    label = f"{len(state.tasks) // 1000}k_tasks_{nodes}_nodes"
    report(f"metrics_scrape_ms_{label}", statistics.median(times) * 1000)
    report(f"metrics_scrape_bytes_{label}", len(body))


def bench_observe(n: int = 100_000) -> None:
    registry = CollectorRegistry(auto_describe=False)
    append = Histogram("a_seconds", "a", buckets=APPEND_BUCKETS, registry=registry)
    commit = Histogram("c_seconds", "c", buckets=APPEND_BUCKETS, registry=registry)
    batch = Histogram("b_events", "b", buckets=BATCH_BUCKETS, registry=registry)
    t0 = time.perf_counter()
    for i in range(n):
        append.observe(0.003)
        commit.observe(0.002)
        batch.observe(i % 50)
    report("metrics_commit_observation_us", (time.perf_counter() - t0) / n * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    bench_scrape(10_000, 100)
    if args.full:
        bench_scrape(100_000, 100)
    bench_observe()


if __name__ == "__main__":
    main()
