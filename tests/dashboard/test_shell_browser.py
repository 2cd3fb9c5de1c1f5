"""The dashboard's shell in a real browser (Debian's chromium via Playwright): logging in
with the form and with a one-time link, the navigation by role, logging out."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
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
        # The page asks first whose link it is (someone else's link would log in as them).
        page.get_by_role("button", name="Log in as vera").click()
        page.wait_for_function("() => window.HR && HR.me && HR.me.user === 'vera'")
        page.wait_for_url(cluster.url + "/")
        nav = page.get_by_role("navigation", name="Main")
        nav.get_by_role("link", name="Admin").wait_for()
        # The code left the address bar.
        assert "code=" not in page.url


def test_a_link_made_by_someone_else_says_whose_it_is_and_cancel_keeps_the_session(
    cluster: Cluster,
) -> None:
    victim = cluster.add_user("walt")
    mallory = cluster.add_user("mal")
    with cluster.client_as(mallory) as cli:
        path = cli.post("/api/ui/links").json()["path"]
    with browser_context() as context:
        page = context.new_page()
        login(page, cluster.url, victim)
        page.goto(cluster.url + path)
        region = page.get_by_role("region", name="Login link")
        expect(region).to_contain_text("logs you in as mal")
        expect(region).to_contain_text("You are logged in as walt now")
        region.get_by_role("button", name="Cancel").click()
        page.goto(cluster.url + "/")
        page.wait_for_function("() => window.HR && HR.me && HR.me.user === 'walt'")
    # The peek did not use the link up: mallory's code still works, once.
    code = path.split("#code=", 1)[1]
    assert cluster.http.post("/api/ui/login", json={"code": code}).status_code == 200


def test_a_stolen_cookie_without_the_pages_key_is_no_session(cluster: Cluster) -> None:
    """Browsers send a host's cookies to every port of its name: a service on another
    port catches the cookie, but the key lives in the page's own origin storage."""
    token = cluster.add_user("zed")
    with browser_context() as context:
        page = context.new_page()
        login(page, cluster.url, token)
        [cookie] = [c for c in context.cookies() if c["name"] == "hakuriver_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    with httpx.Client(
        base_url=cluster.url, cookies={"hakuriver_session": cookie["value"]}
    ) as thief:
        for path in ("/api/ui/session", "/api/whoami", "/api/tasks", "/api/events/changes"):
            answer = thief.get(path)
            assert answer.status_code == 403, (path, answer.text)
            assert answer.json()["field"] == "x-csrf-token"


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
