"""``hakuriver jobs submit`` following a job while its host stops and starts again.

The follower reads the output as pieces with each rank's file offset, so when the host
goes away (stopped cleanly: the answer ends without its ``end`` record; killed: the
connection breaks) it asks again from where it was: every line once, none lost, and a
line half-written when the host went away is not broken in two. A host that stays away
past ``HAKURIVER_FOLLOW_RETRY_S`` makes it give up with exit 3, saying how to look.

Each test has a cluster of its own: the host is stopped under it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.cluster import Cluster, running_cluster
from support.waiting import wait_until

RANKS = (0, 1)


def follower(cluster: Cluster, path: Path, retry_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.hakuriver", "jobs", "submit", str(path)],
        env={**cluster.env(), "HAKURIVER_FOLLOW_RETRY_S": str(retry_s)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def collect(stream: object, into: list[str]) -> threading.Thread:
    """Read ``stream``'s lines into ``into`` on a thread (so the test can wait on them)."""

    def read() -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def gated_job(tmp_path: Path, gate: Path) -> Path:
    """Two ranks: three lines, half a line, then (once the gate opens) its end and three
    more lines."""
    path = tmp_path / "job.yaml"
    path.write_text(
        "resources: {image_id: NULL}\n"
        "num_nodes: 2\n"
        "run: |\n"
        "  for i in 1 2 3; do echo before $i of $NODE_RANK; done\n"
        "  printf 'half-'\n"
        f"  while [ ! -e '{gate}' ]; do sleep 0.02; done\n"
        "  echo done $NODE_RANK\n"
        "  for i in 1 2 3; do echo after $i of $NODE_RANK; done\n"
    )
    return path


def expected_lines() -> list[str]:
    lines = []
    for rank in RANKS:
        lines += [f"node-{rank} | before {i} of {rank}\n" for i in (1, 2, 3)]
        lines.append(f"node-{rank} | half-done {rank}\n")
        lines += [f"node-{rank} | after {i} of {rank}\n" for i in (1, 2, 3)]
    return sorted(lines)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_following_goes_on_across_a_host_restart_without_repeats_or_gaps(
    tmp_path: Path, sig: signal.Signals
) -> None:
    (tmp_path / "cluster").mkdir()
    with running_cluster(tmp_path / "cluster", agents=("n1", "n2")) as cluster:
        gate = tmp_path / "gate"
        proc = follower(cluster, gated_job(tmp_path, gate), retry_s=60)
        out: list[str] = []
        reader = collect(proc.stdout, out)
        try:

            def all_before() -> bool:
                return sum("before 3 of" in line for line in out) == len(RANKS)

            wait_until(all_before, 60)
            cluster.stop_host(sig)
            cluster.start_host()
            gate.touch()
            proc.wait(90)
        finally:
            if proc.poll() is None:
                proc.kill()
        reader.join(10)
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert proc.returncode == 0, (out, err)
        job_id, *lines = out
        assert sorted(lines) == expected_lines(), lines
        assert err.count("host unreachable, retrying") == 1, err
        assert f"job {job_id.strip()} completed" in err


def test_a_host_that_stays_away_makes_the_follower_give_up_with_exit_3(tmp_path: Path) -> None:
    (tmp_path / "cluster").mkdir()
    with running_cluster(tmp_path / "cluster", agents=("n1", "n2")) as cluster:
        gate = tmp_path / "gate"
        budget = 2.0
        proc = follower(cluster, gated_job(tmp_path, gate), retry_s=budget)
        out: list[str] = []
        reader = collect(proc.stdout, out)
        try:
            wait_until(lambda: any("before 3 of" in line for line in out), 60)
            stopping = time.monotonic()  # the follow is cut as the host starts to stop
            cluster.stop_host()
            proc.wait(60)
            took = time.monotonic() - stopping
        finally:
            if proc.poll() is None:
                proc.kill()
            gate.touch()
            cluster.start_host()  # so the cluster stops cleanly
        reader.join(10)
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert proc.returncode == 3, (out, err)
        job_id = out[0].strip()
        assert "host unreachable, retrying" in err
        assert f"Job {job_id} may still be running" in err
        assert f"hakuriver jobs status {job_id}" in err
        assert budget <= took < budget + 10, took


def test_a_host_gone_without_a_word_is_noticed_by_its_silence(tmp_path: Path) -> None:
    # A power cut at the host sends no FIN: the follower's socket would wait for ever. The
    # host sends keep-alives while a followed job is silent, so silence past
    # HAKURIVER_FOLLOW_IDLE_S is a host gone; reconnecting then fails until the budget.
    import os
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held: list[socket.socket] = []

    def one_answer_then_silence() -> None:
        conn, _ = listener.accept()
        listener.close()  # every reconnection is refused from now on
        conn.recv(65536)
        record = b'{"from":{"0":0}}\n'
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + f"{len(record):x}\r\n".encode()
            + record
            + b"\r\n"
        )
        held.append(conn)  # never closed while the follower waits: a host gone silent

    server = threading.Thread(target=one_answer_then_silence, daemon=True)
    server.start()
    env = dict(os.environ)
    env.update(
        {
            "HAKURIVER_URL": f"http://127.0.0.1:{port}",
            "HAKURIVER_TOKEN": "x" * 40,
            "HAKURIVER_FOLLOW_IDLE_S": "1",
            "HAKURIVER_FOLLOW_RETRY_S": "2",
            "HAKURIVER_CONFIG": str(tmp_path / "empty.toml"),
        }
    )
    (tmp_path / "empty.toml").write_text("")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cli.hakuriver", "jobs", "logs", "abcd1234", "--follow"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "may still be running" in done.stderr
    assert time.monotonic() - started < 30
    for conn in held:
        conn.close()
