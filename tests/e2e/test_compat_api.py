"""Scripts written against the original HakuRiver's REST API keep working (issue 18, item 5).

The original's routes (hakuriver 0.3.0, ``hakuriver/core/host.py``) are called on a real
host and agent with the request bodies its client sent (``hakuriver/core/client.py``),
and answer in its JSON shapes, behind our tokens and our ownership rules
(control_plane/routes/compat.py, docs/api.md "Compatibility layer").
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from support.cluster import Cluster, running_cluster
from support.waiting import wait_until

from control_plane.access import rule_of
from control_plane.app import create_app
from control_plane.openapi import api_of, openapi_path, registered
from control_plane.routes import compat
from control_plane.settings import HostSettings
from events.types import GpuInfo, GpuUsage, NumaNode
from projections.nodes import NodeView

pytestmark = [pytest.mark.timeout(120), pytest.mark.xdist_group("compat-api")]

# Every route of the original host that its client (core/client.py) or its web dashboard
# called, with a path that names a task by number.
ORIGINAL_ROUTES = [
    ("POST", "/submit"),
    ("GET", "/status/1"),
    ("POST", "/kill/1"),
    ("POST", "/command/1/pause"),
    ("POST", "/command/1/resume"),
    ("GET", "/tasks"),
    ("GET", "/nodes"),
    ("GET", "/health"),
    ("GET", "/task/1/stdout"),
    ("GET", "/task/1/stderr"),
    ("GET", "/vps/status"),
]
# A public key, the ``command`` of the original's VPS submit (never used to log in here).
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMVgsrjvUWjrmylU9ejqs+tPeSN7XdrZcMyuKLEQSbyv"
FINAL = ("completed", "failed", "killed", "killed_oom", "lost")


def original_submit_body(
    command: str,
    args: list[str],
    env: dict[str, str] | None = None,
    cores: int = 0,
    memory_bytes: int | None = None,
    targets: list[str] | None = None,
    container_name: str | None = "NULL",
    gpu_ids: list[list[int]] | None = None,
) -> dict[str, Any]:
    """The body hakuriver 0.3.0's ``hakuriver/core/client.py`` ``submit_task`` posts to
    ``/submit``, key for key (its ``payload``); ``NULL``: no Docker needed here."""
    return {
        "command": command,
        "arguments": args,
        "env_vars": env or {},
        "required_cores": cores,
        "required_memory_bytes": memory_bytes,
        "targets": targets if targets is not None else ["n1"],
        "container_name": container_name,
        "privileged": None,
        "additional_mounts": None,
        "required_gpus": gpu_ids,
    }


class World:
    def __init__(self, cluster: Cluster, alice: str, bob: str) -> None:
        self.cluster = cluster
        self.alice = cluster.client_as(alice)
        self.bob = cluster.client_as(bob)

    def submit(self, client: httpx.Client, **fields: Any) -> str:
        """A task through ``POST /submit``; its original-style id (digits)."""
        body = original_submit_body(**fields)
        answer = client.post("/submit", json=body)
        assert answer.status_code == 202, answer.text
        [task_id] = answer.json()["task_ids"]
        return str(task_id)

    def status(self, task_id: str, client: httpx.Client | None = None) -> dict[str, Any]:
        answer = (client or self.alice).get(f"/status/{task_id}")
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    def wait_status(self, task_id: str, *wanted: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def reached() -> bool:
            seen.update(self.status(task_id))
            return seen["status"] in wanted

        wait_until(reached, timeout=30, interval=0.05)
        return seen


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_cluster(tmp_path_factory.mktemp("compat"), agents=("n1",)) as cluster:
        world = World(cluster, cluster.add_user("alice"), cluster.add_user("bob"))
        try:
            yield world
        finally:
            world.alice.close()
            world.bob.close()


def test_every_original_route_is_served_behind_a_token(world: World, tmp_path: Path) -> None:
    app = create_app(HostSettings(data_dir=str(tmp_path)), name=f"compat_{uuid.uuid4().hex[:8]}")
    app.router.finalize()
    with world.cluster.client_as(None) as anonymous:
        for method, path in ORIGINAL_ROUTES:
            route, handler, _ = app.router.get(path, method, None)
            # The original's route, not the dashboard's page path that would match too.
            assert handler.__module__ == "control_plane.routes.compat", (method, path, route.path)
            assert rule_of(handler) == "user", (method, path, route.path)
            # Served (not the dashboard's 404 for an unknown page), and refused without a token.
            answer = anonymous.request(method, path, json={} if method == "POST" else None)
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.json()["field"] == "Authorization"


def test_submit_status_output_and_lists_with_the_original_bodies(world: World) -> None:
    marker = uuid.uuid4().hex
    body = original_submit_body(
        "sh", ["-c", 'echo "out $MARK"; echo "err $MARK" >&2'], env={"MARK": marker}
    )
    answer = world.alice.post("/submit", json=body)
    assert answer.status_code == 202, answer.text
    submitted = answer.json()
    assert submitted["message"] == "Task batch submitted successfully. 1 tasks created."
    [task_id] = submitted["task_ids"]
    assert isinstance(task_id, str) and task_id.isdigit()  # as the original's snowflakes
    int(task_id)  # scripts that int() it keep working

    done = world.wait_status(task_id, *FINAL)
    assert done["status"] == "completed", done
    assert done["task_id"] == task_id and done["exit_code"] == 0
    assert done["command"] == "sh" and done["arguments"][0] == "-c"
    assert done["env_vars"] == {"MARK": marker}
    assert done["assigned_node"] == "n1" and done["required_cores"] == 0
    assert done["submitted_at"] and done["started_at"] and done["completed_at"]
    assert done["stdout_path"].endswith(f"task_outputs/{done['id']}.out")
    # The original's scripts read the output on the shared folder, where it says.
    assert Path(done["stdout_path"]).read_text() == f"out {marker}\n"
    assert done["redacted"] is False

    out = world.alice.get(f"/task/{task_id}/stdout")
    assert out.status_code == 200 and out.headers["content-type"].startswith("text/plain")
    assert out.text == f"out {marker}\n"
    assert world.alice.get(f"/task/{task_id}/stderr").text == f"err {marker}\n"
    # Our ids work in the original's paths too.
    assert world.alice.get(f"/status/{done['id']}").json()["task_id"] == task_id

    listed = world.alice.get("/tasks")
    assert listed.status_code == 200 and listed.headers["content-type"] == "application/json"
    tasks = listed.json()
    assert isinstance(tasks, list) and tasks[0]["task_id"] == task_id  # newest first
    assert {"status", "assigned_node", "exit_code", "arguments"} <= set(tasks[0])


def test_pause_resume_and_kill_through_the_original_routes(world: World) -> None:
    task_id = world.submit(world.alice, command="sleep", args=["300"])
    world.wait_status(task_id, "running")

    paused = world.alice.post(f"/command/{task_id}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["message"].startswith(f"Pause for task {task_id}")
    world.wait_status(task_id, "paused")
    resumed = world.alice.post(f"/command/{task_id}/resume")
    assert resumed.status_code == 200, resumed.text
    world.wait_status(task_id, "running")
    assert world.alice.post(f"/command/{task_id}/explode").json()["field"] == "command"

    killed = world.alice.post(f"/kill/{task_id}")
    assert killed.status_code == 202, killed.text
    assert killed.json() == {"message": f"Kill requested for task {task_id}."}
    assert world.wait_status(task_id, *FINAL)["status"] == "killed"
    again = world.alice.post(f"/kill/{task_id}")
    assert again.status_code == 409 and again.json()["field"] == "task_id"


def test_nodes_health_and_vps_status_in_the_original_shapes(world: World) -> None:
    nodes = world.alice.get("/nodes")
    assert nodes.status_code == 200, nodes.text
    [n1] = nodes.json()
    assert n1["hostname"] == "n1" and n1["status"] == "online"
    assert n1["total_cores"] > 0 and n1["available_cores"] <= n1["total_cores"]
    assert n1["cores_in_use"] == n1["total_cores"] - n1["available_cores"]
    assert n1["last_heartbeat"] and isinstance(n1["gpu_info"], list)

    health = world.alice.get("/health")
    assert health.status_code == 200, health.text
    document = health.json()
    [[entry]] = document["nodes"]
    [aggregate] = document["aggregate"]
    assert entry["hostname"] == "n1" and entry["memory_total_bytes"] > 0
    assert aggregate["totalNodes"] == aggregate["onlineNodes"] == 1
    assert aggregate["totalCores"] == n1["total_cores"]
    one = world.alice.get("/health", params={"hostname": "n1"})
    assert one.status_code == 200 and one.json()[0]["hostname"] == "n1"
    unknown = world.alice.get("/health", params={"hostname": "nope"})
    assert unknown.status_code == 404 and unknown.json()["field"] == "hostname"

    vps = world.alice.get("/vps/status")
    assert vps.status_code == 200 and vps.json() == []  # only active VPS tasks; none here


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"required_cores": "two"}, "required_cores"),
        ({"required_cores": -1}, "required_cores"),
        ({"required_memory_bytes": -5}, "required_memory_bytes"),
        ({"targets": ["n1:zero"]}, "targets[0]"),
        ({"targets": ["nowhere"]}, "targets[0]"),
        ({"required_gpus": [[0], [1]]}, "required_gpus"),
        ({"targets": None, "required_gpus": [[0]]}, "required_gpus"),
        ({"task_type": "batch"}, "task_type"),
        ({"command": ""}, "command"),
        ({"arguments": ["ok", "nul\u0000"]}, "arguments[1]"),
        ({"env_vars": {"A=B": "x"}}, "env_vars"),
        ({"container_name": "Not An Image!"}, "container_name"),
        ({"task_type": "vps", "container_name": "NULL"}, "container_name"),
    ],
)
def test_bad_original_bodies_are_refused_naming_the_original_field(
    world: World, change: dict[str, Any], field: str
) -> None:
    body = {**original_submit_body("true", []), **change}
    answer = world.alice.post("/submit", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field, answer.text
    malformed = world.alice.post("/submit", content=b"{not json")
    assert malformed.status_code == 400 and malformed.json()["field"] == "body"


def test_the_task_list_is_bounded_and_pages(world: World) -> None:
    """The original listed every task on each call; here the newest 1000 at most."""
    for command in ("true", "true"):
        world.submit(world.alice, command=command, args=[])
    newest = world.alice.get("/tasks", params={"limit": 1})
    assert newest.status_code == 200 and len(newest.json()) == 1, newest.text
    second = world.alice.get("/tasks", params={"limit": 1, "offset": 1})
    assert second.json()[0]["task_id"] != newest.json()[0]["task_id"]
    too_many = world.alice.get("/tasks", params={"limit": 1001})
    assert too_many.status_code == 400 and too_many.json()["field"] == "limit", too_many.text


def test_a_refusal_of_another_kind_names_the_original_field_too(world: World) -> None:
    """A user's mount outside what users may mount is a 403, not a 400: it must name the
    original's field as the 400s do."""
    body = {**original_submit_body("true", []), "additional_mounts": ["/etc:/x"]}
    answer = world.alice.post("/submit", json=body)
    assert answer.status_code == 403, answer.text
    assert answer.json()["field"].startswith("additional_mounts"), answer.text


