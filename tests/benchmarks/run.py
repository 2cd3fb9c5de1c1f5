"""Run every benchmark; each prints one ``name value`` line per figure, then the ratios.

Usage: python tests/benchmarks/run.py [--full] [--only NAME ...] [--table-only FILE]

Each script runs in its own process and prints its figures, the floors they are judged
against (measured in the same run) and the ratios its own figures allow. At the end this
prints the ratios that span two scripts, then one table of every ratio of
``ratios.RATIOS`` against its goal (``--table-only FILE`` prints that table again from a
saved run's output). The exit status is non-zero when a script failed; a missed goal is
reported in the table, not as a failure, since it is a measurement.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from ratios import RATIOS, computable  # noqa: E402

BENCHMARKS = [
    "bench_store.py",
    "bench_rebuild.py",
    "bench_cluster.py",
    "bench_peers.py",
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

FIGURE = re.compile(r"^([a-z][a-z0-9_]*) (-?[0-9.]+(?:e[-+]?[0-9]+)?|nan|inf)$")


def parse(lines: Iterable[str]) -> dict[str, float]:
    """The ``name value`` lines of a run (comments and other output ignored; last wins)."""
    figures: dict[str, float] = {}
    for line in lines:
        match = FIGURE.match(line.strip())
        if match:
            figures[match.group(1)] = float(match.group(2))
    return figures


def table(figures: dict[str, float], full: bool) -> tuple[list[str], int, int]:
    """The final table as lines, with the count of goals met and of ratios measured."""
    values = {r.name: figures[r.name] for r in RATIOS if r.name in figures}
    for ratio, value in computable(figures):
        values.setdefault(ratio.name, value)
    rows = ["| ratio | value | goal | met | against |", "| --- | --- | --- | --- | --- |"]
    met = measured = 0
    for ratio in RATIOS:
        goal = f"{ratio.op} {ratio.goal:g}"
        if ratio.name in values:
            value = values[ratio.name]
            ok = ratio.met(value)
            measured += 1
            met += ok
            rows.append(
                f"| `{ratio.name}` | {value:.3g} | {goal} | {'yes' if ok else '**no**'} "
                f"| {ratio.formula} |"
            )
        else:
            if ratio.full_only and not full:
                why = "`--full` only"
            else:
                missing = [n for n in ratio.needs if n not in figures]
                why = ratio.optional or f"not measured ({', '.join(missing)} missing)"
            rows.append(f"| `{ratio.name}` | — | {goal} | — | {why} |")
    return rows, met, measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="the long cases too (10M events)")
    parser.add_argument("--only", nargs="*", default=None, help="these scripts only")
    parser.add_argument("--table-only", type=Path, help="print the table of a saved run")
    args = parser.parse_args()
    if args.table_only:
        rows, met, measured = table(parse(args.table_only.read_text().splitlines()), args.full)
        print("\n".join(rows))
        print(f"# {met} of {measured} goals met")
        return 0
    names = [n for n in BENCHMARKS if (HERE / n).exists()]
    if args.only:
        names = [n for n in names if n in args.only or n.removesuffix(".py") in args.only]
    passing = [a for a in sys.argv[1:] if a == "--full"]
    failed = 0
    figures: dict[str, float] = {}
    started = time.perf_counter()
    for name in names:
        print(f"# {name}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(HERE / name), *passing], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        rc = proc.wait()
        figures.update(parse(lines))
        print(f"# {name} took {time.perf_counter() - t0:.0f} s (exit {rc})", flush=True)
        failed |= rc != 0
    # The ratios that span two scripts (e.g. the agent link against the store's append rate).
    for ratio, value in computable(figures):
        if ratio.name not in figures:
            figures[ratio.name] = value
            print(f"{ratio.name} {value:.6g}", flush=True)
    rows, met, measured = table(figures, args.full)
    print(f"# all benchmarks took {time.perf_counter() - started:.0f} s")
    print("# ratios against their goals (tests/benchmarks/ratios.py)")
    print("\n".join(rows))
    print(f"# {met} of {measured} goals met")
    return int(failed)


if __name__ == "__main__":
    raise SystemExit(main())
