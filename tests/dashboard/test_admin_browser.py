"""The dashboard's admin pages in a real browser (Debian's chromium via Playwright) against a
real host and agent: users and tokens made in the page work against the API and stop working
once revoked there; join tokens and nodes; a non-admin sees no admin page and is refused by
its endpoints; a change without the session's CSRF token is refused; and (marker ``docker``)
an environment container made, used through the browser's terminal, packaged and deleted."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect
from support.browser import PageErrors, browser_context, login, require_browser, screenshot
from support.cluster import Cluster, running_cluster
from support.docker_images import BUSYBOX_IMAGE, unique_environment

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_browser()
    with running_cluster(tmp_path_factory.mktemp("admin"), agents=("n1",)) as c:
        yield c


def _admin_page(context: Any, cluster: Cluster, path: str = "/admin") -> Any:
    page = context.new_page()
    assert cluster.admin_token is not None
    login(page, cluster.url, cluster.admin_token, path)
    page.get_by_role(
        "heading", name="Admin" if path.startswith("/admin") else "Environments", exact=True
    ).wait_for()
    return page


def _whoami(cluster: Cluster, token: str) -> httpx.Response:
    with cluster.client_as(token) as client:
        return client.get("/api/whoami")


def _confirm(page: Any, label: str) -> None:
    dialog = page.locator("dialog[open]")
    dialog.get_by_role("button", name=label, exact=True).click()
    expect(page.locator("dialog[open]")).to_have_count(0)


def test_a_user_and_token_made_in_the_page_work_until_revoked_there(cluster: Cluster) -> None:
    with browser_context() as context:
        page = _admin_page(context, cluster)
        errors = PageErrors(page)
        # Given an admin on the users tab, when they add a user with a first token...
        page.get_by_label("Name").fill("kai")
        page.get_by_label("Role").select_option("user")
        page.get_by_role("button", name="Add user").click()
        secret_box = page.locator("#admin-secret-text")
        expect(secret_box).to_have_value(re.compile(r"^hkr_u_[0-9a-f]{16}\."))
        secret = secret_box.input_value()
        expect(page.locator(".admin-secret .warning")).to_contain_text("will not be shown again")
        row = page.locator("tr[data-user='kai']")
        expect(row).to_contain_text("active")
        screenshot(page, "admin-users")
        # ...then the token works against the API, as kai.
        answer = _whoami(cluster, secret)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["user"], answer.json()["role"]) == ("kai", "user")
        token_id = answer.json()["token_id"]
        page.get_by_role("button", name="I have stored it").click()
        expect(secret_box).to_be_hidden()

        # A second token with a two-hour lifetime, from the tokens tab.
        row.get_by_role("button", name="New token for kai").click()
        expect(page.get_by_role("tab", name="Tokens", exact=True)).to_have_attribute(
            "aria-selected", "true"
        )
        assert "tab=tokens" in page.url
        page.get_by_label("Label").fill("laptop")
        page.locator("#token-ttl").fill("2")
        page.get_by_label("Unit of the token's lifetime").select_option("hours")
        page.get_by_role("button", name="Create token").click()
        expect(secret_box).to_have_value(re.compile(r"^hkr_u_"))
        second = secret_box.input_value()
        mine = cluster.http.get("/api/tokens", params={"user": "kai"}).json()["tokens"]
        [laptop] = [t for t in mine if t["name"] == "laptop"]
        assert second.startswith(f"hkr_u_{laptop['id']}.")
        expected = (time.time() + 7200) * 1e6
        assert abs(laptop["expires_at_us"] - expected) < 120e6
        page.get_by_role("button", name="I have stored it").click()

        # When the admin revokes the first token in the page, the API refuses it.
        page.get_by_label("User", exact=True).select_option("kai")
        token_row = page.locator(f"tr[data-token='{token_id}']")
        screenshot(page, "admin-tokens")
        token_row.get_by_role("button", name=f"Revoke token {token_id}").click()
        expect(page.locator("dialog[open]")).to_contain_text(token_id)
        _confirm(page, "Revoke")
        expect(token_row).to_contain_text("revoked")
        assert _whoami(cluster, secret).status_code == 401
        assert _whoami(cluster, second).status_code == 200
        assert errors.real() == []


def test_an_admin_changes_a_role_and_disables_a_user_and_sees_refusals(cluster: Cluster) -> None:
    token = cluster.add_user("lou")
    with browser_context() as context:
        page = _admin_page(context, cluster)
        row = page.locator("tr[data-user='lou']")
        row.get_by_role("button", name="Make an admin: lou").click()
        # Cancelling changes nothing.
        page.locator("dialog[open]").get_by_role("button", name="Cancel").click()
        assert _whoami(cluster, token).json()["role"] == "user"
        row.get_by_role("button", name="Make an admin: lou").click()
        _confirm(page, "Make admin")
        expect(row.locator("td").nth(1)).to_have_text("admin")
        assert _whoami(cluster, token).json()["role"] == "admin"
        row.get_by_role("button", name="Disable lou").click()
        _confirm(page, "Disable")
        expect(row).to_contain_text("disabled")
        assert _whoami(cluster, token).status_code == 401
        expect(row.locator("td").nth(3)).to_have_text("—")  # no token of theirs works
        # The API's refusal is shown as it words it: a user who exists already.
        page.get_by_label("Name").fill("lou")
        page.get_by_role("button", name="Add user").click()
        alert = page.locator("#admin-users p.error[role=alert]").first
        expect(alert).to_contain_text("name")
        expect(alert).to_contain_text("lou")


def test_a_join_token_made_in_the_page_enrols_a_node_the_page_then_revokes(
    cluster: Cluster,
) -> None:
    with browser_context() as context:
        page = _admin_page(context, cluster, "/admin?tab=join")
        expect(page.get_by_role("tab", name="Join tokens")).to_have_attribute(
            "aria-selected", "true"
        )
        page.get_by_label("Nodes that may join with it").fill("2")
        page.get_by_role("button", name="Create join token").click()
        secret_box = page.locator("#admin-secret-text")
        expect(secret_box).to_have_value(re.compile(r"^hakuriver runner --join hkr_j_"))
        command = secret_box.input_value()
        words = command.split()
        assert words[:3] == ["hakuriver", "runner", "--join"]
        assert words[3].startswith("hkr_j_")
        assert words[4:6] == ["--host", cluster.url]
        expect(page.locator(".admin-secret .warning")).to_contain_text("Good for 2 nodes")
        join_id = words[3][len("hkr_j_") : len("hkr_j_") + 16]
        expect(page.locator(f"tr[data-token='{join_id}']")).to_contain_text("2")
        # The command's token really enrols a node.
        with cluster.client_as(words[3]) as joiner:
            joined = joiner.post("/api/join", json={"node": "spare"})
        assert joined.status_code == 201, joined.text
        assert _whoami(cluster, joined.json()["token"]).status_code == 403
        expect(page.locator(f"tr[data-token='{join_id}']")).to_contain_text("1")

        page.get_by_role("tab", name="Nodes").click()
        expect(page.locator("tr[data-node='n1']")).to_contain_text("online")
        spare = page.locator("tr[data-node='spare']")
        expect(spare).to_contain_text("enrolled")
        screenshot(page, "admin-nodes")
        spare.get_by_role("button", name="Revoke node spare").click()
        _confirm(page, "Revoke node")
        expect(spare).to_contain_text("revoked")
        # Its credential is refused now (before: valid, but not a user's token).
        assert _whoami(cluster, joined.json()["token"]).status_code == 401
        # n1 is online: it cannot be forgotten, so the page offers no Forget for it.
        expect(
            page.locator("tr[data-node='n1']").get_by_role("button", name="Forget node n1")
        ).to_be_hidden()


def test_an_offline_node_is_forgotten_from_the_page_with_a_reason(cluster: Cluster) -> None:
    # Given a node that was online and went offline...
    cluster.start_agent("n2")
    cluster.stop_agent("n2")
    cluster.wait_node("n2", online=False)
    with browser_context() as context:
        page = _admin_page(context, cluster, "/admin?tab=nodes")
        row = page.locator("tr[data-node='n2']")
        expect(row).to_contain_text("offline")
        # ...when the admin forgets it, giving a reason, it leaves the list and the log
        # records who did it and why.
        row.get_by_role("button", name="Forget node n2").click()
        page.get_by_label("Reason (recorded)").fill("retired in the page")
        _confirm(page, "Forget node")
        expect(row.get_by_role("button", name="Forget node n2")).to_have_count(0)
        assert cluster.node("n2") is None
        recorded = cluster.http.get("/api/events", params={"kind": "node.forgotten"}).json()
        [event] = [e for e in recorded["events"] if e["payload"].get("node") == "n2"]
        assert event["payload"]["reason"] == "retired in the page"


def test_the_admin_page_fits_a_phone(cluster: Cluster) -> None:
    with browser_context(viewport={"width": 390, "height": 844}, is_mobile=True) as context:
        page = _admin_page(context, cluster)
        page.locator("tr[data-user='admin']").wait_for()
        # Nothing but the tables' own scrolling boxes is wider than the screen.
        assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth + 1")
        screenshot(page, "phone-admin")


ADMIN_CALLS = [
    ("GET", "/api/users", None),
    ("POST", "/api/users", {"name": "mallory", "role": "admin"}),
    ("GET", "/api/tokens?all=1", None),
    ("POST", "/api/tokens", {"kind": "join"}),
    ("POST", "/api/nodes/n1/revoke", {}),
    ("POST", "/api/environments/containers", {"name": "evil", "image": BUSYBOX_IMAGE}),
    ("POST", "/api/environments/evil/tar", {}),
]


def test_a_user_sees_no_admin_page_and_is_refused_by_the_admin_endpoints(
    cluster: Cluster,
) -> None:
    token = cluster.add_user("ursula")
    with browser_context() as context:
        page = context.new_page()
        login(page, cluster.url, token, "/")
        nav = page.get_by_role("navigation", name="Main")
        nav.get_by_role("link", name="Tasks").wait_for()
        assert nav.get_by_role("link", name="Admin").count() == 0
        assert nav.get_by_role("link", name="Environments").count() == 0
        for path in ("/admin", "/environments"):
            page.goto(cluster.url + path)
            page.get_by_role("heading", name="Admins only").wait_for()
            assert page.locator("[x-data=adminPage], [x-data=environmentsPage]").count() == 0
        # From the page, with the session and its CSRF token (HR.api adds it): 403 each.
        statuses = page.evaluate(
            """async (calls) => {
                const out = [];
                for (const [method, path, body] of calls) {
                    try { await HR.api(method, path, body); out.push(200); }
                    catch (err) { out.push(err.status); }
                }
                return out;
            }""",
            ADMIN_CALLS,
        )
        assert statuses == [403] * len(ADMIN_CALLS)
    # And with the token itself.
    with cluster.client_as(token) as client:
        for method, path, body in ADMIN_CALLS:
            answer = client.request(method, path, json=body)
            assert answer.status_code == 403, (method, path, answer.text)
            assert answer.json()["error"] == "forbidden"
    users = cluster.http.get("/api/users").json()["users"]
    assert "mallory" not in [u["name"] for u in users]
    assert cluster.node("n1")["online"]


def test_a_change_without_the_csrf_token_is_refused(cluster: Cluster) -> None:
    with browser_context() as context:
        page = _admin_page(context, cluster)
        answer = page.evaluate(
            """() => fetch('/api/users', {
                method: 'POST',
                headers: {'Content-Type': 'application/json'},
                body: JSON.stringify({name: 'nocsrf', role: 'admin'}),
            }).then(async (r) => ({status: r.status, body: await r.json()}))"""
        )
        assert answer["status"] == 403
        assert answer["body"]["field"].lower() == "x-csrf-token"
        wrong = page.evaluate(
            """() => fetch('/api/users', {
                method: 'POST',
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': 'guessed'},
                body: JSON.stringify({name: 'nocsrf', role: 'admin'}),
            }).then((r) => r.status)"""
        )
        assert wrong == 403
        users = cluster.http.get("/api/users").json()["users"]
        assert "nocsrf" not in [u["name"] for u in users]
        # The same request with the session's token (HR.api) is accepted.
        made = page.evaluate(
            "() => HR.post('/api/users', {name: 'withcsrf'}).then((d) => d.user.name)"
        )
        assert made == "withcsrf"


# -- the environments page (a real Docker engine) -------------------------------------------


@pytest.fixture
def env_name() -> Iterator[str]:
    """A unique environment name; its container, images and tarballs are removed after."""
    yield from unique_environment()


SCREEN_HAS_LINE = """(wanted) => {
    const box = document.querySelector('.terminal');
    const term = box && box.hrTerminal;
    if (!term) return false;
    const buffer = term.buffer.active;
    for (let i = 0; i < buffer.length; i++) {
        if (buffer.getLine(i).translateToString(true).trim() === wanted) return true;
    }
    return false;
}"""


def _wait_for_line(page: Any, wanted: str) -> None:
    """Until a line of the terminal (read from xterm's buffer) is exactly ``wanted``."""
    page.wait_for_function(SCREEN_HAS_LINE, arg=wanted, timeout=20_000)


@pytest.mark.docker
@pytest.mark.timeout(240)
def test_an_environment_made_used_in_the_terminal_packaged_and_deleted(
    cluster: Cluster, env_name: str
) -> None:
    with browser_context() as context:
        page = _admin_page(context, cluster, "/environments")
        errors = PageErrors(page)
        # Create it from the form.
        page.get_by_label("Name", exact=True).fill(env_name)
        page.get_by_label("Image (on the host's engine)").fill(BUSYBOX_IMAGE)
        page.get_by_role("button", name="Create", exact=True).click()
        row = page.locator(f"tr[data-env='{env_name}']")
        expect(row).to_contain_text("running", timeout=60_000)
        expect(row).to_contain_text(BUSYBOX_IMAGE)

        # A terminal in it: type, and read the answer back from xterm's buffer.
        row.get_by_role("button", name=f"Open a shell in {env_name}").click()
        expect(page.locator(".env-shell .badge")).to_have_text("connected")
        page.locator(".terminal .xterm").click()
        page.keyboard.type("echo hi\n")
        _wait_for_line(page, "hi")
        page.keyboard.type("echo made-in-browser > /marker; echo $((6*7))\n")
        _wait_for_line(page, "42")
        screenshot(page, "environments-terminal")
        page.keyboard.type("exit 5\n")
        expect(page.locator(".env-shell .badge")).to_have_text("exited (5)")
        page.get_by_role("button", name="Close the shell").click()

        # Package it: the progress card ends with the tarball, which the list then shows.
        row.get_by_role("button", name=f"Package {env_name} as a tarball").click()
        card = page.locator(f".env-progress[data-env='{env_name}']")
        expect(card).to_contain_text("packaged as", timeout=90_000)
        expect(card.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
        # Every step the host streamed was shown, in order.
        expect(card.locator(".env-steps li.seen")).to_have_text(
            ["✓ commit", "✓ save", "✓ prune", "✓ recorded"]
        )
        tarballs = cluster.http.get("/api/environments/tarballs").json()["tarballs"]
        [tar] = [t for t in tarballs if t["name"] == env_name]
        expect(card).to_contain_text(tar["file"])
        expect(page.locator("table[aria-labelledby=env-tarballs]")).to_contain_text(tar["file"])
        recorded = cluster.http.get(
            "/api/events", params=[("kind", "env.packaged"), ("kind", "env.shell_closed")]
        ).json()["events"]
        assert {e["kind"] for e in recorded if e["payload"].get("name") == env_name} == {
            "env.packaged",
            "env.shell_closed",
        }
        screenshot(page, "environments")

        # Stop, start, then delete (each stop and delete confirmed).
        row.get_by_role("button", name=f"Stop {env_name}").click()
        _confirm(page, "Stop")
        expect(row).to_contain_text("exited", timeout=60_000)
        row.get_by_role("button", name=f"Start {env_name}").click()
        expect(row).to_contain_text("running", timeout=60_000)
        row.get_by_role("button", name=f"Delete {env_name}").click()
        _confirm(page, "Delete")
        expect(row).to_have_count(0, timeout=60_000)
        listed = cluster.http.get("/api/environments/containers").json()["containers"]
        assert env_name not in [c["name"] for c in listed]
        assert errors.real() == []
