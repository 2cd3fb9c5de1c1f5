"""The peer figures (issue 19): what a local Slurm takes for what HakuRiver does.

Prints, when a local Slurm answers (``sinfo`` works):

* ``slurm_srun_true_ms``: p50 of ``srun -n1 true`` (submit, allocate, run, see the end),
  the peer of ``latency_process_task_p50_ms``;
* ``slurm_200_jobs_s``: 200 jobs of one core each running ``true``, submitted the way a
  Slurm user submits 200 identical jobs (one job array, ``sbatch --array=1-200``), until
  the last has ended; the peer of ``throughput_200_process_tasks_s``.

Otherwise it prints ``# skipped: <why>`` and exits 0, so ``make bench`` runs anywhere.
``tests/benchmarks/slurm_local.sh`` sets up a single-node Slurm on Debian (as root);
docs/performance.md says how. Slurm schedules batch jobs in passes (with its default
``batch_sched_delay`` of 3 s, a pass every few seconds on a single node), which is most
of ``slurm_200_jobs_s``: that is the peer as installed, not tuned.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ratios import report, report_ratios


def _run(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def slurm_unavailable() -> str | None:
    """Why there is no usable local Slurm (None when there is one)."""
    for tool in ("sinfo", "srun", "sbatch", "squeue"):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH (apt-get install slurm-wlm munge; see docs/performance.md)"
    try:
        out = _run("sinfo", "-h", "-o", "%T", timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s (is slurmctld running?)"
    if out.returncode != 0:
        why = (out.stderr or out.stdout).strip().splitlines()
        return f"sinfo failed: {why[-1] if why else out.returncode} (run slurm_local.sh as root)"
    states = out.stdout.split()
    if not any(s.rstrip("*~#!%$@^-").split("+")[0] in ("idle", "mixed") for s in states):
        return f"no idle Slurm node (sinfo says: {' '.join(states) or 'no nodes'})"
    return None


def slurm_srun_true_ms(samples: int = 30) -> float:
    """p50 of ``srun -n1 true`` to its exit, after two warm-up runs."""
    timings = []
    for i in range(samples + 2):
        t0 = time.perf_counter()
        out = _run("srun", "-n1", "-c1", "--quiet", "true")
        elapsed = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"srun true failed: {out.stderr.strip()}")
        if i >= 2:
            timings.append(elapsed)
    return statistics.median(timings) * 1000


def slurm_jobs_s(n: int = 200, timeout: float = 900) -> float:
    """``n`` one-core ``true`` jobs as one array, from submission until the last has ended."""
    t0 = time.perf_counter()
    out = _run(
        "sbatch", "--parsable", f"--array=1-{n}", "-n1", "-c1", "-o", "/dev/null", "--wrap", "true"
    )
    if out.returncode != 0:
        raise RuntimeError(f"sbatch failed: {out.stderr.strip()}")
    job = out.stdout.strip().split(";")[0]
    deadline = t0 + timeout
    try:
        while True:
            # -r: one line per array task; an ended task leaves the queue.
            left = _run("squeue", "-h", "-r", "-j", job, "-o", "%i")
            if left.returncode == 0 and not left.stdout.strip():
                return time.perf_counter() - t0
            if time.perf_counter() > deadline:
                raise RuntimeError(f"job array {job} not done after {timeout:.0f} s")
            time.sleep(0.05)
    finally:
        if time.perf_counter() > deadline:
            _run("scancel", job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200, help=argparse.SUPPRESS)
    args = parser.parse_args()
    why = slurm_unavailable()
    if why is not None:
        print(f"# skipped: slurm_srun_true_ms, slurm_200_jobs_s: {why}", flush=True)
        return
    report("slurm_srun_true_ms", slurm_srun_true_ms())
    elapsed = slurm_jobs_s(args.jobs)
    name = "slurm_200_jobs_s" if args.jobs == 200 else f"slurm_{args.jobs}_jobs_s"
    report(name, elapsed)
    report_ratios()


if __name__ == "__main__":
    main()
