"""Image pulls (marker ``docker``): the default environment and ``create-container``
pull what the host's engine lacks, from a real registry on loopback (tests/support/
registry.py; nothing from the internet); a pull that cannot succeed is a clear refusal
naming the image, never a hang; and a machine without an engine gets ``NULL`` tasks with
a one-line notice.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.cluster import hakuriver, running_cluster
from support.docker_images import engine_or_skip, unique_environment
from support.registry import MARKER, LocalRegistry, registry_with_unique_image, remove_image
from support.terminal import Terminal
from support.up import UpCluster
from support.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRegistry, str]]:
    """A registry on loopback holding one image found nowhere else, and its reference."""
    with registry_with_unique_image(tmp_path_factory.mktemp("registry")) as (_, running, ref):
        yield running, ref


@pytest.fixture
def env_name() -> Iterator[str]:
    yield from unique_environment()


def _root(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_the_default_environment_is_pulled_packaged_and_used(
    tmp_path: Path, registry: tuple[LocalRegistry, str], env_name: str
) -> None:
    client = engine_or_skip()
    _, reference = registry
    remove_image(client, reference)
    tag = reference.rsplit(":", 1)[1]
    extra = f"""
[docker]
default_container_name = "{env_name}"
initial_base_image = "{reference}"
"""
    with running_cluster(tmp_path, agents=("d1",), extra=extra) as cluster:
        # No --container: the default environment, pulled and packaged at the host's start.
        [task_id] = cluster.submit("cat", MARKER, container=None)
        task = cluster.wait_state(task_id, timeout=120)
        assert task["state"] == "completed", (task, cluster.logs("host"))
        assert task["container"] == env_name
        assert cluster.output(task_id) == f"{tag}\n".encode()
        log = cluster.logs("host")
        assert f"pulling {reference}: layer " in log, log
        assert f"pulled {reference}: 1 layer(s)" in log, log
        assert f"packaged the default environment '{env_name}'" in log, log
        # One line per layer state change, not one per chunk received.
        assert log.count(f"pulling {reference}: layer ") <= 12, log
    remove_image(client, reference, env_name)


def test_create_container_pulls_with_a_progress_bar(
    tmp_path: Path, registry: tuple[LocalRegistry, str], env_name: str
) -> None:
    client = engine_or_skip()
    _, reference = registry
    remove_image(client, reference)
    with running_cluster(tmp_path, agents=()) as cluster:
        # On a terminal, as a person runs it: the rich progress bar names the pull.
        argv = [sys.executable, "-m", "cli.hakuriver", "docker", "create-container"]
        term = Terminal([*argv, reference, env_name], cluster.env(), cols=200)
        try:
            code = term.wait(timeout=120)
        finally:
            term.close()
        output = term.output.decode(errors="replace")
        assert code == 0, output
        assert f"pulling {reference} (1/1 layers)" in output, output
        assert f"created environment {env_name} from {reference}" in output, output
        container = client.containers.get(f"hakuriver-env-{env_name}")
        assert container.status == "running"
        assert client.images.get(reference)  # the host's engine has it now
        listed = json.loads(
            hakuriver(cluster, "docker", "list-containers", "--json").stdout.decode()
        )
        assert [c["image"] for c in listed["containers"] if c["name"] == env_name] == [reference]
    remove_image(client, reference, env_name)


@pytest.fixture
def silent_registry() -> Iterator[str]:
    """A "registry" that accepts connections and never answers; an image reference on it."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    silent.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except OSError:
                continue

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        yield f"127.0.0.1:{silent.getsockname()[1]}/hakuriver-test/base:1"
    finally:
        stop.set()
        holder.join(5)
        silent.close()
        for sock in held:
            sock.close()


def test_a_pull_that_cannot_succeed_is_a_clear_refusal_not_a_hang(
    tmp_path: Path, registry: tuple[LocalRegistry, str], env_name: str, silent_registry: str
) -> None:
    running, _ = registry
    unknown = f"{running.address}/hakuriver-test/nothing:here"
    extra = f"""
[docker]
default_container_name = "{env_name}"
initial_base_image = "{unknown}"
pull_timeout = 3
"""
    with running_cluster(tmp_path, agents=(), extra=extra) as cluster:
        # The CLI: exit 2, the image and the engine's reason named.
        done = hakuriver(cluster, "docker", "create-container", unknown, f"{env_name}u")
        assert done.returncode == 2, done
        error = done.stderr.decode()
        assert f"could not pull '{unknown}'" in error and "docker load" in error, error
        # The default environment from an unknown image: submissions without --container
        # are refused naming the image and the fix (once the pull failed).
        r = cluster.http.post("/api/tasks", json={"command": "true"}, timeout=60)
        assert r.status_code == 400 and r.json()["field"] == "container", r.text
        assert unknown in r.json()["message"] and "--container NULL" in r.json()["message"]
        # A registry that never answers: abandoned at pull_timeout, a 503 on image.
        body = {"image": silent_registry, "name": f"{env_name}s"}
        with cluster.http.stream(
            "POST", "/api/environments/containers?progress=1", json=body, timeout=60
        ) as answer:
            assert answer.status_code == 200
            last = json.loads(list(answer.iter_lines())[-1])
        assert last["step"] == "error" and last["status"] == 503, last
        assert last["field"] == "image" and "pull_timeout = 3s" in last["message"], last


