"""``hakuriver up``: a whole single-machine cluster from one command, stopped by Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
from support.cluster import REPO, free_port
from support.waiting import wait_until


def _processes_using(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if any(str(data_dir) in part for part in cmdline):
            found.append(proc)
    return found


def test_up_runs_a_task_and_ctrl_c_stops_host_and_agent(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=str(REPO))
    env.pop("HAKURIVER_CONFIG", None)
    env.pop("HAKURIVER_URL", None)
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
                    return http.get("/api/health").json()["nodes_online"] == 1
                except httpx.HTTPError:
                    return False

            wait_until(one_node_online, timeout=30)
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
    wait_until(lambda: not _processes_using(data), timeout=10)
