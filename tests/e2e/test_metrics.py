"""``GET /api/metrics`` (issue 18, item 7): Prometheus's text format, read back with
prometheus_client's own parser from a real host and agent, and compared with what the
API says; the Grafana dashboard in docs/ queries only metrics a real scrape has."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from support.cluster import REPO, Cluster, module_cluster_fixture
from support.waiting import wait_until

from projections.tasks import STATES

module_cluster, cluster = module_cluster_fixture()

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: httpx.Client) -> Samples:
    """Every sample of one scrape, by (name, sorted labels)."""
    answer = client.get("/api/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def gated(gate: Path) -> list[str]:
    return ["-c", f"while [ ! -e '{gate}' ]; do sleep 0.02; done"]


def test_tasks_by_state_and_the_nodes_match_the_api(cluster: Cluster) -> None:
    # Given tasks that completed and one that failed
    ids = [*cluster.submit("true"), *cluster.submit("true"), *cluster.submit("sh", "-c", "exit 3")]
    for task_id in ids:
        cluster.wait_state(task_id)
    # When Prometheus scrapes (nothing runs now, so the summary read next agrees)
    samples = scrape(cluster.http)
    summary = cluster.health()
    # Then every state has its series, and the counts are the summary's
    by_state = {state: value(samples, "hakuriver_tasks", state=state) for state in STATES}
    assert by_state == {state: summary["tasks"].get(state, 0) for state in STATES}
    assert by_state["completed"] >= 2 and by_state["failed"] >= 1
    assert value(samples, "hakuriver_queue_length") == 0
    assert value(samples, "hakuriver_queue_oldest_wait_seconds") == 0
    # the node is up and connected, and its capacity is the API's
    node = cluster.node("n1")
    assert node is not None
    assert value(samples, "hakuriver_node_up", node="n1") == 1
    assert value(samples, "hakuriver_node_connected", node="n1") == 1
    assert value(samples, "hakuriver_nodes", state="online") == 1
    assert value(samples, "hakuriver_nodes", state="offline") == 0
    assert value(samples, "hakuriver_node_cores", node="n1") == node["cores"]
    assert value(samples, "hakuriver_node_memory_bytes", node="n1") == node["memory_bytes"]
    assert value(samples, "hakuriver_node_allocated_cores", node="n1") == 0
    # the process's own figures are there too (a per-app registry, not the global one)
    assert value(samples, "process_resident_memory_bytes") > 0


def scrape_after_a_heartbeat(cluster: Cluster) -> Samples:
    """A scrape once n1's first heartbeat is recorded (a node is online from its hello,
    its heartbeat's figures come a beat later)."""
    samples: Samples = {}

    def heartbeat_recorded() -> bool:
        samples.clear()
        samples.update(scrape(cluster.http))
        return ("hakuriver_agent_outbox_depth", (("node", "n1"),)) in samples

    wait_until(heartbeat_recorded, timeout=10)
    return samples


def test_the_agent_reports_its_outbox_and_link_through_the_heartbeat(cluster: Cluster) -> None:
    scrape_after_a_heartbeat(cluster)
    # The agent is not scraped: its outbox depth arrives in its heartbeats, by node. An
    # idle agent has everything acknowledged: a later heartbeat says 0 (the series exists
    # and carries the agent's figure, not a placeholder)
    samples: Samples = {}

    def drained() -> bool:
        samples.clear()
        samples.update(scrape(cluster.http))
        return value(samples, "hakuriver_agent_outbox_depth", node="n1") == 0

    wait_until(drained, timeout=10)
    assert abs(value(samples, "hakuriver_agent_link_lag_seconds", node="n1")) < 5
    # heartbeats come every 0.2 s in this cluster (the timeout is 1.5 s; a loaded machine
    # may scrape just as the monitor is about to notice a late one)
    assert 0 <= value(samples, "hakuriver_node_heartbeat_age_seconds", node="n1") < 3
    assert 0 <= value(samples, "hakuriver_node_cpu_percent", node="n1") <= 100


