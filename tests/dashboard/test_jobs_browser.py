"""The Jobs, Job and VPS pages in a real browser (Debian's chromium via Playwright) against
a real host: jobs on two real agents (plain-process ranks, ``image_id: NULL``), VPS tasks
on a node the test plays over the real agent link (``FakeVpsNode``: no Docker needed, the
host, its SSH gateway and its routes are the real ones).

A 2-node job submitted from pasted YAML shows both ranks on their nodes and reaches
``completed`` without a reload, with its combined log prefixed ``node-0 |``/``node-1 |``; a
file with an error shows the field and the line and submits nothing; a running job is
stopped from its page; the VPS page shows the exact ``ssh -J`` command, copies it, and
pauses, resumes and kills the VPS.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from playwright.sync_api import expect
from support.browser import PageErrors, browser_context, login, require_browser, screenshot
from support.cluster import Cluster, running_cluster
from support.fake_vps_node import FakeVpsNode
from support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

_USERS = itertools.count(1)
LIVE = 30_000  # ms: what the page is given to show a change (a shared, busy CI machine)

TWO_NODES = """\
name: pair
num_nodes: 2
resources:
  cpus: "1"
  image_id: NULL
setup: |
  echo "setup of rank $NODE_RANK"
run: |
  echo "hello from rank $NODE_RANK of $NUM_NODES"
  while [ ! -e "{flag}" ]; do sleep 0.05; done
  echo "rank $NODE_RANK done"
"""

BAD_MEMORY = """\
name: bad
num_nodes: 1
resources:
  cpus: "1"
  image_id: NULL
  memory: 4Gx
run: |
  echo never
"""

SLEEPER = """\
name: sleeper
num_nodes: 2
resources:
  cpus: "1"
  image_id: NULL
run: |
  echo "rank $NODE_RANK sleeping"
  sleep 300
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_browser()
    with running_cluster(tmp_path_factory.mktemp("jobs-ui"), agents=("n1", "n2")) as c:
        yield c


@pytest.fixture
def user(cluster: Cluster) -> Iterator[str]:
    """A fresh user's token for one test; the cluster settled after it."""
    yield cluster.add_user(f"jobber{next(_USERS)}")
    cluster.settle()


def api(cluster: Cluster, token: str, method: str, path: str, **kwargs: Any) -> Any:
    with cluster.client_as(token) as client:
        answer = client.request(method, path, **kwargs)
    assert answer.status_code < 300, answer.text
    return answer.json()


