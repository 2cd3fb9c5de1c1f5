"""A real cluster for tests: a control plane and node agents as separate processes.

``Cluster`` writes a config into a temporary directory, starts the control plane
(``python -m cli.hakuriver.serve host``) on a free loopback port, and starts agents
(``... runner --name N``) on demand; all share the directory as "shared storage".
Nothing is mocked: tests talk HTTP to the real server, and kill processes for real.
Each process's output goes to ``<dir>/<name>.log`` (printed when a wait fails).

``tls=True`` runs the host with ``[network] tls = true``: it serves HTTPS with the CA it
makes under ``<dir>/tls``; ``http`` then trusts that CA, and agents and CLI calls get its
fingerprint in ``$HAKURIVER_CA_FINGERPRINT``.

For fault tests (tests/chaos): ``address`` makes the host listen on another local address
(a veth's, for a runner in a network namespace), ``data_dir`` puts the host's data (the log,
the shared storage, the runners' state dirs) somewhere other than ``root`` (a small tmpfs),
and ``start_agent(..., wrap=[...])`` runs an agent under a prefix (``ip netns exec NS``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from projections.tasks import ENDED_STATES
from support.waiting import wait_until
from support.zygotes import kill_recorded_tasks, stop_zygotes_under

FINAL = ENDED_STATES
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Cluster:
    """A control plane plus agents, each a real subprocess."""

    def __init__(
        self,
        root: Path,
        *,
        heartbeat_interval: float = 0.2,
        heartbeat_timeout: float = 1.5,
        kill_grace: float = 1.0,
        lost_after: float = 3600.0,
        policy: str = "first-fit",
        extra: str = "",
        tls: bool = False,
        address: str = "127.0.0.1",
        data_dir: Path | None = None,
    ) -> None:
        self.root = root
        self.data_dir = data_dir or root
        self.port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://{address}:{self.port}"
        self.config = root / "config.toml"
        extra = _processes_by_default(extra)
        self.config.write_text(
            f"""
