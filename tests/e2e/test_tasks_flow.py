"""Command tasks end to end: a real control plane and real agents on loopback.

Each scenario starts its own cluster (processes, DuckDB file, shared dir) in
``tmp_path``. Long-running tasks block on a "gate" file the test creates when it
wants them to finish, so nothing depends on timing.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest
from support.cluster import Cluster, module_cluster_fixture, running_cluster


def gated(gate: Path, then: str = "true") -> list[str]:
    """A shell command that waits for ``gate`` to exist, then runs ``then``."""
    return ["-c", f"while [ ! -e '{gate}' ]; do sleep 0.02; done; {then}"]


# One cluster per module and worker; a test that restarts the host or counts from the
# first task number has its own (``own_cluster``).
module_cluster, cluster = module_cluster_fixture()


@pytest.fixture
def own_cluster(tmp_path: Path):
    with running_cluster(tmp_path, agents=("n1",)) as c:
        yield c


def test_a_task_runs_and_its_output_is_served(cluster: Cluster) -> None:
    # Given a one-node cluster, when a task prints to both streams
    [task_id] = cluster.submit("sh", "-c", "echo out; echo err >&2; exit 0")
    task = cluster.wait_state(task_id)
    # Then it completed on n1 with exit 0 and its output is readable
    assert task["state"] == "completed", task
    assert task["exit_code"] == 0 and task["node"] == "n1"
    assert cluster.output(task_id) == b"out\n"
    assert cluster.output(task_id, "stderr") == b"err\n"
    assert task["started_at"] and task["finished_at"] and task["queue_wait_s"] >= 0


def test_a_failing_command_and_a_missing_one_fail_with_a_reason(cluster: Cluster) -> None:
    [exits] = cluster.submit("sh", "-c", "exit 3")
    [missing] = cluster.submit("/no/such/program")
    assert cluster.wait_state(exits)["exit_code"] == 3
    assert cluster.task(exits)["state"] == "failed"
    gone = cluster.wait_state(missing)
    assert gone["state"] == "failed"
    assert "/no/such/program" in gone["message"]


def test_shell_syntax_in_arguments_is_passed_literally(cluster: Cluster) -> None:
    text = "$(echo pwned); echo 'single' \"double\" `id` && rm -rf nothing"
    [task_id] = cluster.submit("echo", text)
    cluster.wait_state(task_id, "completed")
    assert cluster.output(task_id) == (text + "\n").encode()


def test_env_and_working_directory(cluster: Cluster) -> None:
    [task_id] = cluster.submit("sh", "-c", 'echo "$GREETING"; pwd', env={"GREETING": "hi there"})
    cluster.wait_state(task_id, "completed")
    out = cluster.output(task_id).decode().splitlines()
    assert out[0] == "hi there"
    assert Path(out[1]) == (cluster.shared / "shared_data").resolve()


def test_a_multi_target_batch_runs_once_per_node(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=("n1", "n2")) as cluster:
        r = cluster.http.post(
            "/api/tasks",
            json={
                "command": "sh",
                "args": ["-c", "echo $HOSTNAME"],
                "targets": ["n1", "n2"],
                "container": "NULL",
            },
        )
        assert r.status_code == 201, r.text
        batch = r.json()
        assert len(batch["task_ids"]) == 2
        nodes = {cluster.wait_state(t, "completed")["node"] for t in batch["task_ids"]}
        assert nodes == {"n1", "n2"}
        listed = cluster.http.get("/api/tasks", params={"batch": batch["batch_id"]}).json()
        assert sorted(t["task_id"] for t in listed["tasks"]) == sorted(batch["task_ids"])
        assert {t["batch_id"] for t in listed["tasks"]} == {batch["batch_id"]}


def test_a_task_that_does_not_fit_waits_and_starts_when_room_frees(cluster: Cluster) -> None:
    cores = cluster.node("n1")["cores"]  # type: ignore[index]
    gate = cluster.root / "gate-big"
    # Given a task holding every core of the node
    [big] = cluster.submit("sh", *gated(gate), cores=cores)
    cluster.wait_state(big, "running")
    # When another task arrives, it waits in the queue instead of being rejected
    [small] = cluster.submit("true", cores=1)
    assert cluster.task(small)["state"] == "pending"
    node = cluster.node("n1")
    assert node is not None and node["free_cores"] == 0
    # Then it starts once the big one ends
    gate.touch()
    cluster.wait_state(big, "completed")
    assert cluster.wait_state(small)["state"] == "completed"


def test_concurrent_submits_never_double_allocate(own_cluster: Cluster) -> None:
    cluster = own_cluster
    cores = cluster.node("n1")["cores"]  # type: ignore[index]
    gate = cluster.root / "gate-many"
    n = cores + 6
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = [
            i
            for batch in pool.map(lambda _: cluster.submit("sh", *gated(gate), cores=1), range(n))
            for i in batch
        ]
    # Exactly `cores` of them hold the node; the rest wait.
    cluster.wait(
        lambda: sum(cluster.task(t)["state"] == "running" for t in ids) == cores,
        20,
        "the node to fill up",
    )
    states = [cluster.task(t)["state"] for t in ids]
    assert states.count("pending") == n - cores, states
    gate.touch()
    for t in ids:
        assert cluster.wait_state(t)["state"] == "completed"
    # The log agrees: folding every prefix never allocates more cores than the node has.
    cluster.stop_host()
    from support.logfile import recorded_events

    from projections.cluster import ClusterState

    state = ClusterState()
    for recorded in recorded_events(cluster.db_file):
        state.apply(recorded)
        node = state.nodes.get("n1")
        assert node is None or node.allocated_cores <= node.cores
    assert not state.anomalies, state.anomalies


def test_kill_pause_and_resume_a_running_task(cluster: Cluster) -> None:
    gate = cluster.root / "never"
    [task_id] = cluster.submit("sh", *gated(gate))
    running = cluster.wait_state(task_id, "running")
    pid = running["pid"]

    assert cluster.http.post(f"/api/tasks/{task_id}/pause").status_code == 202
    cluster.wait_state(task_id, "paused")
    # SIGSTOP takes hold once the process leaves the kernel: a loaded machine can show it
    # in uninterruptible sleep ("D") for a moment first.
    cluster.wait(lambda: _proc_state(pid) == "T", 10, "the process to be stopped")
    # Pausing twice is a conflict, not a silent success
    again = cluster.http.post(f"/api/tasks/{task_id}/pause")
    assert again.status_code == 409 and "paused" in again.json()["message"]

    assert cluster.http.post(f"/api/tasks/{task_id}/resume").status_code == 202
    cluster.wait_state(task_id, "running")
    assert _proc_state(pid) in ("S", "R")

    r = cluster.http.post(f"/api/tasks/{task_id}/kill", json={"requested_by": "alice"})
    assert r.status_code == 202
    done = cluster.wait_state(task_id)
    # Who asked is the authenticated caller: a requested_by in the body is ignored.
    assert done["state"] == "killed" and done["kill_requested_by"] == "admin"
    assert cluster.http.post(f"/api/tasks/{task_id}/kill").status_code == 409


def test_a_queued_task_is_killed_on_the_spot(cluster: Cluster) -> None:
    cores = cluster.node("n1")["cores"]  # type: ignore[index]
    gate = cluster.root / "gate-q"
    [big] = cluster.submit("sh", *gated(gate), cores=cores)
    cluster.wait_state(big, "running")
    [queued] = cluster.submit("true")
    assert cluster.task(queued)["state"] == "pending"
    assert cluster.http.post(f"/api/tasks/{queued}/kill").status_code == 202
    assert cluster.task(queued)["state"] == "killed"
    gate.touch()
    cluster.wait_state(big, "completed")


def test_stdout_follow_streams_until_the_task_ends(cluster: Cluster) -> None:
    gate = cluster.root / "gate-follow"
    script = f"echo first; while [ ! -e '{gate}' ]; do sleep 0.02; done; echo second"
    [task_id] = cluster.submit("sh", "-c", script)
    cluster.wait_state(task_id, "running")
    cluster.wait(lambda: cluster.output(task_id) == b"first\n", 10, "the first line")
    received = b""
    with cluster.http.stream("GET", f"/api/tasks/{task_id}/stdout", params={"follow": 1}) as r:
        for chunk in r.iter_bytes():
            received += chunk
            if received == b"first\n":
                gate.touch()
    assert received == b"first\nsecond\n"
    # offset and tail
    r = cluster.http.get(f"/api/tasks/{task_id}/stdout", params={"offset": 6})
    assert r.content == b"second\n" and r.headers["x-next-offset"] == "13"
    assert cluster.http.get(f"/api/tasks/{task_id}/stdout", params={"tail": 1}).content == (
        b"second\n"
    )


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_task_prefix_names_one_task_or_says_which_it_could_be(own_cluster: Cluster) -> None:
    cluster = own_cluster
    # Given three tasks submitted together: UUIDv7 ids, so they share a long prefix
    r = cluster.http.post("/api/batches", json={"tasks": [{"command": "true"}] * 3})
    ids = r.json()["task_ids"]
    assert len(ids) == 3, r.text
    for task_id in ids:
        cluster.wait_state(task_id, "completed")
    shared = ids[0][:8]
    assert all(i.startswith(shared) for i in ids)
    # When a prefix names several: 400 on the id, with the candidates, on every task route
    for path in (f"/api/tasks/{shared}", f"/api/tasks/{shared}/history"):
        r = cluster.http.get(path)
        assert r.status_code == 400, (path, r.text)
        body = r.json()
        assert body["field"] == "task_id" and "prefix of several tasks" in body["message"]
        assert ids[0] in body["message"]
    # A prefix that names one task, and the full id, resolve to it
    assert cluster.http.get(f"/api/tasks/{ids[1][:-2]}").json()["task_id"] == ids[1]
    assert cluster.http.get(f"/api/tasks/{ids[2]}").json()["task_id"] == ids[2]
    # Nothing it could be: 404, and too short a prefix is not a prefix at all
    assert cluster.http.get("/api/tasks/ffffffff").status_code == 404
    assert cluster.http.get(f"/api/tasks/{shared[:7]}").status_code == 404


def test_resource_values_that_cannot_work_are_refused_naming_the_field(cluster: Cluster) -> None:
    # Each was accepted before: memory 0 made the task die of SIGSEGV at once.
    for body, field, says in (
        ({"command": "true", "memory": 0}, "memory", "no memory at all"),
        ({"command": "true", "memory": "0M"}, "memory", "no memory at all"),
        ({"command": "true", "memory": "-5G"}, "memory", "is negative"),
        ({"command": "true", "memory": -5}, "memory", ">= 0"),
        ({"command": "true", "cores": 1.5}, "cores", "Expected `int`"),
        ({"command": "true", "cores": -1}, "cores", ">= 0"),
    ):
        r = cluster.http.post("/api/tasks", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["field"] == field and says in r.json()["message"], (body, r.text)
    batch = [{"command": "true"}, {"command": "true", "memory": "0"}]
    r = cluster.http.post("/api/batches", json={"tasks": batch})
    assert r.status_code == 400 and r.json()["field"] == "tasks[1].memory", r.text
    # No core accounting stays allowed
    [task_id] = cluster.submit("true", cores=0)
    assert cluster.wait_state(task_id)["state"] == "completed"


def test_tasks_are_numbered_in_order_and_a_number_names_its_task(own_cluster: Cluster) -> None:
    cluster = own_cluster
    # Given a batch of three tasks and one more: numbered 1, 2, 3, 4 in submission order
    r = cluster.http.post("/api/batches", json={"tasks": [{"command": "true"}] * 3})
    assert r.status_code == 201, r.text
    ids, numbers = r.json()["task_ids"], r.json()["numbers"]
    r = cluster.http.post("/api/tasks", json={"command": "true"})
    ids += r.json()["task_ids"]
    numbers += r.json()["numbers"]
    assert numbers == [1, 2, 3, 4]
    for task_id in ids:
        cluster.wait_state(task_id, "completed")
    # When a task is named by its number, on every task route
    assert cluster.task("2")["task_id"] == ids[1]
    assert cluster.task(ids[1])["number"] == 2
    assert cluster.http.get("/api/tasks/3/history").json()["task_id"] == ids[2]
    assert cluster.http.get("/api/tasks/3/history").json()["number"] == 3
    assert cluster.http.get("/api/tasks/4/why").json()["number"] == 4
    assert cluster.output("4") == b""
    listed = cluster.http.get("/api/tasks").json()["tasks"]
    assert [t["number"] for t in listed] == [4, 3, 2, 1]
    # A number nobody has, or one with a leading zero (an id prefix, too short): 404
    for missing in ("5", "02", "00000000001"):
        assert cluster.http.get(f"/api/tasks/{missing}").status_code == 404, missing
    # Then a restarted control plane keeps the numbers and goes on counting
    cluster.stop_host()
    cluster.start_host()
    assert cluster.task("1")["task_id"] == ids[0]
    assert cluster.http.post("/api/tasks", json={"command": "true"}).json()["numbers"] == [5]


def test_kill_answers_with_the_number(cluster: Cluster, tmp_path: Path) -> None:
    [task_id] = cluster.submit("sh", *gated(tmp_path / "never"))
    cluster.wait_state(task_id, "running")
    number = cluster.task(task_id)["number"]
    r = cluster.http.post(f"/api/tasks/{number}/kill")
    assert r.status_code == 202, r.text
    assert r.json() == {"task_id": task_id, "number": number, "state": "running"}
    assert cluster.wait_state(task_id)["state"] == "killed"


def test_an_end_places_the_next_queued_task_in_the_same_commit(cluster: Cluster) -> None:
    """A slot's turnover (issue 19): the commit that records a task's end also places the
    queued task its cores make room for, after the end (docs/decisions.md)."""
    cores = cluster.node("n1")["cores"]  # type: ignore[index]
    # Given five tasks in one batch that each need the whole node: one placed at its
    # submission, four queued
    task = {"command": "true", "container": "NULL", "cores": cores}
    r = cluster.http.post("/api/batches", json={"tasks": [task] * 5})
    assert r.status_code == 201, r.text
    ids = set(r.json()["task_ids"])
    for t in ids:
        assert cluster.wait_state(t)["state"] == "completed"
    # Then each of the four was placed in the commit of the end that made room for it,
    # after that end (one commit: one recorded_at)
    page = cluster.http.get("/api/events", params={"tail": 1000}).json()["events"]
    commits: dict[int, list[str]] = {}
    for e in sorted(page, key=lambda e: e["seq"]):
        if e["payload"].get("task_id") in ids:
            commits.setdefault(e["recorded_at_us"], []).append(e["kind"])
    by_an_end = [k for k in commits.values() if "task.placed" in k and "task.finished" in k]
    assert len(by_an_end) == 4, commits
    for kinds in by_an_end:
        assert kinds.index("task.finished") < kinds.index("task.placed"), kinds