def test_a_two_node_job_from_pasted_yaml_shows_both_ranks_live_and_its_prefixed_logs(
    cluster: Cluster, user: str, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    tmp_path.chmod(0o777)
    with browser_context() as context:
        page = context.new_page()
        errors = PageErrors(page)
        login(page, cluster.url, user, "/jobs")
        page.get_by_role("heading", name="Jobs", exact=True).wait_for()
        expect(page.locator(".empty")).to_contain_text("No jobs yet")
        # Given a 2-node file pasted into the form, when it is submitted:
        page.get_by_label("Job file (YAML)").fill(TWO_NODES.format(flag=flag))
        page.get_by_role("button", name="Submit job").click()
        # Then the job's page shows both ranks, each on a node of its own, running.
        page.wait_for_url("**/jobs/*")
        job_id = page.url.rsplit("/", 1)[1]
        ranks = page.locator("table.jobs-ranks tbody tr")
        expect(ranks).to_have_count(2)
        for rank in (0, 1):
            expect(ranks.nth(rank).locator("td").nth(3)).to_have_text("running", timeout=LIVE)
        nodes = sorted(ranks.nth(r).locator("td").nth(1).inner_text() for r in (0, 1))
        assert nodes == ["n1", "n2"]
        expect(page.locator(".jobs-log")).to_contain_text("node-0 | hello from rank 0 of 2")
        expect(page.locator(".jobs-log")).to_contain_text("node-1 | hello from rank 1 of 2")
        screenshot(page, "job-running")
        # When the ranks are let go, the page turns completed with no reload.
        page.evaluate("() => { window.__same_page = true; }")
        flag.touch()
        expect(page.locator(".jobs-head .badge")).to_have_text("completed", timeout=LIVE)
        for rank in (0, 1):
            expect(ranks.nth(rank).locator("td").nth(3)).to_have_text("completed")
            expect(ranks.nth(rank).locator("td").nth(4)).to_have_text("0")
        log = page.locator(".jobs-log")
        expect(log).to_contain_text("node-0 | rank 0 done", timeout=LIVE)
        expect(log).to_contain_text("node-1 | rank 1 done")
        expect(log).to_contain_text("node-1 | setup of rank 1")
        # The page shows what the API serves, line for line.
        served = api(cluster, user, "GET", f"/api/jobs/{job_id}")
        assert [r["node"] for r in served["ranks"]] == [
            ranks.nth(r).locator("td").nth(1).inner_text() for r in (0, 1)
        ]
        assert page.evaluate("() => window.__same_page") is True
        # A rank's task links to its own page.
        task_link = ranks.nth(1).locator("td").nth(2).get_by_role("link")
        assert task_link.get_attribute("href") == f"/tasks/{served['ranks'][1]['task_id']}"
        # One rank's log alone has no prefixes.
        page.get_by_label("Show the logs of").select_option("1")
        expect(log).to_contain_text("hello from rank 1 of 2")
        expect(log).not_to_contain_text("node-1 |")
        expect(log).not_to_contain_text("rank 0")
        page.get_by_label("Show the logs of").select_option("")
        expect(log).to_contain_text("node-0 | rank 0 done")
        screenshot(page, "job-detail")
        # The download is the whole combined log, as the API serves it.
        with page.expect_download() as download:
            page.get_by_role("button", name="Download logs").click()
        assert download.value.suggested_filename == f"job-{job_id}.log"
        with cluster.client_as(user) as client:
            whole = client.get(f"/api/jobs/{job_id}/logs").text
        assert Path(download.value.path()).read_text() == whole
        assert "node-0 | rank 0 done" in whole
        # The list shows it, completed, with its two nodes.
        page.get_by_role("link", name="← Jobs").click()
        row = page.locator(f"tr[data-job='{job_id}']")
        expect(row.locator(".badge")).to_have_text("completed")
        expect(row).to_contain_text("2 completed")
        expect(row).to_contain_text("n1")
        expect(row).to_contain_text("n2")
        screenshot(page, "jobs")
        assert errors.real() == []


def test_a_yaml_error_names_the_field_and_the_line_and_submits_nothing(
    cluster: Cluster, user: str, tmp_path: Path
) -> None:
    upload = tmp_path / "bad.yaml"
    upload.write_text(BAD_MEMORY)
    with browser_context() as context:
        page = context.new_page()
        login(page, cluster.url, user, "/jobs")
        # Given a file with a bad size, uploaded: the form reads it into the text area.
        page.get_by_label("Or upload a file").set_input_files(str(upload))
        expect(page.get_by_label("Job file (YAML)")).to_have_value(BAD_MEMORY)
        page.get_by_role("button", name="Submit job").click()
        alert = page.locator(".jobs-error")
        expect(alert).to_be_visible()
        expect(alert.locator(".jobs-field")).to_have_text("resources.memory")
        expect(alert).to_contain_text("at line 6")
        expect(alert).to_contain_text("'4Gx' is not a size")
        # The line the parser named is selected in the text area.
        selected = page.get_by_label("Job file (YAML)").evaluate(
            "a => a.value.slice(a.selectionStart, a.selectionEnd)"
        )
        assert selected == "  memory: 4Gx"
        screenshot(page, "jobs-yaml-error")
        # A misspelt field: named with its line and the known ones.
        page.get_by_label("Job file (YAML)").fill("name: typo\nrnu: echo hi\n")
        page.get_by_role("button", name="Submit job").click()
        expect(alert.locator(".jobs-field")).to_have_text("rnu")
        expect(alert).to_contain_text("at line 2")
        expect(alert).to_contain_text("did you mean 'run'?")
        assert page.url.endswith("/jobs")
    assert api(cluster, user, "GET", "/api/jobs")["total"] == 0


def test_a_running_job_is_stopped_from_its_page(cluster: Cluster, user: str) -> None:
    submitted = api(cluster, user, "POST", "/api/jobs", json={"yaml": SLEEPER})
    job_id = submitted["job_id"]
    with browser_context() as context:
        page = context.new_page()
        errors = PageErrors(page)
        login(page, cluster.url, user, f"/jobs/{job_id}")
        status = page.locator(".jobs-head .badge")
        expect(status).to_have_text("running", timeout=LIVE)
        expect(page.locator(".jobs-log")).to_contain_text("node-1 | rank 1 sleeping", timeout=LIVE)
        page.get_by_role("button", name="Stop job").click()
        page.get_by_role("button", name="Yes, stop it").click()
        expect(status).to_have_text("stopped", timeout=LIVE)
        ranks = page.locator("table.jobs-ranks tbody tr")
        for rank in (0, 1):
            expect(ranks.nth(rank).locator(".badge")).to_have_text("killed", timeout=LIVE)
        expect(page.get_by_role("button", name="Stop job")).to_have_count(0)
        assert api(cluster, user, "GET", f"/api/jobs/{job_id}")["stop_requested_by"]
        assert errors.real() == []


def test_a_job_that_cannot_be_placed_says_why_and_is_stopped_from_the_list_on_a_phone(
    cluster: Cluster, user: str
) -> None:
    # Given a 3-node job on a 2-node cluster: it waits, never partly placed.
    three = SLEEPER.replace("num_nodes: 2", "num_nodes: 3")
    job_id = api(cluster, user, "POST", "/api/jobs", json={"yaml": three})["job_id"]
    why = api(cluster, user, "GET", f"/api/jobs/{job_id}")["why"]
    assert why, "the scheduler explains a queued job"
    with browser_context(viewport={"width": 390, "height": 844}, is_mobile=True) as context:
        page = context.new_page()
        errors = PageErrors(page)
        login(page, cluster.url, user, f"/jobs/{job_id}")
        # Its page says why it is pending, as the API does.
        expect(page.locator(".jobs-head .badge")).to_have_text("pending")
        expect(page.locator(".jobs-why-card")).to_have_text(f"Why pending: {why}")
        screenshot(page, "phone-job-pending")
        # The list says it too, and stops it.
        page.get_by_role("link", name="← Jobs").click()
        row = page.locator(f"tr[data-job='{job_id}']")
        expect(row.locator(".jobs-why")).to_have_text(why)
        row.get_by_role("button", name=f"Stop job {job_id}").click()
        expect(row.locator(".badge")).to_have_text("stopped", timeout=LIVE)
        expect(row.get_by_role("button", name=f"Stop job {job_id}")).to_be_hidden()
        # The status filter keeps its state in the address.
        page.get_by_label("Status").select_option("running")
        expect(row).to_be_hidden()
        assert "status=running" in page.url
        assert errors.real() == []


# -- VPS -------------------------------------------------------------------------------------

VPS_NODE = "vpsnode"


@pytest.fixture(scope="module")
def vps_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, FakeVpsNode]]:
    require_browser()
    with running_cluster(tmp_path_factory.mktemp("vps-ui"), agents=()) as cluster:
        node = FakeVpsNode(cluster.url, cluster.enroll(VPS_NODE), VPS_NODE).start()
        try:
            cluster.wait_node(VPS_NODE, online=True)
            yield cluster, node
        finally:
            node.stop()


