"""``hakuriver up``: a whole single-machine cluster from one command, stopped by Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from support.cluster import REPO, free_port
from support.waiting import wait_until

from cli.hakuriver.client import HakuClient
from events.pinning import fingerprint_of_pem


def _processes_using(data_dir: Path) -> list[psutil.Process]:
    """The host and runner processes on ``data_dir`` (not the shim zygote, which outlives
    them by design and is named by its socket in the runner's state directory)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "--zygote" in cmdline:
            continue
        if any(str(data_dir) in part for part in cmdline):
            found.append(proc)
    return found


HI = ("echo", "hi")


def test_up_runs_a_task_and_ctrl_c_stops_host_and_agent(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=str(REPO))
    env.pop("HAKURIVER_CONFIG", None)
    env.pop("HAKURIVER_URL", None)
    # The README's promise on a machine without Docker (no registry is reachable here,
    # so the default environment could not be pulled): tasks are plain processes.
    env["DOCKER_HOST"] = f"unix://{tmp_path}/no-docker.sock"
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.hakuriver.serve",
            "up",
            "--data-dir",
            str(data),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=5) as http:

            def one_node_online() -> bool:
                try:
                    token = (data / "admin.token").read_text().strip()
                    http.headers["Authorization"] = f"Bearer {token}"
                    return http.get("/api/summary").json()["nodes_online"] == 1
                except (httpx.HTTPError, OSError, KeyError):
                    return False

            wait_until(one_node_online, timeout=30)
            # The README's path: no token given anywhere, and no manual step.
            cli = subprocess.run(
                [sys.executable, "-m", "cli.hakuriver", "task", "submit", "--wait", "--", *HI],
                env=dict(env, HAKURIVER_URL=url),
                capture_output=True,
                timeout=60,
                cwd=REPO,
            )
            assert cli.returncode == 0, cli.stderr.decode()
            assert (tmp_path / ".hakuriver" / "token").stat().st_mode & 0o777 == 0o600
            r = http.post("/api/tasks", json={"command": "echo", "args": ["hello"]})
            assert r.status_code == 201, r.text
            [task_id] = r.json()["task_ids"]
            wait_until(lambda: http.get(f"/api/tasks/{task_id}").json()["state"] == "completed")
            assert http.get(f"/api/tasks/{task_id}/stdout").content == b"hello\n"
        assert (data / "hakuriver.duckdb").exists()
        assert _processes_using(data), "the agent child should be running"
    finally:
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=30)
    assert up.returncode == 0, output.decode()
    assert url.encode() in output
    assert b"  note: no Docker engine for the default environment 'hakuriver-base'" in output
    wait_until(lambda: not _processes_using(data), timeout=10)


def _serving(argv: list[str], tmp_path: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=str(REPO))
    env.pop("HAKURIVER_CONFIG", None)
    env.pop("HAKURIVER_URL", None)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.hakuriver", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )


