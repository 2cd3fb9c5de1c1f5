"""Benchmarks of history as a product (issue 5): time travel, audit, SQL reports.

Prints one ``name value`` line per figure. Quick mode builds a 100k-event and a 1M-event
log (the state-at-time figures of both: ``state_at_1m_vs_100k_ratio``) the way
``bench_rebuild.py`` does (the cluster simulation, control-plane snapshots every 50k
events, of which the store keeps the newest four), then writes ``history``
snapshots (replay_tools/snapshots.py) as the control plane does while it runs.
``--full`` adds the 10M-event case. ``--keep DIR`` builds (or reuses) the logs in DIR.
``--only-audit``: the audit's figures only (the 1M log built if missing, no history
snapshots, no state or report figures), ``--repeat N`` times, each floor beside its audit.

Figures (each the worst of five random points, each point the best of two tries,
opening the file included):

* ``state_at_time_*``: ``hakuriver state --at TIME`` as it runs by default: the nodes
  and every task not yet ended then (``state_at(..., ended=False)``);
* ``state_at_time_all_tasks_*``: the same with every task ever submitted (``--all``);
* ``state_at_seq_*``: at random seqs rather than times (the simulation commits 10k
  events at once, so its times fall on commit boundaries; seqs fall anywhere, with up
  to a snapshot interval of events to fold);
* ``audit_verify_*``: ``hakuriver audit verify --db``; ``sql_queue_wait_report_*``:
  ``hakuriver report queue-wait --db`` (opening the file included).

The audit's figures (issue 19), at the end of the run:

* ``floor_sha256_chain_1m_s``: the hash chain alone (``events.chain.chain_hash`` in a
  Python loop) over 1M events of the 1M log's mean head and payload sizes, the floor of
  ``audit_verify_1m_s`` (``audit_verify_1m_ratio`` = the two, goal <= 2);
* ``audit_verify_10k_s``: a full audit of a 10k-event log;
* ``audit_verify_incremental_10k_1m_s`` (``_10m_`` with ``--full``): the audit of the big
  log when its last 10k events came after a verified watermark (the rows after it are the
  log's own, so this is a log of that size that grew by 10k since its last audit);
  ``audit_incremental_vs_10k_ratio``: that over ``audit_verify_10k_s`` (about 1 when the
  re-verify costs what 10k events cost).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import duckdb
from bench_rebuild import build_log
from ratios import RECORDED, report, report_ratios

from events.chain import GENESIS_HASH, canonical_head
from events.snapshot_files import snapshot_dir
from replay_tools.analytics import open_analytics
from replay_tools.audit import audit
from replay_tools.replay import HISTORY_EVERY, LogFile, state_at, write_history_snapshots
from replay_tools.reports import report_table


def ensure_log(path: Path, n_events: int, label: str) -> None:
    """Build the simulated log once (reused with ``--keep``), then its history snapshots."""
    if not path.exists():
        t0 = time.perf_counter()
        tasks = asyncio.run(build_log(path, n_events))
        print(
            f"# built {label} log: {n_events} events, {tasks} tasks in "
            f"{time.perf_counter() - t0:.1f}s",
            flush=True,
        )
    folder = snapshot_dir(path)
    for stale in folder.glob("history-*.snap"):  # derived data: written afresh, and timed
        stale.unlink()
    t0 = time.perf_counter()
    written = write_history_snapshots(path)
    size = sum(p.stat().st_size for p in folder.glob("history-*.snap"))
    print(
        f"# wrote {len(written)} history snapshots ({size / 1e6:.0f} MB) in "
        f"{time.perf_counter() - t0:.1f}s",
        flush=True,
    )


def bench_state_at(path: Path, label: str, samples: int = 5, tries: int = 2) -> None:
    """Worst of several random points: open the file, find the seq, restore, fold the tail.

    A time point is the time of the middle of a random history-snapshot interval: the
    simulation commits 10k events at once, so a uniformly random time falls on a commit
    boundary and folds either no tail or a 10k one, by chance; the middle always folds the
    mean tail, the same in a log of any length (which ``state_at_1m_vs_100k_ratio``
    compares). Seq points are uniform. Each point is timed ``tries`` times and its best
    kept: the point's own cost, not a burst of another process's on this shared machine
    (the worst point still counts).
    """
    with LogFile(path) as log:
        last_seq = log.last_seq
        intervals = max(last_seq // HISTORY_EVERY, 1)
        rng = random.Random(5)
        middles = [
            min(rng.randrange(intervals) * HISTORY_EVERY + HISTORY_EVERY // 2, last_seq)
            for _ in range(samples)
        ]
        times = [
            int(
                log.con.execute(
                    "SELECT epoch_us(recorded_at) FROM events WHERE seq = ?", [seq]
                ).fetchall()[0][0]
            )
            for seq in middles
        ]
    for name, ended, by_time in (
        (f"state_at_time_{label}_s", False, True),
        (f"state_at_time_all_tasks_{label}_s", True, True),
        (f"state_at_seq_{label}_s", False, False),
    ):
        rng = random.Random(5)
        worst = 0.0
        points = iter(times)
        for _ in range(samples):
            point = next(points) if by_time else rng.randint(1, last_seq)
            best = float("inf")
            for _ in range(tries):
                gc.collect()  # the previous sample's garbage is not this one's cost
                t0 = time.perf_counter()
                if by_time:
                    state = state_at(path, at_us=point, ended=ended)
                else:
                    state = state_at(path, seq=point, ended=ended)
                best = min(best, time.perf_counter() - t0)
                assert state.last_seq > 0
            worst = max(worst, best)
        report(name, worst)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_audit(path: Path, label: str) -> None:
    gc.collect()
    c0, t0 = _cpu_s(), time.perf_counter()
    result = audit(path)
    elapsed = time.perf_counter() - t0
    assert result.ok, result.problems[:3]
    # CPU-seconds of the whole process (every thread): on a shared machine they move less
    # than the wall time, and say how far two cores could bring the wall time down.
    print(f"# audit_verify_{label}: {_cpu_s() - c0:.2f} CPU-s", flush=True)
    report(f"audit_verify_{label}_s", elapsed)


def bench_audit_incremental(path: Path, label: str, new: int = 10_000) -> None:
    """A re-verify of the log when its last ``new`` events came after a verified watermark.

    The watermark is left by a passing audit up to ``max(seq) - new`` (untimed): the rows
    after it are the log's own, so the figure is that of ``new`` events appended to a log of
    this size since its last audit (``audit_verify_incremental_10k_<label>_s``).
    """
    with tempfile.TemporaryDirectory(prefix="hakuriver-bench-mark-") as tmp:
        mark = Path(tmp) / "audit-watermark.json"
        con = duckdb.connect(str(path), read_only=True)
        try:
            ((last,),) = con.execute("SELECT max(seq) FROM events").fetchall()
        finally:
            con.close()
        assert audit(path, upto=int(last) - new, watermark=mark).ok
        gc.collect()
        t0 = time.perf_counter()
        result = audit(path, watermark=mark)
        elapsed = time.perf_counter() - t0
        assert result.ok and result.rows_read == new, (result.rows_read, result.problems[:3])
    report(f"audit_verify_incremental_10k_{label}_s", elapsed)


def bench_audit_small(folder: Path, n: int = 10_000) -> float:
    """A full audit of a log of ``n`` events: what an incremental verify should cost."""
    path = folder / "history_10k.duckdb"
    if not path.exists():
        asyncio.run(build_log(path, n))
    gc.collect()
    t0 = time.perf_counter()
    result = audit(path)
    elapsed = time.perf_counter() - t0
    assert result.ok, result.problems[:3]
    report("audit_verify_10k_s", elapsed)
    return elapsed


def floor_sha256_chain_s(path: Path, n: int = 1_000_000) -> float:
    """The hash chain alone (``events.chain.chain_hash``) over ``n`` events of the log's mean size.

    The floor of ``audit_verify_*``: one ``SHA-256(previous + head + payload)`` per event,
    in a Python loop as ``events.chain`` makes it, over heads and payloads of the log's
    average lengths (1024 distinct ones, built beforehand and cycled: the cost is the
    bytes hashed, not where they come from). No reading, no comparing, no invariants.
    """
    con = duckdb.connect(str(path), read_only=True)
    try:
        ((head_len, payload_len),) = con.execute(
            """
            SELECT avg(octet_length(encode(concat_ws(chr(31), seq, id, kind, stream, source,
                       epoch_us(occurred_at), epoch_us(recorded_at), schema_version)))) + 1,
                   avg(octet_length(encode(payload)))
            FROM events
            """
        ).fetchall()
    finally:
        con.close()
    rng = random.Random(19)
    pool = []
    for i in range(1024):
        head = canonical_head(i, "0" * 36, "task.started", "task:x", "node", 0, 0, 1)
        head = (head * 4)[: round(head_len)]
        payload = bytes(rng.randrange(32, 127) for _ in range(round(payload_len)))
        pool.append((head, payload))
    sha256 = hashlib.sha256
    gc.collect()
    c0, t0 = _cpu_s(), time.perf_counter()
    prev = GENESIS_HASH
    for i in range(n):
        head, payload = pool[i & 1023]
        prev = sha256(prev + head + payload).digest()
    elapsed = time.perf_counter() - t0
    print(
        f"# floor_sha256_chain: head {head_len:.0f} B + payload {payload_len:.0f} B per event,"
        f" {_cpu_s() - c0:.2f} CPU-s"
    )
    return elapsed * (1_000_000 / n)


def bench_queue_wait(path: Path, label: str) -> None:
    gc.collect()
    t0 = time.perf_counter()
    con = open_analytics(path)
    try:
        _, rows = report_table(con, "queue-wait", by="node")
    finally:
        con.close()
    assert rows
    report(f"sql_queue_wait_report_{label}_s", time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="add the 10M-event case")
    parser.add_argument("--keep", type=Path, help="build (or reuse) the logs in this folder")
    parser.add_argument(
        "--only-audit", action="store_true", help="only audit_verify_1m_s and its floor"
    )
    parser.add_argument("--repeat", type=int, default=1, help="with --only-audit: runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hakuriver-bench-") as tmp_dir:
        folder = args.keep or Path(tmp_dir)
        folder.mkdir(parents=True, exist_ok=True)
        # The same simulation at a tenth of the length: state_at_1m_vs_100k_ratio.
        small = folder / "history_100k.duckdb"
        ensure_log(small, 100_000, "100k")
        bench_state_at(small, "100k")
        path = folder / "history_1m.duckdb"
        if args.only_audit:
            if not path.exists():
                asyncio.run(build_log(path, 1_000_000))
            for run in range(args.repeat):
                RECORDED.clear()  # each run's ratio from its own floor and figure
                print(f"# run {run + 1}, load average {os.getloadavg()[0]:.1f}", flush=True)
                report("floor_sha256_chain_1m_s", floor_sha256_chain_s(path))
                bench_audit(path, "1m")
                report_ratios()
            return
        ensure_log(path, 1_000_000, "1m")
        bench_state_at(path, "1m")
        bench_audit(path, "1m")
        bench_queue_wait(path, "1m")
        if args.full:
            path = folder / "history_10m.duckdb"
            ensure_log(path, 10_000_000, "10m")
            bench_state_at(path, "10m")
            bench_queue_wait(path, "10m")
            bench_audit(path, "10m")
        # The audit's floor and its watermark (issue 19), after the rest.
        path = folder / "history_1m.duckdb"
        report("floor_sha256_chain_1m_s", floor_sha256_chain_s(path))
        small = bench_audit_small(folder)
        bench_audit_incremental(path, "1m")
        report(
            "audit_incremental_vs_10k_ratio", RECORDED["audit_verify_incremental_10k_1m_s"] / small
        )
        if args.full:
            bench_audit_incremental(folder / "history_10m.duckdb", "10m")
        report_ratios()


if __name__ == "__main__":
    main()