def test_a_user_cannot_read_or_act_on_another_users_task_through_the_original_routes(
    world: World,
) -> None:
    secret = uuid.uuid4().hex
    task_id = world.submit(
        world.alice, command="sh", args=["-c", "echo $S; exec sleep 300"], env={"S": secret}
    )
    world.wait_status(task_id, "running")

    seen = world.bob.get(f"/status/{task_id}")
    assert seen.status_code == 200 and secret not in seen.text
    assert seen.json()["redacted"] is True and seen.json()["stdout_path"] is None
    listed = world.bob.get("/tasks")
    assert task_id in {t["task_id"] for t in listed.json()} and secret not in listed.text
    for path in (f"/task/{task_id}/stdout", f"/task/{task_id}/stderr"):
        refused = world.bob.get(path)
        assert refused.status_code == 403 and secret not in refused.text, path
    for path in (f"/kill/{task_id}", f"/command/{task_id}/pause"):
        refused = world.bob.post(path)
        assert refused.status_code == 403, (path, refused.text)
    assert world.status(task_id)["status"] == "running"  # nothing happened to it
    # Its owner still can.
    assert world.alice.post(f"/kill/{task_id}").status_code == 202
    world.wait_status(task_id, *FINAL)


def test_a_browsers_navigation_to_tasks_and_nodes_still_gets_the_dashboard(world: World) -> None:
    navigation = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    with world.cluster.client_as(None) as browser:
        for path in ("/tasks", "/nodes"):
            page = browser.get(path, headers=navigation)
            assert page.status_code == 200 and "<title>HakuRiver</title>" in page.text, path
    # With a token, the same Accept gets the original's JSON.
    assert world.alice.get("/tasks", headers=navigation).headers["content-type"] == (
        "application/json"
    )