def test_a_pull_under_way_is_abandoned_when_the_host_stops(
    tmp_path: Path, env_name: str, silent_registry: str
) -> None:
    engine_or_skip()
    extra = f"""
[docker]
default_container_name = "{env_name}"
initial_base_image = "{silent_registry}"
default_wait = 1
"""
    with running_cluster(tmp_path, agents=(), extra=extra) as cluster:
        pulling = f"pulling {silent_registry} onto the host's engine"
        cluster.wait(lambda: pulling in cluster.logs("host"), 30, "the pull to start")
        # A submission without --container meanwhile: a 503 saying how far the making got,
        # not a request held open for the whole pull
        r = cluster.http.post("/api/tasks", json={"command": "true"}, timeout=30)
        assert r.status_code == 503 and r.json()["field"] == "container", r.text
        message = r.json()["message"]
        assert "still being made" in message and "--container NULL" in message, message
        assert f"{silent_registry}" in message, message
        started = time.monotonic()
        cluster.stop_host()
        assert time.monotonic() - started < 15, cluster.logs("host")
        assert f"pulling {silent_registry}: abandoned (the host stops" in cluster.logs("host")


def test_without_an_engine_tasks_default_to_processes_with_a_notice(tmp_path: Path) -> None:
    up = UpCluster(tmp_path)
    # The built-in default, and an engine that is not there (for up and its runner).
    up.config.write_text(
        up.config.read_text()
        .replace("docker = false\n", "")
        .replace('default_container_name = "NULL"', "")
    )
    dead = tmp_path / "no-docker.sock"
    try:
        _start_up(up, {"DOCKER_HOST": f"unix://{dead}"})

        def notices() -> list[str]:  # the whole log: up.logs() is only its end
            text = "".join(p.read_text(errors="replace") for p in tmp_path.glob("up-*.log"))
            return [line for line in text.splitlines() if "no Docker engine for" in line]

        # Once in the host's log (written by its log thread), once in what up prints.
        up.wait(lambda: len(notices()) >= 2, 30, "the notice in the log and in up's banner")
        found = notices()
        assert len(found) == 2, up.logs()
        assert any(line.startswith("  note: ") for line in found), found
        assert "tasks without --container run as plain processes (NULL)" in found[0]
        r = up.http.post("/api/tasks", json={"command": "sh", "args": ["-c", "echo $$"]})
        assert r.status_code == 201, r.text
        [task_id] = r.json()["task_ids"]

        def ended() -> dict[str, Any] | None:
            task: dict[str, Any] = up.http.get(f"/api/tasks/{task_id}").json()
            return task if task["state"] in ("completed", "failed") else None

        wait_until(ended, timeout=60)
        task = ended()
        assert task is not None and task["state"] == "completed", task
        assert task["container"] is None
    finally:
        up.close()


def _start_up(up: UpCluster, env: dict[str, str]) -> None:
    """``up.start()`` with ``env`` added to its environment."""
    original = up.env

    def with_env() -> dict[str, str]:
        return {**original(), **env}

    up.env = with_env  # type: ignore[method-assign]
    try:
        up.start()
    finally:
        up.env = original  # type: ignore[method-assign]


def test_nothing_to_pull_streams_only_done_and_refusals_come_before_the_stream(
    tmp_path: Path, env_name: str
) -> None:
    """With an image already there nothing is pulled: the stream is only ``done``, and
    the JSON answer keeps its shape (a 201 with the container)."""
    from support.docker_images import BUSYBOX_IMAGE

    engine_or_skip()
    with running_cluster(_root(tmp_path / "c"), agents=()) as cluster:
        body = {"image": BUSYBOX_IMAGE, "name": env_name}
        with cluster.http.stream(
            "POST", "/api/environments/containers?progress=1", json=body, timeout=60
        ) as answer:
            assert answer.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in answer.iter_lines() if line.strip()]
        assert [line["step"] for line in lines] == ["done"], lines
        assert lines[-1]["container"]["name"] == env_name
        r = cluster.http.post("/api/environments/containers", json=body)
        assert r.status_code == 409 and r.json()["field"] == "name", r.text  # before a stream
        with httpx.Client(base_url=cluster.url, headers=cluster.http.headers) as http:
            r = http.post("/api/environments/containers?progress=1", json=body)
        assert r.status_code == 409 and r.json()["field"] == "name", r.text