[network]
host_bind_ip = "{address}"
host_port = {self.port}
host_reachable_address = "{address}"
host_ssh_proxy_port = 0  # the SSH gateway on a free port (tests run side by side)
{"tls = true" if tls else "" if address == "127.0.0.1" else "tls = false"}
[paths]
data_dir = "{self.data_dir}"
shared_dir = "shared"
local_temp_dir = "local_temp"
[timing]
heartbeat_interval = {heartbeat_interval}
heartbeat_timeout = {heartbeat_timeout}
kill_grace_period = {kill_grace}
lost_after = {lost_after}
[scheduler]
policy = "{policy}"
{extra}
"""
        )
        self.host: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.http = httpx.Client(base_url=self.url, timeout=10)
        self._logs: list[Any] = []
        # The first admin's token (the host writes it at its first start).
        self.admin_token: str | None = None

    @property
    def shared(self) -> Path:
        return self.data_dir / "shared"

    @property
    def db_file(self) -> Path:
        return self.data_dir / "hakuriver.duckdb"

    @property
    def ca_file(self) -> Path:
        """The CA a TLS host makes on first start."""
        return self.data_dir / "tls" / "ca.pem"

    @property
    def fingerprint(self) -> str | None:
        """The TLS host's CA fingerprint (None before it made one, or without TLS)."""
        from events.pinning import fingerprint_of_pem

        if not self.tls or not self.ca_file.exists():
            return None
        return fingerprint_of_pem(self.ca_file.read_text())

    @property
    def fingerprint_hex(self) -> str:
        """The fingerprint's hex digits: a cached CA's file name."""
        return (self.fingerprint or "").removeprefix("sha256:")

    def env(self) -> dict[str, str]:
        """The environment for processes and CLI calls talking to this cluster."""
        env = dict(os.environ)
        env["HAKURIVER_URL"] = self.url
        env["HAKURIVER_CONFIG"] = str(self.config)
        env["PYTHONPATH"] = str(REPO)
        if self.admin_token:
            env["HAKURIVER_TOKEN"] = self.admin_token
        fingerprint = self.fingerprint
        if fingerprint is not None:
            env["HAKURIVER_CA_FINGERPRINT"] = fingerprint
        return env

    def _spawn(
        self,
        name: str,
        *args: str,
        config: Path | None = None,
        env: dict[str, str] | None = None,
        wrap: tuple[str, ...] = (),
    ) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        self._logs.append(log)
        config = config or self.config
        command = [
            *wrap,
            sys.executable,
            "-m",
            "cli.hakuriver.serve",
            *args,
            "--config",
            str(config),
        ]
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env(), **(env or {})},
            cwd=REPO,
        )

    # -- processes -------------------------------------------------------------------------

    def start_host(self) -> None:
        """Start the control plane and wait until it answers."""
        self.host = self._spawn("host", "host")
        if self.tls:
            self.wait(self._ca_made, 30, "the control plane to make its CA")
            self.http.close()
            # Hostname checked too: the host's certificate names 127.0.0.1.
            trust = ssl.create_default_context(cafile=str(self.ca_file))
            self.http = httpx.Client(base_url=self.url, timeout=10, verify=trust)
        self.wait(lambda: self._healthy(), 30, "the control plane to answer")
        self.admin_token = (self.data_dir / "admin.token").read_text().strip()
        self.http.headers["Authorization"] = f"Bearer {self.admin_token}"

    def _ca_made(self) -> bool:
        assert self.host is not None
        if self.host.poll() is not None:
            raise AssertionError(f"host exited ({self.host.returncode}):\n{self.logs('host')}")
        return self.ca_file.exists()

    def _healthy(self) -> bool:
        assert self.host is not None
        if self.host.poll() is not None:
            raise AssertionError(f"host exited ({self.host.returncode}):\n{self.logs('host')}")
        try:
            return self.http.get("/api/health").status_code == 200
        except httpx.HTTPError:
            return False

    def stop_host(self, sig: int = signal.SIGTERM) -> None:
        """Stop the control plane (SIGKILL for a crash)."""
        assert self.host is not None
        self.host.send_signal(sig)
        self.host.wait(30)
        self.host = None

    def start_agent(
        self,
        name: str,
        *,
        wait: bool = True,
        extra: str = "",
        env: dict[str, str] | None = None,
        wrap: tuple[str, ...] = (),
        runner_address: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a node agent called ``name``; by default wait until it is online.

        ``extra``: TOML appended to the cluster's configuration for this agent only;
        ``runner_address``: the address it reports (``[network] runner_address``; a
        127.0.0.x address makes it look like a machine of its own);
        ``env``: variables to set or override for it (``HAKURIVER_CA_FINGERPRINT``...);
        ``wrap``: a command prefix it runs under (``ip netns exec NS``).
        """
        config = None
        if extra or runner_address:
            config = self.root / f"config-{name}.toml"
            text = self.config.read_text()
            if runner_address:
                text = text.replace(
                    "[network]\n", f'[network]\nrunner_address = "{runner_address}"\n', 1
                )
            config.write_text(text + "\n" + extra)
        join: list[str] = []
        if not (self.data_dir / f"runner-{name}" / "agent.token").exists():
            # A runner whose state dir is gone (a rebuilt machine): as an admin would,
            # revoke the name's old credential before it joins again.
            tokens = self.http.get("/api/tokens", params={"all": 1}).json()["tokens"]
            if any(t["node"] == name and not t["revoked"] for t in tokens):
                revoked = self.http.post(f"/api/nodes/{name}/revoke")
                assert revoked.status_code == 200, revoked.text
            join = ["--join", self.token(kind="join", uses=1)]
        agent = self._spawn(
            f"agent-{name}", "runner", "--name", name, *join, config=config, env=env, wrap=wrap
        )
        self.agents[name] = agent
        if wait:
            self.wait_node(name, online=True)
        return agent

    # -- identity --------------------------------------------------------------------------

    def token(self, user: str | None = None, **fields: Any) -> str:
        """A new token (for ``user``, default the admin), made with the admin's token."""
        body: dict[str, Any] = dict(fields)
        if user is not None:
            body["user"] = user
        answer = self.http.post("/api/tokens", json=body)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["token"])

    def add_user(self, name: str, role: str = "user") -> str:
        """Make user ``name``; their first token."""
        answer = self.http.post("/api/users", json={"name": name, "role": role})
        assert answer.status_code == 201, answer.text
        return self.token(name)

    def enroll(self, node: str) -> str:
        """Node ``node``'s agent credential, through a fresh single-use join token."""
        with self.client_as(self.token(kind="join", uses=1)) as joiner:
            answer = joiner.post("/api/join", json={"node": node})
        assert answer.status_code == 201, answer.text
        return str(answer.json()["token"])

    def client_as(self, token: str | None) -> httpx.Client:
        """An HTTP client presenting ``token`` (None: no token at all)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, timeout=10, headers=headers)

    def stop_agent(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop an agent (SIGKILL for a crash); its tasks keep running."""
        agent = self.agents.pop(name)
        agent.send_signal(sig)
        agent.wait(30)

    def close(self) -> None:
        """Stop everything, and every task process still running under the root."""
        for name in list(self.agents):
            with contextlib.suppress(Exception):
                self.stop_agent(name, signal.SIGKILL)
        if self.host is not None:
            with contextlib.suppress(Exception):
                self.stop_host(signal.SIGKILL)
        self.kill_task_processes()
        for directory in {self.root, self.data_dir}:
            stop_zygotes_under(directory)
        self.http.close()
        for log in self._logs:
            log.close()

    def kill_task_processes(self) -> None:
        """SIGKILL every task process and shim the agents started (as a reboot would)."""
        kill_recorded_tasks(self.data_dir)

    def logs(self, name: str) -> str:
        """The tail of one process's log."""
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    # -- API -------------------------------------------------------------------------------

    def submit(self, command: str, *args: str, **fields: Any) -> list[str]:
        """Submit a task (201 expected); its task ids."""
        body = {"command": command, "args": list(args), "container": "NULL", **fields}
        r = self.http.post("/api/tasks", json=body)
        assert r.status_code == 201, r.text
        ids: list[str] = r.json()["task_ids"]
        return ids

    def task(self, task_id: str) -> dict[str, Any]:
        r = self.http.get(f"/api/tasks/{task_id}")
        assert r.status_code == 200, r.text
        task: dict[str, Any] = r.json()
        return task

    def node(self, name: str) -> dict[str, Any] | None:
        r = self.http.get(f"/api/nodes/{name}")
        return r.json() if r.status_code == 200 else None

    def health(self) -> dict[str, Any]:
        health: dict[str, Any] = self.http.get("/api/summary").json()
        return health

    def events(self, kind: str | None = None) -> list[tuple[Any, ...]]:
        """(seq, kind, stream, source, id) of every event in the log file (host stopped)."""
        import duckdb

        con = duckdb.connect(str(self.db_file), read_only=True)
        try:
            sql = "SELECT seq, kind, stream, source, id::VARCHAR FROM events"
            params: list[Any] = []
            if kind:
                sql += " WHERE kind = ?"
                params.append(kind)
            rows = con.execute(sql + " ORDER BY seq", params).fetchall()
        finally:
            con.close()
        return rows

    def settle(self, timeout: float = 20) -> None:
        """Leave the cluster as the next test that shares it expects: the host and every
        agent up and online, and no task unfinished (what a test left running is killed)."""
        if self.host is None or self.host.poll() is not None:
            raise AssertionError(f"a shared cluster's host is gone:\n{self.logs('host')}")
        for name in self.agents:
            self.wait_node(name, online=True, timeout=timeout)
        active = ["pending", "assigning", "running", "paused"]
        r = self.http.get("/api/tasks", params={"status": active, "all_users": 1, "limit": 1000})
        assert r.status_code == 200, r.text
        left = [t["task_id"] for t in r.json()["tasks"]]
        for task_id in left:
            self.http.post(f"/api/tasks/{task_id}/kill")
        for task_id in left:
            self.wait_state(task_id, timeout=timeout)

    # -- waiting ---------------------------------------------------------------------------

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        """Wait for a condition; on failure show what the processes said."""
        try:
            wait_until(predicate, timeout=timeout, interval=0.02)
        except AssertionError:
            logs = "\n".join(
                f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                for p in sorted(self.root.glob("*.log"))
            )
            raise AssertionError(f"timed out waiting for {what}\n{logs}") from None

    def wait_node(self, name: str, *, online: bool, timeout: float = 20) -> None:
        def check() -> bool:
            node = self.node(name)
            return node is not None and node["online"] is online

        self.wait(check, timeout, f"node {name} online={online}")

    def wait_state(self, task_id: str, *states: str, timeout: float = 20) -> dict[str, Any]:
        """Wait until the task is in one of ``states`` (default: any final state)."""
        wanted = set(states) or FINAL
        found: dict[str, Any] = {}

        def check() -> bool:
            found.update(self.task(task_id))
            return found["state"] in wanted

        self.wait(check, timeout, f"task {task_id} in {sorted(wanted)}")
        return found

    def output(self, task_id: str, stream: str = "stdout") -> bytes:
        r = self.http.get(f"/api/tasks/{task_id}/{stream}")
        assert r.status_code == 200, r.text
        return r.content