def _check_declared(app: Any, method: str, path: str, answer: httpx.Response) -> Any:
    """``answer`` decoded with the type its route declares in the OpenAPI document
    (control_plane/routes/compat.py), which must give the answer back when encoded again:
    a field the handler writes that the type does not name, at any depth, would be
    dropped and the two would differ; one the type names that the answer lacks, or of
    another type, fails the decode."""
    route = next(r for m, p, r in registered(app) if m == method and openapi_path(p) == path)
    operation = api_of(route.handler)
    assert operation is not None, (method, path)
    assert answer.status_code == operation.status, (method, path, answer.text)
    value = msgspec.json.decode(answer.content, type=operation.response)
    again = msgspec.json.decode(msgspec.json.encode(value))
    assert again == answer.json(), f"{method} {path}: the answer differs from its declared type"
    return value


def test_real_answers_decode_with_the_declared_types(world: World, tmp_path: Path) -> None:
    app = create_app(HostSettings(data_dir=str(tmp_path)), name=f"compat_{uuid.uuid4().hex[:8]}")
    alice = world.alice
    [node] = alice.get("/nodes").json()
    # One task holding every core of the node, and one queued behind it (no assigned_node).
    placed = alice.post(
        "/submit", json=original_submit_body("sleep", ["300"], cores=node["total_cores"])
    )
    task_id = placed.json()["task_ids"][0]
    queued = alice.post("/submit", json=original_submit_body("true", [], cores=1, targets=[]))
    # A VPS task queued too (the original's command is its public key): in /vps/status.
    vps_body = original_submit_body(KEY, [], cores=1, targets=[], container_name="vps-image")
    vps = alice.post("/submit", json={**vps_body, "task_type": "vps"})
    world.wait_status(task_id, "running")
    calls = [
        ("POST", "/submit", placed),
        ("POST", "/submit", queued),
        ("GET", "/status/{ident}", alice.get(f"/status/{task_id}")),
        ("GET", "/tasks", alice.get("/tasks")),
        ("GET", "/tasks", world.bob.get("/tasks")),  # alice's tasks redacted
        ("GET", "/nodes", alice.get("/nodes")),
        ("GET", "/health", alice.get("/health")),
        ("GET", "/health", alice.get("/health", params={"hostname": "n1"})),
        ("POST", "/submit", vps),
        ("GET", "/vps/status", alice.get("/vps/status")),
        ("GET", "/vps/status", world.bob.get("/vps/status")),  # alice's: no ssh_port
        ("POST", "/command/{ident}/{command}", alice.post(f"/command/{task_id}/pause")),
    ]
    for method, path, answer in calls:
        _check_declared(app, method, path, answer)
    assert placed.json()["assigned_node"] == {"hostname": "n1", "url": None}
    assert queued.json()["assigned_node"] is None
    [vps_entry] = alice.get("/vps/status").json()
    assert vps_entry["task_id"] == vps.json()["task_ids"][0] and vps_entry["status"] == "pending"
    # Killed, the queued ones first (the node's cores would go to them).
    for ident in (vps.json()["task_ids"][0], queued.json()["task_ids"][0], task_id):
        _check_declared(app, "POST", "/kill/{ident}", alice.post(f"/kill/{ident}"))
    world.wait_status(task_id, *FINAL)
    stdout = alice.get(f"/task/{task_id}/stdout")
    route = next(r for _, p, r in registered(app) if p == "/task/<ident:str>/stdout")
    declared = api_of(route.handler)
    assert declared is not None and stdout.headers["content-type"] == declared.content_type

    # What the check catches: a field the type does not name, inside a list's entry.
    doctored = alice.get("/nodes").json()
    doctored[0]["extra"] = 1
    with pytest.raises(AssertionError, match="differs from its declared type"):
        _check_declared(app, "GET", "/nodes", httpx.Response(200, json=doctored))


