"""The host's Prometheus metrics (``GET /api/metrics``): one registry per app.

Two kinds of figure:

* what the live state says (tasks by state, the queue, nodes, allocations, the agents'
  heartbeats, open event streams) is read from ``ClusterState`` when Prometheus scrapes,
  by a custom collector: nothing is kept up to date on the hot path, and a scrape is
  always consistent with the state it reads (one synchronous pass on the event loop);
* what only happens once (how long appends waited, how many events a group commit
  stored) are real histograms, fed by the store's commit observer, once per group
  commit and never per event (``events.store.CommitStats``: the log itself knows no
  metrics library).

The agents are not scraped: what they report (their outbox depth, their heartbeats'
delay) arrives in their heartbeats and is exported here, labelled by node. Labels are
per node or per state, never per task or user, so the series stay few however many
tasks run. The registry is the app's own, not prometheus_client's global one: a test
process runs several hosts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from events.envelope import now_us
from events.store import CommitStats
from projections.archive import state_counts
from projections.tasks import STATES

if TYPE_CHECKING:
    from control_plane.hub import ControlPlane
    from projections.cluster import ClusterState

PREFIX = "hakuriver"
US = 1_000_000
# Append latency: a commit is a few milliseconds on a local disk; a stalled one seconds.
APPEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Events per group commit: one for a lone append, thousands under a burst of reports.
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
# The app context's attributes where the routes keep their stream slots (streams.py),
# and the label each one's subscribers get.
STREAM_SLOTS = {"events": "stream_slots", "job_logs": "job_log_slots"}


class HostMetrics:
    """The registry of one host: its collector, its histograms, the process's figures."""

    def __init__(self, cp: ControlPlane, app_ctx: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.registry.register(ClusterCollector(cp, app_ctx))
        self.append_seconds = Histogram(
            f"{PREFIX}_event_append_seconds",
            "Per group commit: how long its oldest append waited, from queuing to commit",
            buckets=APPEND_BUCKETS,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            f"{PREFIX}_event_commit_seconds",
            "Per group commit: the transaction on the log's writer thread",
            buckets=APPEND_BUCKETS,
            registry=self.registry,
        )
        self.batch_events = Histogram(
            f"{PREFIX}_event_commit_batch_events",
            "Per group commit: how many new events it stored",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.scrapes = PromCounter(
            f"{PREFIX}_metrics_scrapes",
            "Answers of GET /api/metrics",
            registry=self.registry,
        )
        cp.store.add_commit_observer(self.observe)

    def observe(self, stats: CommitStats) -> None:
        """One group commit (on the event loop, once per commit)."""
        self.append_seconds.observe(stats.append_s)
        self.commit_seconds.observe(stats.commit_s)
        self.batch_events.observe(stats.events)

    def scrape(self) -> bytes:
        """The text exposition of every metric, read now."""
        self.scrapes.inc()
        return generate_latest(self.registry)


class ClusterCollector(Collector):
    """The figures the live state and the host's objects hold, read at scrape time."""

    def __init__(self, cp: ControlPlane, app_ctx: Any) -> None:
        self.cp = cp
        self.app_ctx = app_ctx

    def collect(self) -> Iterator[Metric]:
        cp = self.cp
        yield from state_metrics(cp.state, now_us(), frozenset(cp.connected))
        store = cp.store
        yield GaugeMetricFamily(
            f"{PREFIX}_event_log_last_seq", "The seq of the newest event in the log", store.last_seq
        )
        yield CounterMetricFamily(
            f"{PREFIX}_event_log_commits", "Group commits since the host started", store.commits
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_event_log_writable",
            "1 while the event log takes writes, 0 during a storage outage (a full disk)",
            0 if cp.store_failure is not None else 1,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_event_log_undecodable_events",
            "Stored events this host's reads could not decode (skipped)",
            cp.undecodable_events,
        )
        subscribers = GaugeMetricFamily(
            f"{PREFIX}_stream_subscribers",
            "Open long answers: event streams (/api/events/stream) and job log follows",
            labels=["stream"],
        )
        for label, attribute in STREAM_SLOTS.items():
            slots = getattr(self.app_ctx, attribute, None)  # made at a route's first use
            subscribers.add_metric([label], sum(slots.open.values()) if slots else 0)
        yield subscribers


def state_metrics(state: ClusterState, now: int, connected: frozenset[str]) -> Iterator[Metric]:
    """The gauges the folded state gives at ``now`` (µs): one pass over the tasks (a
    counter of their states), one over the nodes."""
    by_state = state_counts(state.tasks)
    tasks = GaugeMetricFamily(f"{PREFIX}_tasks", "Tasks by state", labels=["state"])
    for name in STATES:
        tasks.add_metric([name], by_state.get(name, 0))
    yield tasks
    yield GaugeMetricFamily(
        f"{PREFIX}_queue_length", "Tasks waiting for placement", len(state.pending)
    )
    oldest = next(iter(state.pending), None)
    waited = 0.0
    if oldest is not None and oldest in state.tasks:
        waited = max(0, now - state.tasks[oldest].submitted_at_us) / US
    yield GaugeMetricFamily(
        f"{PREFIX}_queue_oldest_wait_seconds",
        "How long the oldest waiting task has waited (0: the queue is empty)",
        waited,
    )
    yield from _node_metrics(state, now, connected)


def _node_metrics(state: ClusterState, now: int, connected: frozenset[str]) -> Iterator[Metric]:
    def family(name: str, documentation: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=["node"])

    up = family("node_up", "1 while the node is online, 0 while offline")
    link = family("node_connected", "1 while the node's agent is connected to this host")
    cores = family("node_cores", "CPU cores the node offers")
    cores_used = family("node_allocated_cores", "Cores reserved by tasks on the node")
    memory = family("node_memory_bytes", "Memory the node offers")
    memory_used = family("node_allocated_memory_bytes", "Memory reserved by tasks on the node")
    gpus = family("node_gpus", "GPUs the node offers")
    gpus_used = family("node_allocated_gpus", "GPUs reserved by tasks on the node")
    cpu = family("node_cpu_percent", "CPU use, from the latest heartbeat")
    ram = family("node_memory_used_bytes", "Memory in use, from the latest heartbeat")
    age = family("node_heartbeat_age_seconds", "Time since the node's latest heartbeat")
    lag = family(
        "agent_link_lag_seconds",
        "The latest heartbeat's delay from the node's clock to the log's (transit,"
        " queueing, and any clock difference between the machines)",
    )
    outbox = family(
        "agent_outbox_depth", "Events in the agent's outbox not yet acknowledged (heartbeat)"
    )
    online = 0
    for node in state.nodes.values():
        labels = [node.name]
        online += node.online
        up.add_metric(labels, 1 if node.online else 0)
        link.add_metric(labels, 1 if node.name in connected else 0)
        cores.add_metric(labels, node.cores)
        cores_used.add_metric(labels, node.allocated_cores)
        memory.add_metric(labels, node.memory_bytes)
        memory_used.add_metric(labels, node.allocated_memory_bytes)
        gpus.add_metric(labels, len(node.gpus))
        gpus_used.add_metric(labels, len(node.allocated_gpus))
        if node.heartbeats:
            cpu.add_metric(labels, node.cpu_percent)
            ram.add_metric(labels, node.memory_used_bytes)
        if node.last_seen_us:
            age.add_metric(labels, max(0, now - node.last_seen_us) / US)
        if node.link_lag_us is not None:
            lag.add_metric(labels, node.link_lag_us / US)
        if node.outbox_depth is not None:
            outbox.add_metric(labels, node.outbox_depth)
    nodes = GaugeMetricFamily(f"{PREFIX}_nodes", "Registered nodes by state", labels=["state"])
    nodes.add_metric(["online"], online)
    nodes.add_metric(["offline"], len(state.nodes) - online)
    yield nodes
    yield from (up, link, cores, cores_used, memory, memory_used, gpus, gpus_used)
    yield from (cpu, ram, age, lag, outbox)
