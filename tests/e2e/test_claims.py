"""A second control plane on a port or an event log already taken: one line, exit code 2.

Real processes throughout: a running host (``Cluster``), then a second ``hakuriver
host`` / ``hakuriver up`` / ``python -m cli.hakuriver.serve`` pointed at the same port
or the same data directory, and a plain DuckDB connection holding the log file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.cluster import REPO, Cluster, free_port, running_cluster


def run(*argv: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(REPO))
    env.pop("HAKURIVER_CONFIG", None)
    env.pop("HAKURIVER_URL", None)
    return subprocess.run(
        [sys.executable, *argv], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single ``error:`` line a refused start prints (nothing else on stderr)."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), lines
    assert "Traceback" not in done.stdout + done.stderr
    return lines[0]


def config_with(cluster: Cluster, tmp_path: Path, *, port: int, data: Path) -> Path:
    config = tmp_path / f"other-{port}.toml"
    text = cluster.config.read_text()
    text = text.replace(f"host_port = {cluster.port}", f"host_port = {port}")
    text = text.replace(f'data_dir = "{cluster.root}"', f'data_dir = "{data}"')
    config.write_text(text)
    return config


def test_a_second_host_on_the_same_data_dir_names_the_first(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=()) as cluster:
        assert cluster.host is not None
        first = str(cluster.host.pid)
        other_port = config_with(cluster, tmp_path, port=free_port(), data=cluster.root)

        line = one_error_line(
            run("-m", "cli.hakuriver", "host", "--config", str(other_port), home=tmp_path)
        )
        assert str(cluster.db_file) in line and f"pid {first}" in line, line
        assert "cli.hakuriver.serve host" in line, line  # the holder's command line

        line = one_error_line(
            run(
                "-m",
                "cli.hakuriver.serve",
                "up",
                "--data-dir",
                str(cluster.root),
                "--port",
                str(free_port()),
                home=tmp_path,
            )
        )
        assert f"pid {first}" in line and "--data-dir" in line, line
        # The first host is untouched.
        assert cluster.health()["nodes_online"] == 0


def test_a_port_in_use_is_named_with_its_address(tmp_path: Path) -> None:
    with running_cluster(tmp_path, agents=()) as cluster:
        assert cluster.host is not None
        same_port = config_with(cluster, tmp_path, port=cluster.port, data=tmp_path / "d2")

        line = one_error_line(
            run("-m", "cli.hakuriver", "host", "--config", str(same_port), home=tmp_path)
        )
        assert f"port {cluster.port} is already in use on 127.0.0.1" in line, line
        assert f"pid {cluster.host.pid}" in line, line

        line = one_error_line(
            run(
                "-m",
                "cli.hakuriver",
                "up",
                "--data-dir",
                str(tmp_path / "d3"),
                "--port",
                str(cluster.port),
                home=tmp_path,
            )
        )
        assert f"port {cluster.port} is already in use" in line and "--port" in line, line
        # Refused before anything was written: no event log in the second data dir.
        assert not (tmp_path / "d3" / "hakuriver.duckdb").exists()


def test_a_log_file_open_in_another_program_is_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True);"
            " sys.stdin.read()",
            str(data / "hakuriver.duckdb"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        done = run(
            "-m",
            "cli.hakuriver.serve",
            "host",
            "--data-dir",
            str(data),
            "--port",
            str(free_port()),
            home=tmp_path,
        )
        line = one_error_line(done)
        assert "is open in another process" in line and f"pid {holder.pid}" in line, line
    finally:
        holder.communicate("", timeout=30)


def test_a_runner_with_a_name_no_node_may_have_is_refused_at_start(tmp_path: Path) -> None:
    """Refused before it connects (the host would refuse its hello), naming the rule."""
    for argv in (
        ["-m", "cli.hakuriver", "runner", "--name", "my node"],
        ["-m", "cli.hakuriver.serve", "runner", "--name", "my node"],
    ):
        line = one_error_line(run(*argv, home=tmp_path))
        assert "--name" in line and "'my node' is not a node name" in line
