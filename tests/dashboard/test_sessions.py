"""The dashboard's login, sessions and CSRF, over HTTP against a real host
(control_plane/dashboard): what a browser's cookie may do, and what it may not."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from support.cluster import REPO, Cluster, running_cluster

pytestmark = pytest.mark.timeout(90)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl mira"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("dash"), agents=()) as c:
        yield c


def _browser(cluster: Cluster) -> httpx.Client:
    """A client like a browser: no Authorization header, cookies kept."""
    return httpx.Client(base_url=cluster.url, timeout=10)


def _login(cluster: Cluster, token: str, *, keyed: bool = True) -> tuple[httpx.Client, str]:
    """A logged-in browser-like client; ``keyed``: it sends the session's key with every
    request, as the pages do (``X-CSRF-Token``)."""
    client = _browser(cluster)
    answer = client.post("/api/ui/login", json={"token": token})
    assert answer.status_code == 200, answer.text
    key = answer.json()["csrf"]
    if keyed:
        client.headers["X-CSRF-Token"] = key
    return client, key


def test_the_pages_and_files_are_served_with_a_strict_policy(cluster: Cluster) -> None:
    with _browser(cluster) as client:
        for path in ("/", "/tasks", "/tasks/abc", "/jobs/x1", "/history", "/login"):
            # A browser's navigation asks for HTML: /tasks is also the original API's route,
            # answered to scripts (routes/compat.py).
            answer = client.get(path, headers={"Accept": "text/html,*/*;q=0.8"})
            assert answer.status_code == 200, path
            assert "<title>HakuRiver</title>" in answer.text
            csp = answer.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert answer.headers["x-content-type-options"] == "nosniff"
        script = client.get("/static/js/app.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        again = client.get("/static/js/app.js", headers={"If-None-Match": script.headers["etag"]})
        assert again.status_code == 304
        # Only shipped names: no path ever reaches the file system.
        for bad in ("/static/../routes.py", "/static/%2e%2e/routes.py", "/static/nope.js"):
            assert client.get(bad).status_code == 404, bad
        assert client.get("/nodes/extra").status_code == 404


def test_login_sets_an_httponly_strict_cookie_and_never_echoes_the_token(
    cluster: Cluster,
) -> None:
    token = cluster.add_user("lena")
    with _browser(cluster) as client:
        answer = client.post("/api/ui/login", json={"token": token})
        assert answer.status_code == 200, answer.text
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert token not in cookie and token not in answer.text
        client.headers["X-CSRF-Token"] = answer.json()["csrf"]  # as the page does
        me = client.get("/api/ui/session").json()
        assert (me["user"], me["role"]) == ("lena", "user")
        assert me["csrf"] == answer.json()["csrf"]
        # The session reads what the token reads.
        assert client.get("/api/whoami").json()["user"] == "lena"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"token": "hkr_u_0000000000000000.nope"}, 401, "Authorization"),
        ({"token": ""}, 400, "token"),
        ({"token": 5}, 400, "token"),
        ({}, 400, "token"),
        ({"token": "a", "code": "b"}, 400, "token"),
        ({"code": "never-made"}, 401, "code"),
    ],
)
def test_a_bad_login_is_refused_naming_the_field(
    cluster: Cluster, body: dict[str, object], status: int, field: str
) -> None:
    with _browser(cluster) as client:
        answer = client.post("/api/ui/login", json=body)
        assert answer.status_code == status, answer.text
        assert answer.json()["field"] == field
        assert "set-cookie" not in answer.headers


def test_only_user_tokens_log_in(cluster: Cluster) -> None:
    join = cluster.token(kind="join", uses=1)
    with _browser(cluster) as client:
        answer = client.post("/api/ui/login", json={"token": join})
        assert answer.status_code in (401, 403), answer.text
        assert "set-cookie" not in answer.headers


def test_a_change_without_the_csrf_token_is_refused_and_with_it_goes_through(
    cluster: Cluster,
) -> None:
    token = cluster.add_user("mira")
    client, csrf = _login(cluster, token, keyed=False)
    with closing(client):
        body = {"public_key": KEY}
        refused = client.post("/api/keys", json=body)
        assert refused.status_code == 403, refused.text
        assert refused.json()["field"] == "x-csrf-token"
        wrong = client.post("/api/keys", json=body, headers={"X-CSRF-Token": "guess"})
        assert wrong.status_code == 403
        # Reads need the key too (csrf= where a header cannot go: event streams).
        assert client.get("/api/keys").status_code == 403
        assert client.get("/api/keys", params={"csrf": csrf}).json()["keys"] == []  # none made
        made = client.post("/api/keys", json=body, headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201, made.text
        # Logging out is a change too; after it, the old cookie is worth nothing.
        old = client.cookies["hakuriver_session"]
        assert client.post("/api/ui/logout").status_code == 403
        assert client.post("/api/ui/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
        assert "hakuriver_session" not in client.cookies
    with httpx.Client(base_url=cluster.url, cookies={"hakuriver_session": old}) as replay:
        gone = replay.get("/api/ui/session")
        assert gone.status_code == 401 and gone.json()["field"] == "session"


def test_a_session_follows_its_token_revocation_and_the_users_role(cluster: Cluster) -> None:
    token = cluster.add_user("nils")
    client, _ = _login(cluster, token)
    with closing(client):
        assert client.get("/api/users").status_code == 403  # a user: no admin routes
        assert cluster.http.post("/api/users/nils/role", json={"role": "admin"}).status_code == 200
        assert client.get("/api/users").status_code == 200  # promoted: at once
        token_id = client.get("/api/ui/session").json()["token_id"]
        assert cluster.http.post(f"/api/tokens/{token_id}/revoke").status_code == 200
        answer = client.get("/api/users")
        assert answer.status_code == 401 and "revoked" in answer.json()["message"]


def test_a_login_link_works_once_and_only_a_token_makes_one(cluster: Cluster) -> None:
    token = cluster.add_user("olga")
    with cluster.client_as(token) as cli:
        made = cli.post("/api/ui/links")
        assert made.status_code == 201, made.text
        path = made.json()["path"]
    assert path.startswith("/login#code=")
    code = path.split("#code=", 1)[1]
    with _browser(cluster) as client:
        first = client.post("/api/ui/login", json={"code": code})
        assert first.status_code == 200 and first.json()["user"] == "olga"
        csrf = first.json()["csrf"]
        # A session cannot mint links (a stolen page cannot make itself new logins).
        again = client.post("/api/ui/links", headers={"X-CSRF-Token": csrf})
        assert again.status_code == 403
    with _browser(cluster) as other:
        assert other.post("/api/ui/login", json={"code": code}).status_code == 401


def test_hakuriver_ui_prints_a_link_that_logs_in(cluster: Cluster, tmp_path: Path) -> None:
    token = cluster.add_user("pia")
    env = {"HAKURIVER_URL": cluster.url, "HAKURIVER_TOKEN": token, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "cli.hakuriver", "ui", "--no-open"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
    )
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    assert url.startswith(f"{cluster.url}/login#code="), done.stdout
    assert token not in url
    with _browser(cluster) as client:
        answer = client.post("/api/ui/login", json={"code": url.split("#code=", 1)[1]})
        assert answer.status_code == 200 and answer.json()["user"] == "pia"


def test_the_change_feed_shows_a_user_task_changes_but_only_their_own_jobs(
    cluster: Cluster,
) -> None:
    alice = cluster.add_user("quinn")
    bob = cluster.add_user("rosa")
    client, _ = _login(cluster, alice)
    job = {"yaml": "resources: {image_id: NULL}\nrun: echo hi\n"}
    with cluster.client_as(bob) as rosa:
        their_job = rosa.post("/api/jobs", json=job)
        assert their_job.status_code == 201, their_job.text
        theirs = rosa.post("/api/tasks", json={"command": "true", "container": "NULL"})
        assert theirs.status_code == 201, theirs.text
    with cluster.client_as(alice) as quinn:
        mine = quinn.post("/api/tasks", json={"command": "true", "container": "NULL"})
        assert mine.status_code == 201, mine.text
    [my_id], [their_id] = mine.json()["task_ids"], theirs.json()["task_ids"]
    their_job_id = their_job.json()["job_id"]
    seen: list[str] = []
    deadline = time.monotonic() + 20
    with closing(client), client.stream("GET", "/api/events/changes?after=0&keepalive=0.2") as feed:
        for line in feed.iter_lines():
            if line.startswith("data: "):
                seen.append(line)
            if any(my_id in s for s in seen) or time.monotonic() > deadline:
                break
    text = "\n".join(seen)
    assert f"task:{my_id}" in text
    # Another user's task is visible as metadata (GET /api/tasks): so is that it changed;
    # their jobs are private, and so are their changes.
    assert f"task:{their_id}" in text
    assert their_job_id not in text
    assert '"payload"' not in text  # notices carry no payload


def test_a_refused_login_is_audited_like_a_refused_token(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=()) as fresh, _browser(fresh) as client:
        for _ in range(3):
            answer = client.post("/api/ui/login", json={"code": "guessed-code"})
            assert answer.status_code == 401
        events = fresh.http.get("/api/events", params={"kind": "auth.failed"}).json()["events"]
    # The window's first refusal from an address is recorded; the rest are counted into
    # the next one (access.FailureLog): a flood of guesses cannot flood the log.
    assert [e["payload"]["route"] for e in events] == ["api/ui/login"]  # as Sanic names it


def test_a_bearer_header_wins_over_a_cookie_and_is_never_mixed(cluster: Cluster) -> None:
    token = cluster.add_user("xena")
    client, _ = _login(cluster, token)
    with closing(client):
        answer = client.get("/api/whoami", headers={"Authorization": "Bearer hkr_u_00.bad"})
        assert answer.status_code == 401  # no fall back to the session
        assert client.get("/api/whoami").json()["user"] == "xena"


def test_another_sites_page_can_neither_log_in_nor_change_with_the_cookie(
    cluster: Cluster,
) -> None:
    token = cluster.add_user("yuki")
    evil = {"Origin": "http://evil.example"}
    with _browser(cluster) as client:
        answer = client.post("/api/ui/login", json={"token": token}, headers=evil)
        assert answer.status_code == 403 and answer.json()["field"] == "Origin"
        assert "set-cookie" not in answer.headers
    client, csrf = _login(cluster, token)
    with closing(client):
        # Even with the CSRF secret (say, leaked), another origin's change is refused.
        refused = client.post(
            "/api/keys", json={"public_key": KEY}, headers={**evil, "X-CSRF-Token": csrf}
        )
        assert refused.status_code == 403 and refused.json()["field"] == "Origin"
        mine = {"Origin": cluster.url, "X-CSRF-Token": csrf}
        assert client.post("/api/ui/logout", headers=mine).status_code == 200


@pytest.mark.parametrize("how", ["demote", "revoke", "logout"])
def test_an_open_change_feed_ends_when_its_session_no_longer_holds(
    cluster: Cluster, how: str
) -> None:
    name = f"ada-{how}"
    token = cluster.add_user(name, role="admin")
    client, key = _login(cluster, token)
    token_id = client.get("/api/ui/session").json()["token_id"]
    ended = False
    with closing(client), client.stream("GET", "/api/events/changes?keepalive=0.1") as feed:
        lines = feed.iter_lines()
        assert next(lines).startswith("retry:")  # open
        if how == "demote":
            changed = cluster.http.post(f"/api/users/{name}/role", json={"role": "user"})
        elif how == "revoke":
            changed = cluster.http.post(f"/api/tokens/{token_id}/revoke")
        else:
            with httpx.Client(base_url=cluster.url, cookies=client.cookies) as other:
                changed = other.post("/api/ui/logout", headers={"X-CSRF-Token": key})
        assert changed.status_code == 200, changed.text
        deadline = time.monotonic() + 10
        for _ in lines:  # the host ends the stream at its next pass (a keep-alive at most)
            if time.monotonic() > deadline:
                break
        else:
            ended = True
    assert ended, "the feed went on after its session stopped holding"


def test_every_answer_says_not_to_sniff_frame_or_run_it(cluster: Cluster) -> None:
    with _browser(cluster) as client:
        for path in ("/api/health", "/api/nodes", "/api/nope", "/static/nope.js"):
            answer = client.get(path)
            assert answer.headers["x-content-type-options"] == "nosniff", path
            assert answer.headers["x-frame-options"] == "DENY", path
            assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], path
        page = client.get("/")  # the pages keep their own policy (scripts from here)
        assert "script-src 'self'" in page.headers["content-security-policy"]