def public_key(comment: str) -> str:
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    return str(key.export_public_key("openssh").decode().strip())


def test_the_vps_page_starts_a_vps_shows_and_copies_its_ssh_command_and_controls_it(
    vps_world: tuple[Cluster, FakeVpsNode],
) -> None:
    cluster, node = vps_world
    token = cluster.add_user("vic")
    api(cluster, token, "POST", "/api/keys", json={"public_key": public_key("vic@laptop")})
    gateway = api(cluster, token, "GET", "/api/ssh")
    assert gateway["enabled"] is True, gateway
    with browser_context(permissions=["clipboard-read", "clipboard-write"]) as context:
        page = context.new_page()
        errors = PageErrors(page)
        login(page, cluster.url, token, "/vps")
        page.get_by_role("heading", name="VPS", exact=True).wait_for()
        expect(page.locator(".empty")).to_contain_text("No VPS tasks")
        expect(page.locator(".vps-gateway")).to_contain_text(gateway["fingerprint"])
        # Given the form, with the registered key (the default once one exists):
        expect(page.get_by_label("All my registered keys (1)")).to_be_checked()
        page.get_by_label("Container").fill("vps-test")
        page.get_by_label("Node").fill(VPS_NODE)
        page.get_by_label("Name", exact=True).fill("devbox")
        page.get_by_role("button", name="Start VPS").click()
        # When the node runs it and its sshd answers:
        wait_until(lambda: bool(api(cluster, token, "GET", "/api/tasks")["tasks"]), timeout=20)
        [task] = api(cluster, token, "GET", "/api/tasks")["tasks"]
        assert task["task_type"] == "vps" and task["name"] == "devbox"
        row = page.locator(f"tr[data-task='{task['task_id']}']")
        expect(row).to_be_visible(timeout=LIVE)
        node.ready(task["task_id"], 2222)
        # Then the row shows the exact command to reach it through the gateway.
        command = f"ssh -J vic@{gateway['host']}:{gateway['port']} root@vps-{task['number']}"
        expect(row.locator(".badge")).to_have_text("running", timeout=LIVE)
        expect(row.locator("code.vps-cmd")).to_have_text(command, timeout=LIVE)
        expect(row).to_contain_text(VPS_NODE)
        row.get_by_role("button", name=f"Copy the ssh command of VPS {task['number']}").click()
        assert page.evaluate("() => navigator.clipboard.readText()") == command
        screenshot(page, "vps")
        # Pause, resume and kill from the row, each seen live.
        row.get_by_role("button", name=f"Pause VPS {task['number']}").click()
        expect(row.locator(".badge")).to_have_text("paused", timeout=LIVE)
        expect(row).to_contain_text("resume it to connect")
        row.get_by_role("button", name=f"Resume VPS {task['number']}").click()
        expect(row.locator(".badge")).to_have_text("running", timeout=LIVE)
        row.get_by_role("button", name=f"Kill VPS {task['number']}").click()
        expect(row).to_have_count(0, timeout=LIVE)  # the list shows active ones
        page.get_by_label("Show ended ones").check()
        expect(row.locator(".badge")).to_have_text("killed", timeout=LIVE)
        assert "ended=1" in page.url
        assert errors.real() == []


def test_a_vps_without_a_key_says_which_field_and_how_to_add_one(
    vps_world: tuple[Cluster, FakeVpsNode],
) -> None:
    cluster, _node = vps_world
    token = cluster.add_user("kim")
    with browser_context() as context:
        page = context.new_page()
        login(page, cluster.url, token, "/vps")
        # No registered key: pasting one is the choice, and an empty paste is refused here.
        expect(page.get_by_label("Paste a public key")).to_be_checked()
        expect(page.locator(".vps-form")).to_contain_text("hakuriver key add")
        page.get_by_role("button", name="Start VPS").click()
        expect(page.locator(".vps-error")).to_contain_text("ssh_public_key")
        # A line that is not a key: the host's refusal, naming the field.
        page.get_by_label("Public key (one OpenSSH key a line)").fill("not a key")
        page.get_by_label("Container").fill("vps-test")
        page.get_by_role("button", name="Start VPS").click()
        expect(page.locator(".vps-error")).to_contain_text("ssh_public_key")
    assert api(cluster, token, "GET", "/api/tasks")["tasks"] == []