def _listening(pid: int, port: int) -> list[str]:
    return [
        c.laddr.ip
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(30)


def test_the_config_template_binds_loopback_and_banners_say_where_they_listen(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.toml"
    made = subprocess.run(
        [sys.executable, "-m", "cli.hakuriver", "init", "config", "--path", str(config)],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    assert made.returncode == 0
    # The template's own address, with only the port and the data dir changed.
    port = free_port()
    text = config.read_text().replace("host_port = 8000", f"host_port = {port}")
    text = text.replace('data_dir = "~/.hakuriver"', f'data_dir = "{tmp_path / "host"}"')
    config.write_text(text)
    host_log = tmp_path / "host.log"
    host = _serving(["host", "--config", str(config)], tmp_path, host_log)
    try:
        wait_until(lambda: "event log:" in host_log.read_text(), timeout=30)
        assert _listening(host.pid, port) == ["127.0.0.1"]
        banner = host_log.read_text()
        assert f"at http://127.0.0.1:{port} (listening on 127.0.0.1 only)" in banner, banner
    finally:
        _stop(host)

    # Every interface: `up` says so, serves HTTPS (tls "auto"), and still gives a URL that
    # works from here, pinned to the CA it printed; its own agent pins it too.
    port = free_port()
    everywhere = tmp_path / "everywhere.toml"
    everywhere.write_text(f'[network]\nhost_bind_ip = "0.0.0.0"\nhost_port = {port}\n')
    up_log = tmp_path / "up.log"
    up = _serving(
        ["up", "--config", str(everywhere), "--data-dir", str(tmp_path / "up")], tmp_path, up_log
    )
    try:
        wait_until(lambda: "try:" in up_log.read_text(), timeout=30)
        assert _listening(up.pid, port) == ["0.0.0.0"]
        banner = up_log.read_text()
        assert f"HakuRiver is up: https://127.0.0.1:{port}" in banner, banner
        assert f"listening on all interfaces (0.0.0.0:{port})" in banner, banner
        pin = fingerprint_of_pem((tmp_path / "up" / "tls" / "ca.pem").read_text())
        assert f"HAKURIVER_CA_FINGERPRINT={pin} hakuriver task submit" in banner, banner
        token = (tmp_path / "up" / "admin.token").read_text().strip()
        url = f"https://127.0.0.1:{port}"
        with HakuClient(url, token=token, ca_fingerprint=pin, ca_cache=None) as client:
            wait_until(lambda: any(n["online"] for n in client.nodes()), timeout=30)
    finally:
        _stop(up)
        wait_until(lambda: not _processes_using(tmp_path / "up"), timeout=10)


class Up:
    """``python -m cli.hakuriver.serve up`` on a data dir, its output in a file."""

    def __init__(self, tmp_path: Path, data: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"up-{self.port}.log"
        env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=str(REPO))
        env.pop("HAKURIVER_CONFIG", None)
        env.pop("HAKURIVER_URL", None)
        argv = ["up", "--data-dir", str(data), "--port", str(self.port), *extra]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.hakuriver.serve", *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        self.http = httpx.Client(base_url=self.url, timeout=10)

        def online() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                token = (data / "admin.token").read_text().strip()
                self.http.headers["Authorization"] = f"Bearer {token}"
                return bool(self.http.get("/api/summary").json()["nodes_online"] == 1)
            except (httpx.HTTPError, OSError, KeyError):
                return False

        wait_until(online, timeout=30)

    def submit(self, *command: str, **fields: object) -> str:
        body = {"command": command[0], "args": list(command[1:]), "container": "NULL", **fields}
        r = self.http.post("/api/tasks", json=body)
        assert r.status_code == 201, r.text
        [task_id] = r.json()["task_ids"]
        return str(task_id)

    def state(self, task_id: str) -> str:
        return str(self.http.get(f"/api/tasks/{task_id}").json()["state"])

    def ctrl_c(self) -> str:
        """Stop it as a terminal's Ctrl-C does; what it printed."""
        self.http.close()
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(60) == 0, self.log.read_text()
        return self.log.read_text()


def _task_process(marker: str) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info.get("cmdline") == ["sleep", marker]:
            return proc
    return None


@pytest.fixture
def marker() -> Iterator[str]:
    """An unusual sleep duration naming the test's task process; killed if a test fails."""
    value = f"{600 + os.getpid() % 1000}.{uuid.uuid4().int % 1000}"
    yield value
    leftover = _task_process(value)
    if leftover is not None:
        leftover.kill()


def test_ctrl_c_says_what_it_leaves_running_and_the_next_up_adopts_it(
    tmp_path: Path, marker: str
) -> None:
    data = tmp_path / "data"
    first = Up(tmp_path, data)
    try:
        running = first.submit("sleep", marker)
        wait_until(lambda: first.state(running) == "running")
        cores = first.http.get("/api/nodes").json()["nodes"][0]["cores"]
        queued = first.submit("true", cores=cores)  # waits for the sleep's core
        assert first.state(queued) == "pending"
    finally:
        said = first.ctrl_c()
    assert "1 task left running on " in said, said
    assert "the next `hakuriver up` with data in" in said and "re-adopts it" in said, said
    assert "1 queued task will start after the next `hakuriver up`" in said, said
    task = _task_process(marker)
    assert task is not None, "the task must outlive `up`"

    second = Up(tmp_path, data)
    try:
        assert second.state(running) == "running"
        assert task.is_running()
        r = second.http.post(f"/api/tasks/{running}/kill")
        assert r.status_code == 202, r.text
        wait_until(lambda: second.state(running) == "killed", timeout=30)
        wait_until(lambda: second.state(queued) == "completed", timeout=30)
    finally:
        said = second.ctrl_c()
    assert "no tasks were running" in said, said


def test_stop_tasks_on_exit_kills_them_through_the_log(tmp_path: Path, marker: str) -> None:
    import duckdb

    data = tmp_path / "data"
    up = Up(tmp_path, data, "--stop-tasks-on-exit")
    try:
        running = up.submit("sleep", marker)
        wait_until(lambda: up.state(running) == "running")
        cores = up.http.get("/api/nodes").json()["nodes"][0]["cores"]
        queued = up.submit("true", cores=cores)
        task = _task_process(marker)
        assert task is not None
    finally:
        said = up.ctrl_c()
    assert "stopped 2 tasks (--stop-tasks-on-exit)" in said, said
    wait_until(lambda: not task.is_running(), timeout=10)
    con = duckdb.connect(str(data / "hakuriver.duckdb"), read_only=True)
    try:
        rows = con.execute(
            "SELECT stream, kind, payload FROM events WHERE kind IN"
            " ('task.kill_requested', 'task.finished') ORDER BY seq"
        ).fetchall()
    finally:
        con.close()
    by_task: dict[str, list[str]] = {}
    for stream, kind, payload in rows:
        by_task.setdefault(stream.removeprefix("task:"), []).append(kind)
        if kind == "task.finished":
            assert '"killed"' in payload, payload
    assert by_task == {
        running: ["task.kill_requested", "task.finished"],
        queued: ["task.kill_requested", "task.finished"],
    }
