"""What the SSH gateway costs: the same sshd reached through it and straight, side by side.

A real host (its gateway on a free port), the machine's own sshd standing in for a VPS
(tests/support/sshd.py), the VPS's node played over the real agent link, and the real
OpenSSH client. Each pair is measured interleaved in one run, so both sides see the same
machine. Prints one ``name value`` line per figure, each prefixed ``standin_`` (bench_vps.py
measures the same pairs against a real VPS container, under the issue's names):

- ``ssh_connect_direct_ms`` / ``ssh_connect_via_gateway_ms``: ``ssh … true``, median of
  ``--runs`` (20; 5 without ``--full``), and ``ssh_connect_ratio`` (goal: at most 1.3);
- ``scp_100mb_direct_s`` / ``scp_100mb_via_gateway_s``: ``scp`` of 100 MB of random bytes
  into the sshd's folder, median of 3, and ``scp_100mb_ratio`` (goal: at most 1.2);
- ``gateway_cpu_s_per_100mb``: the host process's CPU time per 100 MB relayed (the
  gateway's own cost: on a machine with few cores it competes with both ssh ends).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.cluster import Cluster
from support.fake_vps_node import FakeVpsNode
from support.sshd import SshClient, make_key, running_sshd


def report(name: str, value: float) -> None:
    """Print one figure."""
    print(f"{name} {value:.6g}", flush=True)


def _seconds(run: Callable[[], subprocess.CompletedProcess[str]]) -> float:
    started = time.perf_counter()
    done = run()
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {done.args}: {done.stderr}")
    return elapsed


def _cpu_s(pid: int) -> float:
    """CPU seconds (user and system) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compare(
    client: SshClient,
    cluster: Cluster,
    *,
    runs: int,
    jump: tuple[str, ...],
    via_host: str,
    direct: tuple[str, ...],
    direct_host: str,
    target: str,
    scratch: Path,
    prefix: str = "",
) -> None:
    """Measure and print the pairs: ``ssh … true`` and ``scp`` of 100 MB, through the
    gateway (``jump`` options, ``via_host``) and straight (``direct``, ``direct_host``),
    interleaved; ``target`` is the copy's path on the server side."""
    connect: dict[str, list[float]] = {"direct": [], "via": []}
    for _ in range(runs):
        connect["direct"].append(_seconds(lambda: client.ssh(*direct, direct_host, "true")))
        connect["via"].append(_seconds(lambda: client.ssh(*jump, via_host, "true")))
    report(f"{prefix}ssh_connect_direct_ms", 1000 * statistics.median(connect["direct"]))
    report(f"{prefix}ssh_connect_via_gateway_ms", 1000 * statistics.median(connect["via"]))
    report(
        f"{prefix}ssh_connect_ratio",
        statistics.median(connect["via"]) / statistics.median(connect["direct"]),
    )
    payload = scratch / "payload.bin"
    payload.write_bytes(os.urandom(100 << 20))
    copy: dict[str, list[float]] = {"direct": [], "via": []}
    assert cluster.host is not None
    host_cpu = 0.0
    # scp spells ssh's -p as -P; the other options are the same.
    scp_direct = tuple("-P" if word == "-p" else word for word in direct)
    for _ in range(3):
        copy["direct"].append(
            _seconds(lambda: client.scp(*scp_direct, str(payload), f"{direct_host}:{target}"))
        )
        before = _cpu_s(cluster.host.pid)
        copy["via"].append(
            _seconds(lambda: client.scp(*jump, str(payload), f"{via_host}:{target}"))
        )
        host_cpu += _cpu_s(cluster.host.pid) - before
    report(f"{prefix}scp_100mb_direct_s", statistics.median(copy["direct"]))
    report(f"{prefix}scp_100mb_via_gateway_s", statistics.median(copy["via"]))
    report(
        f"{prefix}scp_100mb_ratio",
        statistics.median(copy["via"]) / statistics.median(copy["direct"]),
    )
    report(f"{prefix}gateway_cpu_s_per_100mb", host_cpu / 3)


def main() -> int:
    """Measure, print the figures."""
    full = "--full" in sys.argv
    runs = 20 if full else 5
    with tempfile.TemporaryDirectory(prefix="bench-ssh-") as tmp:
        root = Path(tmp)
        (root / "cluster").mkdir()
        keys = root / "keys"
        keys.mkdir(mode=0o700)
        line = make_key(keys / "alice", "alice")
        cluster = Cluster(root / "cluster")
        try:
            cluster.start_host()
            alice = cluster.client_as(cluster.add_user("alice"))
            assert alice.post("/api/keys", json={"public_key": line}).status_code == 201
            gateway = alice.get("/api/ssh").json()
            with running_sshd(root / "sshd", authorized=[line]) as sshd:
                node = FakeVpsNode(cluster.url, cluster.enroll("bench"), "bench").start()
                try:
                    answer = alice.post(
                        "/api/tasks",
                        json={
                            "task_type": "vps",
                            "container": "vps",
                            "ssh_public_key": line,
                        },
                    )
                    [task_id] = answer.json()["task_ids"]
                    node.ready(task_id, sshd.port)
                    cluster.wait_state(task_id, "running")
                    client = SshClient(root / "client", keys / "alice")
                    client.trust(f"[127.0.0.1]:{gateway['port']}", gateway["host_key"])
                    client.trust("*", sshd.host_key)
                    compare(
                        client,
                        cluster,
                        runs=runs,
                        jump=("-J", f"alice@127.0.0.1:{gateway['port']}"),
                        via_host=f"{sshd.user}@{task_id}",
                        direct=("-p", str(sshd.port)),
                        direct_host=f"{sshd.user}@127.0.0.1",
                        target=str(root / "sshd" / "copy.bin"),
                        scratch=root,
                        prefix="standin_",
                    )
                finally:
                    node.stop()
        finally:
            cluster.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