def test_allocations_and_the_queue_while_a_task_holds_the_node(cluster: Cluster) -> None:
    node = cluster.node("n1")
    assert node is not None
    cores = node["cores"]
    gate = cluster.root / "gate-metrics"
    # Given a sleeping task holding every core, and one more waiting for them
    [big] = cluster.submit("sh", *gated(gate), cores=cores, memory=1 << 20)
    cluster.wait_state(big, "running")
    [small] = cluster.submit("true", cores=1)
    assert cluster.task(small)["state"] == "pending"
    # Then the scrape shows the allocation and the queue
    samples = scrape(cluster.http)
    assert value(samples, "hakuriver_node_allocated_cores", node="n1") == cores
    assert value(samples, "hakuriver_node_allocated_memory_bytes", node="n1") == 1 << 20
    assert value(samples, "hakuriver_tasks", state="running") == 1
    assert value(samples, "hakuriver_queue_length") == 1
    waited = value(samples, "hakuriver_queue_oldest_wait_seconds")
    assert waited > 0

    # and the oldest wait grows while it waits
    def waits_longer() -> bool:
        return value(scrape(cluster.http), "hakuriver_queue_oldest_wait_seconds") > waited

    wait_until(waits_longer, timeout=5)
    # When the big task ends, both are released
    gate.touch()
    cluster.wait_state(big, "completed")
    cluster.wait_state(small, "completed")
    samples = scrape(cluster.http)
    assert value(samples, "hakuriver_node_allocated_cores", node="n1") == 0
    assert value(samples, "hakuriver_queue_length") == 0


def test_commits_are_measured_once_per_group_commit(cluster: Cluster) -> None:
    before = scrape(cluster.http)
    # When a task runs (submitted, placed, started, finished: events of several commits)
    [task_id] = cluster.submit("true")
    cluster.wait_state(task_id, "completed")
    after = scrape(cluster.http)
    # Then the histograms grew with the log: every new event is in a commit's batch size
    commits = "hakuriver_event_commit_batch_events_count"
    events = "hakuriver_event_commit_batch_events_sum"
    grown = value(after, "hakuriver_event_log_last_seq") - value(
        before, "hakuriver_event_log_last_seq"
    )
    assert grown >= 4
    assert value(after, events) - value(before, events) == grown
    assert value(after, commits) > value(before, commits)
    # one observation per commit: the append latency histogram counts the commits
    assert value(after, "hakuriver_event_append_seconds_count") == value(after, commits)
    assert value(after, "hakuriver_event_commit_seconds_count") == value(after, commits)
    assert value(after, "hakuriver_event_log_commits_total") >= value(after, commits)
    assert value(after, "hakuriver_event_log_writable") == 1


def test_event_stream_subscribers_are_counted(cluster: Cluster) -> None:
    def subscribers() -> float:
        return value(scrape(cluster.http), "hakuriver_stream_subscribers", stream="events")

    start = subscribers()
    # While an event stream is open, the gauge counts it
    with (
        cluster.client_as(cluster.token()) as client,
        client.stream("GET", "/api/events/stream", timeout=30) as stream,
    ):
        assert stream.status_code == 200
        wait_until(lambda: subscribers() == start + 1, timeout=10)
    # and once it is closed, it no longer does
    wait_until(lambda: subscribers() == start, timeout=10)


def test_any_users_token_may_scrape_and_none_is_refused(cluster: Cluster) -> None:
    with cluster.client_as(None) as anonymous:
        assert anonymous.get("/api/metrics").status_code == 401
    with cluster.client_as(cluster.add_user("prometheus-scraper")) as scraper:
        assert value(scrape(scraper), "hakuriver_node_up", node="n1") == 1


METRIC_NAME = re.compile(r"\b(?:hakuriver|process)_[a-z_]+\b")


def test_the_grafana_dashboard_queries_only_metrics_a_scrape_has(cluster: Cluster) -> None:
    dashboard = json.loads((REPO / "docs" / "grafana-hakuriver.json").read_text())
    # the data source is a variable, so the dashboard imports into any Grafana
    assert {i["name"] for i in dashboard["__inputs"]} == {"DS_PROMETHEUS"}
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries = [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    names = {name for text in exprs + queries for name in METRIC_NAME.findall(text)}
    scraped = {name for name, _ in scrape_after_a_heartbeat(cluster)}
    assert len(names) >= 20
    assert names - scraped == set()
    # and every family the host exports (bar the process's) has a panel
    families = {re.sub(r"_(bucket|count|sum|total|created)$", "", n) for n in scraped}
    shown = {re.sub(r"_(bucket|count|sum|total|created)$", "", n) for n in names}
    assert {f for f in families if f.startswith("hakuriver_")} - shown == set()
