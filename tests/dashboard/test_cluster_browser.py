"""The overview, nodes and history pages in a real browser (Debian's chromium via
Playwright) against a real host and two agents, and ``GET /api/usage``, the overview's
chart, over HTTP: its answer (aggregates only, for any user) and its refusals.

The time slider is checked against the CLI itself: the page at a past moment shows the
same nodes, running and queued tasks as ``hakuriver state --at`` for that moment.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect
from support.browser import PageErrors, browser_context, login, require_browser, screenshot
from support.cluster import REPO, Cluster, running_cluster

pytestmark = pytest.mark.timeout(240)

QUEUED = {"pending", "assigning"}
ENDED = {"completed", "failed", "killed", "killed_oom", "lost"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster-pages"), agents=("n1", "n2")) as c:
        yield c


def _last_seq(cluster: Cluster) -> int:
    return int(cluster.http.get("/api/summary").json()["last_seq"])


def _cli_state(cluster: Cluster, at: str) -> dict[str, Any]:
    """``hakuriver state --at AT --json``, run as a user would (the admin's token)."""
    done = subprocess.run(
        [sys.executable, "-m", "cli.hakuriver", "state", "--at", at, "--json"],
        env=cluster.env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def _split(tasks: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """(running, queued) task ids as the history page groups them."""
    active = [t for t in tasks if t["state"] not in ENDED]
    running = {t["task_id"] for t in active if t["state"] not in QUEUED}
    queued = {t["task_id"] for t in active if t["state"] in QUEUED}
    return running, queued


def _ids(page: Any, selector: str, attribute: str) -> set[str]:
    values = page.locator(selector).evaluate_all(
        f"rows => rows.map(r => r.getAttribute('{attribute}'))"
    )
    return set(values)


# -- GET /api/usage over HTTP --------------------------------------------------------------


def test_usage_shows_what_was_allocated_and_offered(cluster: Cluster) -> None:
    nodes = cluster.http.get("/api/nodes").json()["nodes"]
    offered = sum(n["cores"] for n in nodes if n["online"])
    (task_id,) = cluster.submit("sleep", "30", cores=1, targets=["n1"])
    cluster.wait_state(task_id, "running")
    try:
        r = cluster.http.get("/api/usage", params={"hours": "0.05", "points": "10"})
        assert r.status_code == 200, r.text
        usage = r.json()
        assert usage["points"] == 10
        assert len(usage["t"]) == 10 and usage["t"] == sorted(usage["t"])
        for key in ("cores", "memory_bytes", "gpus"):
            assert {len(v) for v in usage[key].values()} == {10}
        # Now: the running task's core is held, and the nodes offer what /api/nodes says.
        assert usage["cores"]["allocated_peak"][-1] >= 1
        assert usage["cores"]["total"][-1] == offered
        assert usage["nodes_online"][-1] == 2
        assert 0 < usage["cores"]["allocated"][-1] <= usage["cores"]["allocated_peak"][-1]
        assert abs(usage["step_s"] * 10 - 0.05 * 3600) < 1e-6
    finally:
        cluster.http.post(f"/api/tasks/{task_id}/kill")
        cluster.wait_state(task_id)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"hours": "abc"}, "hours"),
        ({"hours": "0"}, "hours"),
        ({"hours": "-1"}, "hours"),
        ({"hours": "nan"}, "hours"),
        ({"hours": "inf"}, "hours"),
        ({"hours": "100000"}, "hours"),
        ({"hours": "1e-12"}, "hours"),
        ({"points": "²"}, "points"),
        ({"points": "1"}, "points"),
        ({"points": "1001"}, "points"),
        ({"points": "ten"}, "points"),
        ({"points": "-5"}, "points"),
        ({"points": "2.5"}, "points"),
    ],
)
def test_usage_refuses_bad_parameters_naming_the_field(
    cluster: Cluster, query: dict[str, str], field: str
) -> None:
    r = cluster.http.get("/api/usage", params=query)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field


def test_a_user_reads_usage_with_no_private_data(cluster: Cluster) -> None:
    secret = "usage-secret-7f3a"
    (task_id,) = cluster.submit(
        "sh", "-c", f"echo {secret}", env={"TOKEN_X": secret}, name=f"job-{secret}"
    )
    cluster.wait_state(task_id)
    token = cluster.add_user("ursula")
    with cluster.client_as(token) as user:
        r = user.get("/api/usage", params={"hours": "1"})
    assert r.status_code == 200, r.text
    text = r.text
    assert secret not in text and "admin" not in text and task_id not in text
    usage = r.json()
    assert set(usage) == {
        "start", "end", "start_us", "end_us", "step_s", "points", "t",
        "nodes_online", "cores", "memory_bytes", "gpus",
    }  # fmt: skip
    assert all(set(usage[k]) == {"allocated", "allocated_peak", "total"} for k in ("cores", "gpus"))
    # The task ran in the window: its core shows in the peaks.
    assert max(usage["cores"]["allocated_peak"]) >= 1


