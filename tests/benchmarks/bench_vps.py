"""VPS tasks for real: a VPS container on a real runner, reached through the gateway and
straight, side by side in one run (needs a Docker engine and OpenSSH).

Prints one ``name value`` line per figure:

- ``vps_submit_to_ssh_ready_s``: ``POST /api/tasks`` of a VPS → the first ``ssh … true``
  through the gateway that succeeds (median of 3; each VPS is killed after);
  ``bare_docker_sshd_ready_s``: ``docker run -d -p`` of the same image running its sshd →
  the first ``ssh … true`` straight to it (the floor), and ``vps_ready_ratio``;
- ``ssh_connect_via_gateway_ms`` / ``ssh_connect_direct_ms`` (same VPS: straight to the
  port the runner published), ``ssh_connect_ratio`` (goal ≤ 1.3);
- ``scp_100mb_via_gateway_s`` / ``scp_100mb_direct_s``, ``scp_100mb_ratio`` (goal ≤ 1.2),
  and ``gateway_cpu_s_per_100mb``.

Without an engine or OpenSSH it prints a comment saying so and exits 0.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ssh_gateway import compare, report
from support.cluster import Cluster
from support.docker_images import engine
from support.sshd import SshClient, make_key
from support.vps_image import VPS_SSHD_IMAGE, build_vps_images, ssh_missing

NODE = "bench"


def _until_ssh(argv: list[str], deadline_s: float = 120) -> float:
    """Seconds until ``argv`` (an ssh … true) first succeeds."""
    started = time.perf_counter()
    while time.perf_counter() - started < deadline_s:
        done = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        if done.returncode == 0:
            return time.perf_counter() - started
        time.sleep(0.05)
    raise SystemExit(f"no ssh within {deadline_s} s: {argv}")


def _bare_ready(client: SshClient, line: str, scratch: Path) -> float:
    """``docker run`` of the VPS image running its sshd with the key → first ``ssh true``."""
    keys = scratch / "bare_keys"
    keys.write_text(line + "\n")
    keys.chmod(0o644)
    script = (
        "ssh-keygen -A >/dev/null && mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e"
        " -o AuthorizedKeysFile=/etc/bare_keys -o StrictModes=no"
    )
    started = time.perf_counter()
    container = subprocess.run(
        [
            "docker", "run", "-d", "--rm", "-p", "127.0.0.1::22",
            "-v", f"{keys}:/etc/bare_keys:ro", VPS_SSHD_IMAGE, "sh", "-c", script,
        ],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        port = (
            subprocess.run(
                ["docker", "port", container, "22/tcp"], capture_output=True, text=True, check=True
            )
            .stdout.split(":")[-1]
            .strip()
        )
        argv = [
            "ssh", "-F", str(client.config), "-p", port, "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "root@127.0.0.1", "true",
        ]  # fmt: skip
        _until_ssh(argv, 60)
        return time.perf_counter() - started
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)


def main() -> int:
    """Measure, print the figures."""
    full = "--full" in sys.argv
    runs = 20 if full else 5
    docker = engine()
    missing = ssh_missing()
    if docker is None or missing is not None:
        print(f"# bench_vps: skipped ({missing or 'no Docker engine'})")
        return 0
    build_vps_images(docker)
    with tempfile.TemporaryDirectory(prefix="bench-vps-") as tmp:
        root = Path(tmp)
        (root / "cluster").mkdir()
        keys = root / "keys"
        keys.mkdir(mode=0o700)
        line = make_key(keys / "alice", "alice")
        cluster = Cluster(root / "cluster")
        try:
            cluster.start_host()
            cluster.start_agent(NODE)
            alice = cluster.client_as(cluster.add_user("alice"))
            assert alice.post("/api/keys", json={"public_key": line}).status_code == 201
            gateway = alice.get("/api/ssh").json()
            client = SshClient(root / "client", keys / "alice")
            client.trust(f"[127.0.0.1]:{gateway['port']}", gateway["host_key"])
            jump = ("-J", f"alice@127.0.0.1:{gateway['port']}")
            fresh = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null")

            ready, bare = [], []
            task_id = ""
            for i in range(3):
                bare.append(_bare_ready(client, line, root))
                started = time.perf_counter()
                answer = alice.post(
                    "/api/tasks",
                    json={"task_type": "vps", "container": VPS_SSHD_IMAGE, "targets": [NODE]},
                )
                assert answer.status_code == 201, answer.text
                [task_id] = answer.json()["task_ids"]
                argv = ["ssh", "-F", str(client.config), *jump, *fresh, f"root@vps-{task_id}"]
                _until_ssh([*argv, "true"])
                ready.append(time.perf_counter() - started)
                if i < 2:
                    assert alice.post(f"/api/tasks/{task_id}/kill").status_code == 202
                    cluster.wait_state(task_id, "killed", timeout=60)
            report("vps_submit_to_ssh_ready_s", statistics.median(ready))
            report("bare_docker_sshd_ready_s", statistics.median(bare))
            report("vps_ready_ratio", statistics.median(ready) / statistics.median(bare))

            task = cluster.task(task_id)
            compare(
                client,
                cluster,
                runs=runs,
                jump=(*jump, *fresh),
                via_host=f"root@vps-{task_id}",
                direct=("-p", str(task["ssh_port"]), *fresh),
                direct_host=f"root@{task['ssh_address']}",
                target="/tmp/copy.bin",
                scratch=root,
            )
        finally:
            cluster.close()
            for container in docker.containers.list(all=True, filters={"label": "hakuriver.vps"}):
                if container.labels.get("hakuriver.node") == NODE:
                    container.remove(force=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