def hakuriver(cluster: Cluster, *words: str) -> subprocess.CompletedProcess[bytes]:
    """``hakuriver WORDS...`` against ``cluster``, as a user's shell runs it (its output
    captured; at most two minutes)."""
    return subprocess.run(
        [sys.executable, "-m", "cli.hakuriver", *words],
        env=cluster.env(),
        capture_output=True,
        timeout=120,
        check=False,
    )


@contextlib.contextmanager
def running_cluster(
    root: Path, agents: tuple[str, ...] = ("n1",), **options: Any
) -> Iterator[Cluster]:
    """A started cluster with the given agents online; everything stopped afterwards."""
    cluster = Cluster(root, **options)
    try:
        cluster.start_host()
        for name in agents:
            cluster.start_agent(name)
        yield cluster
    finally:
        cluster.close()


def module_cluster_fixture(agents: tuple[str, ...] = ("n1",), **options: Any) -> Any:
    """A module-scoped cluster fixture and a per-test one over it, for the tests of a module
    that each use an ordinary cluster: one start per module and worker instead of one per
    test (starting a host and an agent costs seconds of CPU), settled after each test.

        module_cluster, cluster = module_cluster_fixture()
    """
    import pytest

    @pytest.fixture(scope="module", name="module_cluster")
    def shared(tmp_path_factory: Any) -> Iterator[Cluster]:
        with running_cluster(tmp_path_factory.mktemp("cluster"), agents, **options) as c:
            yield c

    @pytest.fixture(name="cluster")
    def each(module_cluster: Cluster) -> Iterator[Cluster]:
        yield module_cluster
        module_cluster.settle()

    return shared, each


# Test clusters run plain processes unless a test asks for an environment: the built-in
# default (hakuriver-base, pulled from a registry at the host's start) is for real hosts,
# and tests that want it say so in ``extra`` (tests/e2e/test_image_pull.py).
_PROCESSES = 'default_container_name = "NULL"\n'


def _processes_by_default(extra: str) -> str:
    """``extra`` with ``[docker] default_container_name = "NULL"`` unless it names one."""
    if "default_container_name" in extra:
        return extra
    if "[docker]\n" in extra:
        return extra.replace("[docker]\n", "[docker]\n" + _PROCESSES, 1)
    return extra + "\n[docker]\n" + _PROCESSES
