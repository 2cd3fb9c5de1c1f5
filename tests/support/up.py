"""``hakuriver up`` as a process under test: started, SIGKILLed and started again on one
data dir, as a user would after a crash.

``up`` starts its own runner as a child in a session of its own; the runner stops once
``up`` is gone (it watches a pipe only ``up`` holds), but not at the same instant, and a
test may kill it first: the harness remembers every process ``up``
started (its descendants, seen before each kill) and, at ``close()``, SIGKILLs those, any
process whose command line names this run's data dir (a runner ``up`` started after the
last look), the task processes the runners recorded, and the shim zygotes. All are this
test's own processes, found by their ids.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from support.cluster import REPO, free_port
from support.waiting import wait_until
from support.zygotes import kill_recorded_tasks, stop_zygotes_under


class UpCluster:
    """One data dir served by successive ``hakuriver up`` processes."""

    def __init__(self, root: Path, *, heartbeat_interval: float = 0.2, timeout: float = 1.5):
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = root / "config.toml"
        self.config.write_text(
            f"""
[network]
host_bind_ip = "127.0.0.1"
host_port = {self.port}
host_reachable_address = "127.0.0.1"
host_ssh_proxy_port = 0  # the SSH gateway on a free port (tests run side by side)
[runner]
name = "local"
docker = false
[docker]
default_container_name = "NULL"  # processes, without asking an engine (up would say so)
[timing]
heartbeat_interval = {heartbeat_interval}
heartbeat_timeout = {timeout}
kill_grace_period = 1.0
"""
        )
        self.http = httpx.Client(base_url=self.url, timeout=10)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.seen: set[int] = set()  # every pid up or its children ever had
        self._logs: list[IO[bytes]] = []

    @property
    def db_file(self) -> Path:
        return self.data / "hakuriver.duckdb"

    def token(self) -> str | None:
        try:
            return (self.data / "admin.token").read_text().strip() or None
        except OSError:
            return None

    def env(self) -> dict[str, str]:
        env = dict(os.environ, HOME=str(self.root), PYTHONPATH=str(REPO))
        env["HAKURIVER_URL"] = self.url
        env["HAKURIVER_CONFIG"] = str(self.config)
        token = self.token()
        if token:
            env["HAKURIVER_TOKEN"] = token
        return env

    def start(self, *, timeout: float = 40) -> None:
        """Start ``up`` and wait until its node is online."""
        self.starts += 1
        log = (self.root / f"up-{self.starts}.log").open("ab")
        self._logs.append(log)
        argv = ["up", "--data-dir", str(self.data), "--port", str(self.port)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.hakuriver.serve", *argv, "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in self.env().items() if k != "HAKURIVER_TOKEN"},
            cwd=REPO,
        )
        self.seen.add(self.process.pid)
        self.wait(self._node_online, timeout, "up to answer with its node online")

    def _node_online(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"up exited ({self.process.returncode}):\n{self.logs()}")
        self._remember_children()
        token = self.token()
        if token is None:
            return False
        self.http.headers["Authorization"] = f"Bearer {token}"
        try:
            nodes = self.http.get("/api/nodes").json()
        except (httpx.HTTPError, ValueError):
            return False
        return any(n.get("online") for n in nodes.get("nodes", []))

    def _remember_children(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self.seen.add(child.pid)

    def kill(self) -> None:
        """SIGKILL ``up`` itself, as a crash (or an OOM kill) would; its children live on."""
        assert self.process is not None
        self._remember_children()
        self.process.kill()
        self.process.wait(30)
        self.process = None

    def stop(self) -> None:
        """Ctrl-C: ``up`` stops its runner and the control plane."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        self.process.wait(60)
        self.process = None

    def runners(self) -> list[psutil.Process]:
        """The live runner processes serving this data dir (``up`` starts one each time)."""
        found = []
        for proc in self._ours():
            with contextlib.suppress(psutil.Error):
                argv = proc.cmdline()
                if "runner" in argv and str(self.data) in argv:
                    found.append(proc)
        return found

    def _ours(self) -> list[psutil.Process]:
        """Live processes this run started: remembered ones, and any naming its data dir."""
        found: dict[int, psutil.Process] = {}
        for pid in self.seen:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found[pid] = proc
        for proc in psutil.process_iter(["cmdline"]):
            argv = proc.info.get("cmdline") or []
            if any(str(self.data) in part for part in argv):
                found[proc.pid] = proc
        return list(found.values())

    def close(self) -> None:
        """SIGKILL every process of this run, its tasks and zygotes."""
        if self.process is not None:
            with contextlib.suppress(Exception):
                self.kill()
        for proc in self._ours():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        kill_recorded_tasks(self.data)
        stop_zygotes_under(self.root)
        self.http.close()
        for log in self._logs:
            log.close()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.root.glob("up-*.log"))
        )

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        try:
            wait_until(predicate, timeout=timeout, interval=0.05)
        except AssertionError:
            raise AssertionError(f"timed out waiting for {what}\n{self.logs()}") from None
