"""The CLI against a real cluster: every command as a user types it, as a subprocess.

One control plane and two agents (``n1``, ``n2``) serve the whole module
(``support.cluster``); each test tells its tasks apart by a fresh ``--owner``.
Long-running tasks wait for a gate file the test creates, so nothing depends on
timing. Tasks run as plain processes (``--container NULL``): no Docker, no GPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cluster import Cluster, running_cluster
from support.terminal import Terminal

SEED_ENTRY = "import sys; from cli.hakuriver import seeds; sys.exit(seeds.{}())"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster"), agents=("n1", "n2")) as started:
        yield started


@pytest.fixture
def owner() -> str:
    """An owner name no other test uses, to find this test's tasks."""
    return f"user-{uuid.uuid4().hex[:8]}"


def run(
    cluster: Cluster, program: str, *words: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``hakuriver`` (``program="hakuriver"``), a seed entry point or hakurun."""
    if program == "hakuriver":
        argv = [sys.executable, "-m", "cli.hakuriver"]
    elif program == "hakurun":
        argv = [sys.executable, "-m", "cli.hakurun"]
    else:  # hakuriver.client -> seeds.client_main
        entry = program.removeprefix("hakuriver.") + "_main"
        argv = [sys.executable, "-c", SEED_ENTRY.format(entry)]
    return subprocess.run(
        [*argv, *words], env=env or cluster.env(), capture_output=True, timeout=60, check=False
    )


def ok(done: subprocess.CompletedProcess[bytes]) -> str:
    """The stdout of a command that must have succeeded."""
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done.stdout.decode()


def json_of(done: subprocess.CompletedProcess[bytes]) -> Any:
    """The one JSON document a successful ``--json`` command printed."""
    return json.loads(ok(done))


def gated(gate: Path, before: str = "", after: str = "") -> list[str]:
    """``sh -c``: print ``before``, wait for the gate file, print ``after``."""
    wait = f"while [ ! -e '{gate}' ]; do sleep 0.02; done"
    return ["sh", "-c", "; ".join(part for part in (before, wait, after) if part)]


def submitted(done: subprocess.CompletedProcess[bytes]) -> list[str]:
    """The task numbers a submit printed, one a line (every command takes them as ids)."""
    numbers = ok(done).split()
    assert numbers and all(n.isdigit() and not n.startswith("0") for n in numbers), numbers
    return numbers


def number_of(cluster: Cluster, task_id: str) -> str:
    """The task's number, as the CLI shows it."""
    return str(cluster.task(task_id)["number"])


# --- submit, wait, output ------------------------------------------------------------


def test_submit_wait_prints_the_ids_then_how_each_ended(cluster: Cluster, owner: str) -> None:
    done = run(
        cluster, "hakuriver", "task", "submit", "--target", "n1", "--container", "NULL",
        "--owner", owner, "--wait", "--", "sh", "-c", "echo out; echo err >&2",
    )  # fmt: skip
    [task_id] = submitted(done)
    assert done.stderr.decode() == f"{task_id}  completed  exit=0  node=n1\n"
    assert cluster.task(task_id)["task_id"].startswith("0")  # the number names the task
    assert run(cluster, "hakuriver", "task", "stdout", task_id).stdout == b"out\n"
    assert run(cluster, "hakuriver", "task", "stderr", task_id).stdout == b"err\n"


def test_wait_exits_1_when_a_task_does_not_complete(cluster: Cluster, owner: str) -> None:
    done = run(
        cluster, "hakuriver", "task", "submit", "--target", "n1", "--target", "n2",
        "--container", "NULL", "--owner", owner, "--wait", "--poll-interval", "0.1",
        "--", "sh", "-c", "exit 3",
    )  # fmt: skip
    assert done.returncode == 1
    ids = done.stdout.decode().split()
    assert len(ids) == 2
    lines = done.stderr.decode().splitlines()
    assert sorted(lines[:2]) == sorted(
        f"{t}  failed  exit=3  node={n}  ended with exit status 3"
        for t, n in zip(ids, ("n1", "n2"), strict=True)
    )
    assert lines[2] == "2 of 2 tasks did not complete"
    one = run(
        cluster, "hakuriver", "task", "submit", "--target", "n1", "--container", "NULL",
        "--owner", owner, "--wait", "--poll-interval", "0.1", "--", "false",
    )  # fmt: skip
    assert one.stderr.decode().splitlines()[-1] == "1 of 1 task did not complete"


def test_submit_json_answers_with_the_batch_and_wait_adds_the_tasks(
    cluster: Cluster, owner: str
) -> None:
    answer = json_of(
        run(cluster, "hakuriver", "task", "submit", "--container", "NULL", "--owner", owner,
            "--json", "--wait", "--", "true")
    )  # fmt: skip
    assert set(answer) == {"batch_id", "task_ids", "numbers", "tasks"}
    assert [t["task_id"] for t in answer["tasks"]] == answer["task_ids"]
    assert [t["number"] for t in answer["tasks"]] == answer["numbers"]
    assert answer["tasks"][0]["state"] == "completed"
    assert answer["tasks"][0]["batch_id"] == answer["batch_id"]


def test_status_json_is_the_api_document(cluster: Cluster, owner: str) -> None:
    [task_id] = cluster.submit("echo", "hi", owner=owner, name="greeting")
    cluster.wait_state(task_id)
    document = json_of(run(cluster, "hakuriver", "task", "status", task_id, "--json"))
    assert document == cluster.task(task_id)
    table = ok(run(cluster, "hakuriver", "task", "status", task_id))
    assert task_id in table
    assert "completed" in table
    assert "greeting" in table


def test_an_unknown_task_is_exit_2_with_the_servers_reason(cluster: Cluster) -> None:
    done = run(cluster, "hakuriver", "task", "status", "ffffffff-0000")
    assert done.returncode == 2
    assert done.stderr.decode() == (
        "error: task_id: no task 'ffffffff-0000'"
        " (give its number, its id, or a unique prefix of 8+ characters)\n"
    )


def test_the_server_refuses_an_unknown_node_naming_the_target(cluster: Cluster) -> None:
    done = run(
        cluster, "hakuriver", "task", "submit", "--target", "n1", "--target", "nX", "--", "true"
    )
    assert done.returncode == 2
    assert done.stderr.decode().startswith("error: targets[1]: unknown node 'nX'")


def test_list_filters_by_owner_node_status_batch_and_limit(cluster: Cluster, owner: str) -> None:
    first = cluster.submit("true", owner=owner, targets=["n1"])
    second = cluster.submit("false", owner=owner, targets=["n2"])
    for task_id in first + second:
        cluster.wait_state(task_id)

    def listed(*filters: str) -> list[str]:
        answer = json_of(run(cluster, "hakuriver", "task", "list", "--json", *filters))
        return [task["task_id"] for task in answer["tasks"]]

    assert listed("--owner", owner) == second + first  # newest first
    assert listed("--owner", owner, "--node", "n2") == second
    assert listed("--owner", owner, "--status", "failed") == second
    assert listed("--owner", owner, "--status", "completed,failed") == second + first
    batch = cluster.task(first[0])["batch_id"]
    assert listed("--batch", batch) == first
    assert listed("--owner", owner, "--limit", "1") == second
    table = ok(run(cluster, "hakuriver", "task", "list", "--owner", owner)).splitlines()
    assert [line.split()[0] for line in table] == [
        "ID",
        number_of(cluster, second[0]),
        number_of(cluster, first[0]),
    ]


def test_submit_follow_streams_the_output_while_the_task_runs(
    cluster: Cluster, owner: str, tmp_path: Path
) -> None:
    # Given a task that prints, then waits for a gate, then prints again
    gate = tmp_path / "gate"
    script = f"echo first; echo warn >&2; while [ ! -e '{gate}' ]; do sleep 0.02; done; echo last"
    follow = subprocess.Popen(
        [sys.executable, "-m", "cli.hakuriver", "task", "submit", "--follow", "--target", "n1",
         "--container", "NULL", "--owner", owner, "--", "sh", "-c", script],
        env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert follow.stdout is not None
    # Then its first line arrives while it still runs (it cannot end before the gate)
    assert follow.stdout.readline() == b"first\n"
    gate.touch()
    rest, err = follow.communicate(timeout=30)
    assert (rest, follow.returncode) == (b"last\n", 0)
    # stdout is the task's output alone; its stderr, the submission and the end on stderr
    lines = err.decode().splitlines()
    assert lines[0].startswith("submitted 1 task: ")
    number = lines[0].rsplit(" ", 1)[1]
    assert "warn" in lines
    assert lines[-1] == f"{number}  completed  exit=0  node=n1"


def test_submit_follow_labels_each_line_with_its_task_when_there_are_several(
    cluster: Cluster, owner: str
) -> None:
    done = run(
        cluster, "hakuriver", "task", "submit", "--follow", "--target", "n1", "--target", "n2",
        "--container", "NULL", "--owner", owner, "--poll-interval", "0.1",
        "--", "sh", "-c", "echo one; echo two; echo oops >&2; exit 3",
    )  # fmt: skip
    assert done.returncode == 1  # as --wait: not all completed
    err = done.stderr.decode().splitlines()
    numbers = err[0].removeprefix("submitted 2 tasks: ").split()
    assert len(numbers) == 2
    out = done.stdout.decode().splitlines()
    for number in numbers:
        assert [line for line in out if line.startswith(f"{number}: ")] == [
            f"{number}: one",
            f"{number}: two",
        ]
        assert f"{number}: oops" in err
    assert len(out) == 4
    assert err[-1] == "2 of 2 tasks did not complete"


@pytest.mark.parametrize("columns", [80, 160])
def test_list_on_a_terminal_fits_its_width(cluster: Cluster, owner: str, columns: int) -> None:
    # Given a task with a long command and a name, listed on a terminal `columns` wide
    script = "for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; done; echo the-end"
    [task_id] = cluster.submit("sh", "-c", script, owner=owner, name="counting")
    cluster.wait_state(task_id)
    env = dict(cluster.env(), COLUMNS=str(columns))
    terminal = Terminal(
        [sys.executable, "-m", "cli.hakuriver", "task", "list", "--owner", owner],
        env,
        cols=columns,
    )
    try:
        assert terminal.wait() == 0
    finally:
        terminal.close()
    text = re.sub(rb"\x1b\[[0-9;]*m", b"", terminal.output).decode()
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    # Then no line is cut by the terminal, the exit code and name are there, and the
    # whole command, quoted as a shell reads it, wrapped within its column
    assert max(len(line.rstrip()) for line in lines) <= columns, text
    assert "EXIT" in lines[0] and lines[0].rstrip().endswith("NAME / COMMAND")
    assert lines[1].split()[:3] == [str(cluster.task(task_id)["number"]), "completed", "n1"]
    flat = " ".join(text.split())
    assert f"[counting] sh -c '{script}'" in flat


# --- control: kill, pause, resume, follow ----------------------------------------------


def test_kill_stops_a_running_task_and_a_second_kill_is_refused(
    cluster: Cluster, owner: str, tmp_path: Path
) -> None:
    [task_id] = cluster.submit(*gated(tmp_path / "never"), owner=owner)
    cluster.wait_state(task_id, "running")
    done = run(cluster, "hakuriver", "task", "kill", task_id)
    assert ok(done) == f"{number_of(cluster, task_id)}: kill requested (it was running)\n"
    assert cluster.wait_state(task_id)["state"] == "killed"
    again = run(cluster, "hakuriver", "task", "kill", task_id)
    assert again.returncode == 2
    assert "already killed" in again.stderr.decode()


def test_pause_and_resume_through_both_spellings(
    cluster: Cluster, owner: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    [task_id] = cluster.submit(*gated(gate, after="echo finished"), owner=owner)
    cluster.wait_state(task_id, "running")
    ok(run(cluster, "hakuriver", "task", "pause", task_id))
    cluster.wait_state(task_id, "paused")
    ok(run(cluster, "hakuriver.client", "command", task_id, "resume"))
    cluster.wait_state(task_id, "running")
    ok(run(cluster, "hakuriver.task", "command", task_id, "pause"))
    cluster.wait_state(task_id, "paused")
    ok(run(cluster, "hakuriver.client", "resume", task_id))
    cluster.wait_state(task_id, "running")
    gate.touch()
    assert cluster.wait_state(task_id)["state"] == "completed"


def test_stdout_follow_streams_until_the_task_ends(
    cluster: Cluster, owner: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    [task_id] = cluster.submit(*gated(gate, "echo first", "echo second"), owner=owner)
    cluster.wait_state(task_id, "running")
    follow = subprocess.Popen(
        [sys.executable, "-m", "cli.hakuriver", "task", "stdout", task_id, "--follow"],
        env=cluster.env(),
        stdout=subprocess.PIPE,
    )
    assert follow.stdout is not None
    assert follow.stdout.readline() == b"first\n"  # arrives while the task still waits
    gate.touch()
    rest, _ = follow.communicate(timeout=30)
    assert (rest, follow.returncode) == (b"second\n", 0)
    assert run(cluster, "hakuriver", "task", "stdout", task_id, "--tail", "1").stdout == b"second\n"


# --- nodes ----------------------------------------------------------------------------


def test_node_list_and_health(cluster: Cluster) -> None:
    nodes = json_of(run(cluster, "hakuriver", "node", "list", "--json"))["nodes"]
    assert sorted((n["name"], n["online"]) for n in nodes) == [("n1", True), ("n2", True)]
    table = ok(run(cluster, "hakuriver", "node", "list")).splitlines()
    assert table[0].split()[:2] == ["NODE", "STATUS"]
    assert sorted(line.split()[:2] for line in table[1:]) == [["n1", "online"], ["n2", "online"]]
    detail = json_of(run(cluster, "hakuriver", "node", "health", "n2", "--json"))
    assert detail["name"] == "n2"
    report = json_of(run(cluster, "hakuriver", "node", "health", "--json"))
    assert report["health"]["nodes_online"] == 2
    assert "node n1" in ok(run(cluster, "hakuriver", "node", "health"))
    missing = run(cluster, "hakuriver", "node", "health", "n9")
    assert missing.returncode == 2


def test_client_flag_forms_do_what_the_hakuriver_commands_do(
    cluster: Cluster, owner: str, tmp_path: Path
) -> None:
    listed = json_of(run(cluster, "hakuriver.client", "--list-nodes", "--json"))
    assert sorted(n["name"] for n in listed["nodes"]) == ["n1", "n2"]
    assert json_of(run(cluster, "hakuriver.client", "--health", "n1", "--json"))["name"] == "n1"
    assert "cluster" in ok(run(cluster, "hakuriver.client", "--health"))
    # Submission is the default form, as in seed 001's quick start.
    [task_id] = submitted(
        run(cluster, "hakuriver.client", "--target", "n1", "--container", "NULL", "--owner", owner,
            "--wait", "--", "echo", "Hello HakuRiver!")
    )  # fmt: skip
    status = json_of(run(cluster, "hakuriver.client", "--status", task_id, "--json"))
    assert status == json_of(run(cluster, "hakuriver", "task", "status", task_id, "--json"))
    assert cluster.output(task_id) == b"Hello HakuRiver!\n"
    [long] = cluster.submit(*gated(tmp_path / "never"), owner=owner)
    cluster.wait_state(long, "running")
    ok(run(cluster, "hakuriver.client", "--kill", long))
    assert cluster.wait_state(long)["state"] == "killed"


# --- seed 000's examples (those that need neither Docker nor a GPU) ---------------------


def test_seed_submission_examples(cluster: Cluster, owner: str) -> None:
    def submit(*words: str) -> list[dict[str, Any]]:
        ids = submitted(
            run(cluster, "hakuriver.task", "submit", "--owner", owner, "--container", "NULL",
                "--wait", *words)
        )  # fmt: skip
        return [cluster.task(task_id) for task_id in ids]

    [hello] = submit("--target", "n1", "--", "echo", "Hello, HakuRiver Command Task!")
    assert cluster.output(hello["task_id"]) == b"Hello, HakuRiver Command Task!\n"
    three = submit("--target", "n1", "--target", "n2", "--target", "n1", "--", "hostname")
    assert [t["node"] for t in three] == ["n1", "n2", "n1"]
    assert len({t["batch_id"] for t in three}) == 1
    [numa] = submit("--target", "n1:0", "--", "echo", "numa")
    assert (numa["state"], numa["numa_id"]) == ("completed", 0)
    cores = str(min(2, os.cpu_count() or 1))
    [sized] = submit("--target", "n1", "--cores", cores, "--memory", "512M", "--", "true")
    assert (sized["cores"], sized["memory_bytes"]) == (int(cores), 512_000_000)
    [env] = submit(
        "--target", "n1", "--env", "MODEL_TYPE=large", "--env", "DEBUG=1",
        "--", "sh", "-c", 'echo "$MODEL_TYPE $DEBUG"',
    )  # fmt: skip
    assert cluster.output(env["task_id"]) == b"large 1\n"


def test_seed_hakurun_method_1_pipes_one_submit_per_combination(
    cluster: Cluster, owner: str, tmp_path: Path
) -> None:
    # hakurun echo "hakuriver.task submit ... -- python script.py" span:{1..3} span:[A,B] | bash
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, command in (
        ("hakurun", f'exec "{sys.executable}" -m cli.hakurun "$@"'),
        ("hakuriver.task", f'exec "{sys.executable}" -c "{SEED_ENTRY.format("task_main")}" "$@"'),
    ):
        (bin_dir / name).write_text(f"#!/bin/sh\n{command}\n")
        (bin_dir / name).chmod(0o755)
    env = dict(cluster.env(), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    line = f"hakuriver.task submit --target n1 --container NULL --owner {owner} -- echo"
    pipeline = f"hakurun echo '{line}' 'span:{{1..3}}' 'span:[A,B]' | sh"
    done = subprocess.run(pipeline, shell=True, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ids = done.stdout.decode().split()
    assert len(ids) == 6
    outputs = sorted(
        cluster.output(task_id).decode().strip()
        for task_id in ids
        if cluster.wait_state(task_id)["state"] == "completed"
    )
    assert outputs == ["1 A", "1 B", "2 A", "2 B", "3 A", "3 B"]
    assert len({cluster.task(task_id)["batch_id"] for task_id in ids}) == 6


# --- hakurun --submit ------------------------------------------------------------------


def test_hakurun_submit_makes_one_batch_of_one_task_per_combination(
    cluster: Cluster, owner: str
) -> None:
    done = run(
        cluster, "hakurun", "--submit", "--container", "NULL", "--owner", owner, "--wait",
        "--", "echo", "lr", "span:[0.1,0.01]", "span:{1..2}",
    )  # fmt: skip
    header, *ids = ok(done).splitlines()
    assert header.startswith("batch ")
    batch_id = header.removeprefix("batch ")
    assert len(ids) == 4
    batch = cluster.http.get(f"/api/batches/{batch_id}").json()
    assert [str(t["number"]) for t in batch["tasks"]] == ids
    assert [cluster.output(t).decode() for t in ids] == [
        "lr 0.1 1\n",
        "lr 0.1 2\n",
        "lr 0.01 1\n",
        "lr 0.01 2\n",
    ]
    refused = run(cluster, "hakurun", "--submit", "--target", "nX", "--", "echo", "span:{1..2}")
    assert refused.returncode == 2
    assert refused.stderr.decode().startswith("error: tasks[0].targets[0]: unknown node 'nX'")
