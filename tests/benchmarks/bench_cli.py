"""How long the ``hakuriver`` command takes to answer, against the interpreter's own start-up.

Prints one ``name value`` line per figure, each the median (p50) of repeated runs of a
fresh process with this interpreter (so the same site-packages and start-up work):

- ``floor_python_pass_ms``: ``python -c pass``, what any Python command costs;
- ``cli_version_ms``: ``hakuriver --version``;
- ``cli_submit_ms``: ``hakuriver task submit -- true`` against a running single-machine
  cluster (a control plane and one agent, as bench_cluster.py starts them);
- ``cli_version_ratio`` and ``cli_submit_ratio``: those over the floor. The goals are 2 and 3
  (issue 11: "a shell loop of submits feels instant").
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.cluster import Cluster

HAKURIVER = [
    sys.executable,
    "-c",
    "import sys; from cli.hakuriver.main import main; sys.exit(main())",
]


def report(name: str, value: float) -> None:
    """Print one figure."""
    print(f"{name} {value:.6g}", flush=True)


def run_ms(command: list[str], env: dict[str, str]) -> float:
    """The wall time of one run of ``command``, which must succeed."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{command} failed: {done.stderr.decode(errors='replace')}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true", help="more runs")
    args = parser.parse_args()
    runs = 60 if args.full else 25
    commands = {
        "floor_python_pass_ms": [sys.executable, "-c", "pass"],
        "cli_version_ms": [*HAKURIVER, "--version"],
        "cli_submit_ms": [*HAKURIVER, "task", "submit", "--cores", "0", "--", "true"],
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory(prefix="hakuriver-bench-cli-") as tmp:
        cluster = Cluster(Path(tmp), heartbeat_interval=1.0, heartbeat_timeout=5.0)
        try:
            cluster.start_host()
            cluster.start_agent("n1")
            env = {**os.environ, "HAKURIVER_CONFIG": str(cluster.config)}
            env.pop("HAKURIVER_URL", None)
            # Interleaved, so that a machine busier at one moment weighs on all three alike;
            # the first round warms the caches and is not counted.
            for round_ in range(runs + 1):
                for name, command in commands.items():
                    elapsed = run_ms(command, env)
                    if round_:
                        samples[name].append(elapsed)
        finally:
            cluster.close()
    p50 = {name: statistics.median(values) for name, values in samples.items()}
    for name, value in p50.items():
        report(name, value)
    report("cli_version_ratio", p50["cli_version_ms"] / p50["floor_python_pass_ms"])
    report("cli_submit_ratio", p50["cli_submit_ms"] / p50["floor_python_pass_ms"])


if __name__ == "__main__":
    main()
