"""The tasks list, a task's detail and the submit form in a real browser (Debian's chromium
via Playwright) against a real host and agent, tasks as plain processes (container NULL)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect
from support.browser import PageErrors, browser_context, login, require_browser, screenshot
from support.cluster import Cluster, running_cluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_browser()
    with running_cluster(tmp_path_factory.mktemp("tasks-ui"), agents=("n1",)) as c:
        yield c


def test_a_task_submitted_with_the_form_reaches_completed_without_a_reload(
    cluster: Cluster,
) -> None:
    with browser_context() as context:
        page = context.new_page()
        errors = PageErrors(page)
        login(page, cluster.url, cluster.add_user("sam"), "/submit")
        page.get_by_label("Command").fill("sh")
        page.get_by_label("Arguments, one per line").fill("-c\necho from-the-form; sleep 1")
        page.get_by_label("Container", exact=True).select_option("NULL")
        page.get_by_label("Cores").fill("0")
        # A memory the host refuses: its error stands next to the field, nothing recorded.
        page.get_by_label("Memory", exact=True).fill("12Q")
        page.get_by_role("button", name="Add a target").click()
        page.get_by_label("Node", exact=True).select_option("n1")
        page.get_by_role("button", name="Add a variable").click()
        page.get_by_label("Variable 1 name").fill("GREETING")
        page.get_by_label("Variable 1 value").fill("hello there")
        page.get_by_role("button", name="Submit", exact=True).click()
        memory_error = page.locator("#submit-memory-error")
        expect(memory_error).to_be_visible()
        assert "12Q" in memory_error.inner_text() or "size" in memory_error.inner_text()
        expect(page.get_by_label("Memory", exact=True)).to_have_attribute("aria-invalid", "true")
        assert re.search(r"/submit$", page.url)
        screenshot(page, "submit-field-error")
        # Fixed: the task is recorded and the page goes to it, where it completes live.
        page.get_by_label("Memory", exact=True).fill("64M")
        marker = page.evaluate("() => { window.__sameDocument = true; return 1; }")
        assert marker == 1
        page.get_by_role("button", name="Submit", exact=True).click()
        page.wait_for_url(re.compile(r"/tasks/\d+$"))
        state = page.get_by_test_id("task-state")
        expect(state).to_have_text("completed", timeout=30_000)
        assert page.evaluate("() => window.__sameDocument === true")  # never reloaded
        expect(page.locator(".task-log")).to_contain_text("from-the-form")
        number = int(page.url.rsplit("/", 1)[1])
        task = cluster.task(str(number))
        assert task["owner"] == "sam" and task["target"] == "n1" and task["container"] is None
        assert task["env"] == {"GREETING": "hello there"} and task["memory_bytes"] == 64_000_000
        expect(page.locator("table.timeline")).to_contain_text("task.finished")
        assert errors.real() == []


def test_the_output_streams_while_the_task_prints(cluster: Cluster) -> None:
    token = cluster.add_user("lou")
    with cluster.client_as(token) as lou:
        script = "for i in 1 2 3 4 5 6 7 8; do echo line-$i; sleep 0.6; done; echo oops >&2"
        r = lou.post(
            "/api/tasks",
            json={"command": "sh", "args": ["-c", script], "container": "NULL", "cores": 0},
        )
        assert r.status_code == 201, r.text
    task_id = r.json()["task_ids"][0]
    number = r.json()["numbers"][0]
    with browser_context() as context:
        page = context.new_page()
        errors = PageErrors(page)
        login(page, cluster.url, token, f"/tasks/{number}")
        log = page.locator(".task-log")
        expect(log).to_contain_text("line-2", timeout=20_000)
        # Seen while the task still runs: streamed, not read once it ended.
        assert cluster.task(task_id)["state"] == "running"
        expect(page.get_by_text("● following")).to_be_visible()
        screenshot(page, "task-detail-logs")
        expect(log).to_contain_text("line-8", timeout=20_000)
        expect(page.get_by_test_id("task-state")).to_have_text("completed", timeout=20_000)
        page.get_by_role("tab", name="stderr").click()
        expect(log).to_have_text("oops\n")
        with page.expect_download() as download:
            page.get_by_role("button", name="Download stdout").click()
        path = download.value.path()
        assert path is not None and Path(path).read_text().count("line-") == 8
        assert errors.real() == []


def test_a_running_task_is_killed_from_the_list(cluster: Cluster) -> None:
    token = cluster.add_user("kim")
    with cluster.client_as(token) as kim:
        r = kim.post(
            "/api/tasks", json={"command": "sleep", "args": ["60"], "container": "NULL", "cores": 0}
        )
        assert r.status_code == 201, r.text
    task_id, number = r.json()["task_ids"][0], r.json()["numbers"][0]
    cluster.wait_state(task_id, "running")
    with browser_context() as context:
        page = context.new_page()
        errors = PageErrors(page)
        login(page, cluster.url, token, "/tasks")
        line = page.locator(f"tr[data-number='{number}']")
        expect(line).to_have_attribute("data-state", "running")
        screenshot(page, "tasks")
        line.get_by_role("button", name=f"Kill task {number}").click()
        expect(line).to_have_attribute("data-state", "killed", timeout=20_000)
        expect(line.get_by_role("button", name=f"Kill task {number}")).to_have_count(0)
        assert cluster.task(task_id)["kill_requested_by"] == "kim"
        assert errors.real() == []


def test_filters_and_sort_live_in_the_url_and_survive_a_reload(cluster: Cluster) -> None:
    for task_id in cluster.submit("sh", "-c", "true", cores=0) + cluster.submit(
        "sleep", "0", cores=0
    ):
        cluster.wait_state(task_id, "completed")
    with browser_context() as context:
        page = context.new_page()
        login(page, cluster.url, cluster.admin_token or "", "/tasks")
        page.get_by_label("All users").check()
        page.locator("#tasks-state").select_option("completed")
        page.get_by_role("button", name="Node").click()
        page.locator("#tasks-q").fill("sh")
        page.wait_for_url(re.compile(r"q=sh"))
        url = page.url
        for part in ("all=1", "status=completed", "sort=node", "order=asc"):
            assert part in url, url
        expect(page.locator("tr[data-task]").first).to_be_visible()
        states = page.locator("tr[data-task]").evaluate_all(
            "rows => rows.map(r => r.dataset.state)"
        )
        assert states and set(states) == {"completed"}
        page.reload()
        expect(page.locator("#tasks-state")).to_have_value("completed")
        expect(page.locator("#tasks-q")).to_have_value("sh")
        expect(page.get_by_label("All users")).to_be_checked()
        expect(page.locator("th[aria-sort='ascending']")).to_contain_text("Node")
        again = page.locator("tr[data-task]").evaluate_all("rows => rows.map(r => r.dataset.state)")
        assert again == states
        # The same link opened elsewhere shows the same view.
        other = context.new_page()
        other.goto(url)
        expect(other.locator("#tasks-state")).to_have_value("completed")


def test_another_users_task_is_redacted_and_their_kill_is_refused(cluster: Cluster) -> None:
    with cluster.client_as(cluster.add_user("amy")) as amy:
        r = amy.post(
            "/api/tasks",
            json={
                "command": "sleep",
                "args": ["60"],
                "container": "NULL",
                "cores": 0,
                "name": "amys-nap",
            },
        )
        assert r.status_code == 201, r.text
    task_id, number = r.json()["task_ids"][0], r.json()["numbers"][0]
    cluster.wait_state(task_id, "running")
    with browser_context() as context:
        page = context.new_page()
        login(page, cluster.url, cluster.add_user("bob"), "/tasks?all=1&q=amys-nap")
        line = page.locator(f"tr[data-number='{number}']")
        expect(line).to_contain_text("amy")
        expect(line.get_by_role("button")).to_have_count(0)  # no action offered on it
        page.goto(f"{cluster.url}/tasks/{number}")
        expect(page.locator("dl.kv dd.redacted").first).to_have_text("redacted")
        spec = page.locator("dl.kv").first.inner_text()
        assert "Command\nredacted" in spec and "sleep" not in spec
        # The detail page lets the host decide: its 403 is shown as it said it.
        page.get_by_role("button", name="Kill").click()
        alert = page.locator(".task-page p.error[role='alert']").filter(has_text="amy")
        expect(alert).to_contain_text("only its owner or an admin")
        screenshot(page, "task-detail-redacted")
        assert cluster.task(task_id)["state"] == "running"