# -- the pages in a browser ----------------------------------------------------------------


def test_overview_shows_the_nodes_and_a_chart_with_data(cluster: Cluster) -> None:
    require_browser()
    (task_id,) = cluster.submit("sleep", "1", cores=1)
    cluster.wait_state(task_id)
    with browser_context() as context:
        page = context.new_page()
        errors = PageErrors(page)
        login(page, cluster.url, cluster.admin_token or "", "/")
        page.get_by_role("heading", name="Overview").wait_for()
        expect(page.locator('[data-stat="nodes"] .value')).to_have_text("2 / 2")
        # The chart has the task's core in its window.
        page.wait_for_function(
            "() => Number(document.querySelector('[data-chart=cores]')?.dataset.peakMax) >= 1"
        )
        assert page.locator("[data-chart=cores] canvas").count() == 1
        # The activity lists the task's events.
        expect(page.locator(".activity .feed")).to_contain_text("task.finished")
        screenshot(page, "overview")
        # The window is kept in the URL.
        page.get_by_label("Window").select_option("24")
        page.wait_for_url("**/?hours=24")
        assert errors.real() == []
    with browser_context(color_scheme="dark") as context:
        page = context.new_page()
        login(page, cluster.url, cluster.admin_token or "", "/")
        page.wait_for_function(
            "() => Number(document.querySelector('[data-chart=cores]')?.dataset.peakMax) >= 1"
        )
        screenshot(page, "overview-dark")


def test_a_user_sees_history_explained_and_makes_no_forbidden_request(cluster: Cluster) -> None:
    require_browser()
    token = cluster.add_user("hana")
    with browser_context() as context:
        page = context.new_page()
        errors = PageErrors(page)
        refused: list[str] = []
        asked: list[str] = []
        page.on("response", lambda r: refused.append(r.url) if r.status == 403 else None)
        page.on("request", lambda r: asked.append(r.url))
        login(page, cluster.url, token, "/history")
        page.get_by_role("heading", name="The cluster's full history is for admins").wait_for()
        expect(page.get_by_role("link", name="Tasks").last).to_be_visible()
        # The overview, for a user, reads only what a user may.
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Overview").click()
        expect(page.locator('[data-stat="nodes"] .value')).to_have_text("2 / 2")
        page.wait_for_function("() => document.querySelector('[data-chart=cores]')?.dataset.points")
        assert refused == []
        admin_only = ("/api/state", "/api/events?", "/api/events/1")
        assert not [u for u in asked if any(a in u for a in admin_only)]
        assert errors.real() == []


