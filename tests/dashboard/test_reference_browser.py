"""The API reference page (``/reference``) in a real browser against a real host: it
lists every operation of ``GET /api/openapi.json`` with its parameters and answers, and
the schemas they name, with nothing loaded from anywhere but the host."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect
from support.browser import PageErrors, browser_context, login, require_browser, screenshot
from support.cluster import Cluster, running_cluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("reference-page"), agents=()) as c:
        yield c


def test_the_reference_page_lists_every_operation_of_the_document(cluster: Cluster) -> None:
    require_browser()
    token = cluster.add_user("reader")
    with cluster.client_as(token) as reader:
        doc = reader.get("/api/openapi.json").json()
    count = sum(len(methods) for methods in doc["paths"].values())
    with browser_context() as context:
        page = context.new_page()
        errors = PageErrors(page)
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        login(page, cluster.url, token, "/reference")
        expect(page.locator("article.op")).to_have_count(count)
        expect(page.locator(".op-count")).to_have_text(str(count))
        kill = page.locator('article.op[data-op="post /api/tasks/{ident}/kill"]')
        expect(kill).to_contain_text("Kill a task")
        expect(kill.locator(".badge.access")).to_have_text("user")
        expect(kill.locator("table.params")).to_contain_text("ident")
        expect(kill.locator(".answer")).to_contain_text("202")
        expect(kill.locator("a.ref")).to_have_text("TaskAccepted")
        # The websocket of the agents shows as one, and the query parameters of a list.
        agents = page.locator('article.op[data-op="get /api/agents/ws"]')
        expect(agents.locator(".badge.method")).to_have_text("WS")
        tasks = page.locator('article.op[data-op="get /api/tasks"]')
        expect(tasks.locator("table.params")).to_contain_text("all_users")
        # A schema link leads to its fields.
        kill.locator("a.ref").click()
        accepted = page.locator("#schema-TaskAccepted")
        expect(accepted).to_contain_text("task_id")
        expect(accepted).to_contain_text("integer")
        # The filter narrows the list.
        page.get_by_label("Filter the routes").fill("/api/tokens")
        expect(page.locator("article.op")).to_have_count(
            sum(len(m) for p, m in doc["paths"].items() if "/api/tokens" in p)
        )
        screenshot(page, "reference-page")
        assert errors.real() == []
    assert requested and all(url.startswith(cluster.url) for url in requested), [
        u for u in requested if not u.startswith(cluster.url)
    ]