def test_gpu_and_numa_entries_match_their_declared_types() -> None:
    """The test agents have no GPUs, so the entries of ``gpu_info`` (and a node with two
    NUMA nodes) are checked here, on the handler's own function over a node's view."""
    node = NodeView(
        name="g1",
        cores=4,
        memory_bytes=8 << 30,
        numa=(NumaNode(id=0, cpus=(0, 1), memory_bytes=4 << 30), NumaNode(id=1, cpus=(2, 3))),
        gpus=(
            GpuInfo(id=0, name="H200", memory_bytes=141 << 30, uuid="GPU-0"),
            GpuInfo(id=1, name="H200", memory_bytes=141 << 30),
        ),
        gpu_usage=(
            GpuUsage(id=0, utilization_percent=37.6, memory_used_bytes=1 << 30, temperature_c=51.4),
        ),
        temperatures={"cpu0": 40.0, "cpu1": 50.0},
        last_seen_us=1_700_000_000_000_000,
    )
    entry = compat._health(node)
    value = msgspec.json.decode(msgspec.json.encode(entry), type=compat.OriginalNodeHealth)
    assert msgspec.to_builtins(value) == msgspec.json.decode(msgspec.json.encode(entry))
    used, idle = entry["gpu_info"]
    assert used["gpu_utilization"] == 38 and used["temperature"] == 51
    assert used["memory_free_mib"] == 140 * 1024 and idle["gpu_utilization"] is None
    assert set(entry["numa_topology"]) == {"0", "1"}
    assert entry["current_max_temp"] == 50.0