def test_the_time_slider_shows_what_the_cli_shows_and_the_diff_a_finished_task(
    cluster: Cluster,
) -> None:
    require_browser()
    n1 = cluster.node("n1")
    assert n1 is not None
    # A task that ended, one running that fills n1, one queued behind it.
    (done,) = cluster.submit("true", targets=["n1"])
    cluster.wait_state(done)
    (running,) = cluster.submit("sleep", "60", cores=n1["cores"], targets=["n1"])
    cluster.wait_state(running, "running")
    (queued,) = cluster.submit("sleep", "60", cores=n1["cores"], targets=["n1"])
    cluster.wait_state(queued, "pending")
    moment = _last_seq(cluster)
    cluster.http.post(f"/api/tasks/{running}/kill")
    cluster.wait_state(running)
    cluster.http.post(f"/api/tasks/{queued}/kill")
    cluster.wait_state(queued)

    cli = _cli_state(cluster, str(moment))
    cli_running, cli_queued = _split(cli["tasks"])
    assert running in cli_running and queued in cli_queued and done not in cli_running

    with browser_context() as context:
        page = context.new_page()
        errors = PageErrors(page)
        login(page, cluster.url, cluster.admin_token or "", f"/history?at={moment}")
        expect(page.locator("[data-role=state-seq]")).to_have_text(str(moment))
        expect(page.get_by_label("Moment (event seq)")).to_have_value(str(moment))
        assert _ids(page, "[data-role=state-nodes] tbody tr", "data-node") == {
            n["name"] for n in cli["nodes"]
        }
        assert _ids(page, "[data-role=state-running] tbody tr", "data-task") == cli_running
        assert _ids(page, "[data-role=state-queued] tbody tr", "data-task") == cli_queued
        screenshot(page, "history")

        # The slider moves, and the URL follows; the page then shows the CLI's answer for it.
        slider = page.get_by_label("Moment (event seq)")
        slider.focus()
        page.keyboard.press("ArrowLeft")
        earlier = moment - 1
        expect(page.locator("[data-role=state-seq]")).to_have_text(str(earlier))
        page.wait_for_url(f"**/history?at={earlier}")
        cli_earlier = _cli_state(cluster, str(earlier))
        expect_running, expect_queued = _split(cli_earlier["tasks"])
        assert _ids(page, "[data-role=state-running] tbody tr", "data-task") == expect_running
        assert _ids(page, "[data-role=state-queued] tbody tr", "data-task") == expect_queued

        # A moment given as a time shows what the CLI shows for that time.
        recorded = cluster.http.get(f"/api/events/{moment}").json()["recorded_at"]
        page.get_by_label("Go to a seq or a time").fill(recorded)
        page.get_by_role("button", name="Show", exact=True).click()
        cli_time = _cli_state(cluster, recorded)
        expect(page.locator("[data-role=state-seq]")).to_have_text(str(cli_time["seq"]))
        by_time_running, by_time_queued = _split(cli_time["tasks"])
        assert _ids(page, "[data-role=state-running] tbody tr", "data-task") == by_time_running
        assert _ids(page, "[data-role=state-queued] tbody tr", "data-task") == by_time_queued

        # The diff from the moment to now lists the task that was killed in between.
        page.get_by_label("From (seq or time)").fill(str(moment))
        page.get_by_role("button", name="Compare").click()
        row = page.locator(f"[data-role=diff-tasks] tr[data-task='{running}']")
        expect(row).to_contain_text("running → killed")
        expect(row).to_have_attribute("data-change", "changed")
        page.wait_for_url(f"**a={moment}**")
        screenshot(page, "history-diff")

        # The feed, filtered by task, lists that task's events only, live.
        page.get_by_label("Task", exact=True).fill(running)
        page.get_by_role("button", name="Filter").click()
        feed = page.locator("[data-role=feed] tbody tr")
        # Until the filtered page arrives, the unfiltered rows are still there: wait for it.
        page.wait_for_function(
            """(prefix) => {
                const rows = [...document.querySelectorAll("[data-role=feed] tbody tr")];
                return rows.length > 0 && rows.every(
                    (r) => r.querySelector("td:nth-child(4)").innerText.startsWith(prefix));
            }""",
            arg=f"task:{running[:13]}",
        )
        kinds = set(feed.evaluate_all("rows => rows.map(r => r.dataset.kind)"))
        assert "task.finished" in kinds and "task.submitted" in kinds
        streams = feed.locator("td:nth-child(4)").all_inner_texts()
        assert all(s.startswith(f"task:{running[:13]}") for s in streams), streams
        page.get_by_label("Task", exact=True).fill("")
        page.get_by_label("Kind").fill("task.submitted")
        page.get_by_role("button", name="Filter").click()
        (late,) = cluster.submit("true")
        expect(
            page.locator("[data-role=feed] tbody tr[data-kind='task.submitted']").first
        ).to_contain_text(late[:13])
        cluster.wait_state(late)
        assert errors.real() == []


def test_the_nodes_page_lists_both_nodes_and_sees_one_go_offline(cluster: Cluster) -> None:
    require_browser()
    with browser_context() as context:
        page = context.new_page()
        errors = PageErrors(page)
        login(page, cluster.url, cluster.admin_token or "", "/nodes")
        for name in ("n1", "n2"):
            card = page.locator(f"article.node[data-node='{name}']")
            expect(card).to_have_attribute("data-online", "true")
            node = cluster.node(name)
            assert node is not None
            expect(card.locator(".cores")).to_have_text(f"0 / {node['cores']}")
        # A running task shows on its node, linked to its page.
        (task_id,) = cluster.submit("sleep", "30", cores=1, targets=["n1"])
        cluster.wait_state(task_id, "running")
        link = page.locator(f"article.node[data-node='n1'] a[href='/tasks/{task_id}']")
        expect(link).to_be_visible()
        screenshot(page, "nodes")
        cluster.http.post(f"/api/tasks/{task_id}/kill")
        cluster.wait_state(task_id)
        expect(link).to_have_count(0)
        # An agent stops: its card turns offline without a reload.
        page.evaluate("() => { window.__notReloaded = true; }")
        cluster.stop_agent("n2")
        try:
            card = page.locator("article.node[data-node='n2']")
            expect(card).to_have_attribute("data-online", "false")
            expect(card.locator(".badge.state")).to_have_text("offline")
            assert page.evaluate("() => window.__notReloaded === true")
            screenshot(page, "nodes-offline")
        finally:
            cluster.start_agent("n2")
        expect(page.locator("article.node[data-node='n2']")).to_have_attribute(
            "data-online", "true"
        )
        assert errors.real() == []
