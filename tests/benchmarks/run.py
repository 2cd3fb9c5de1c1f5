"""Run every benchmark; each prints one ``name value`` line per figure.

Usage: python tests/benchmarks/run.py [--full]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = [
    "bench_store.py",
    "bench_cluster.py",
    "bench_cli.py",
    "bench_auth.py",
    "bench_history.py",
    "bench_docker.py",
    "bench_ssh_gateway.py",
    "bench_vps.py",
    "bench_jobs.py",
    "bench_job_cluster.py",
    "bench_dashboard.py",
    "bench_metrics.py",
]


def main() -> int:
    """Run each benchmark script in its own process, passing the arguments on."""
    failed = 0
    for name in BENCHMARKS:
        print(f"# {name}", flush=True)
        failed |= subprocess.call([sys.executable, str(HERE / name), *sys.argv[1:]])
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
