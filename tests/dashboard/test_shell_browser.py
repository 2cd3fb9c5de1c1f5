"""The dashboard's shell in a real browser (Debian's chromium via Playwright): logging in
with the form and with a one-time link, the navigation by role, logging out."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect
from support.browser import PageErrors, browser_context, login, require_browser, screenshot
from support.cluster import Cluster, running_cluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_browser()
    with running_cluster(tmp_path_factory.mktemp("shell"), agents=()) as c:
        yield c


def test_a_user_logs_in_with_the_form_sees_no_admin_page_and_logs_out(cluster: Cluster) -> None:
    token = cluster.add_user("uma")
    with browser_context() as context:
        page = context.new_page()
        errors = PageErrors(page)
        page.goto(cluster.url + "/tasks")
        # Not logged in: sent to the login page, which says how to get in.
        page.wait_for_url("**/login?next=*")
        screenshot(page, "login")
        page.get_by_label("Your API token").fill("hkr_u_0000000000000000.wrong")
        page.get_by_role("button", name="Log in").click()
        assert page.get_by_role("alert").inner_text().strip() != ""
        page.get_by_label("Your API token").fill(token)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url("**/tasks")
        nav = page.get_by_role("navigation", name="Main")
        expect(nav.get_by_role("link", name="Tasks")).to_have_attribute("aria-current", "page")
        assert nav.get_by_role("link", name="Admin").count() == 0
        assert nav.get_by_role("link", name="Environments").count() == 0
        assert "uma (user)" in page.locator(".who").inner_text()
        # Typed in: the admin page is refused by the shell, and its API by the host.
        page.goto(cluster.url + "/admin")
        page.get_by_role("heading", name="Admins only").wait_for()
        status = page.evaluate("() => fetch('/api/users').then(r => r.status)")
        assert status == 403
        # The cookie is not readable from the page.
        assert "hakuriver_session" not in page.evaluate("() => document.cookie")
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url("**/login")
        status = page.evaluate("() => fetch('/api/ui/session').then(r => r.status)")
        assert status == 401
        assert errors.real() == []


def test_a_one_time_link_logs_the_browser_in(cluster: Cluster) -> None:
    token = cluster.add_user("vera", role="admin")
    with cluster.client_as(token) as cli:
        path = cli.post("/api/ui/links").json()["path"]
    with browser_context() as context:
        page = context.new_page()
        page.goto(cluster.url + path)
        page.wait_for_function("() => window.HR && HR.me && HR.me.user === 'vera'")
        page.wait_for_url(cluster.url + "/")
        nav = page.get_by_role("navigation", name="Main")
        nav.get_by_role("link", name="Admin").wait_for()
        # The code left the address bar.
        assert "code=" not in page.url


def test_the_login_form_is_usable_on_a_phone(cluster: Cluster) -> None:
    token = cluster.add_user("wim")
    with browser_context(viewport={"width": 390, "height": 844}, is_mobile=True) as context:
        page = context.new_page()
        login(page, cluster.url, token)
        menu = page.get_by_role("button", name="Menu")
        assert menu.is_visible()
        menu.click()
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Nodes").click()
        page.wait_for_url("**/nodes")
        screenshot(page, "phone-nodes")
