"""Floors measured in the same run as the figures they judge (issue 19).

Each is the cheapest way the machine can do what a figure does, with no HakuRiver code:
one durable DuckDB commit on the same disk, one ``/bin/true`` spawned from asyncio.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import duckdb


def floor_commit_ms(directory: Path, samples: int = 200) -> float:
    """p50 of one durable single-row DuckDB commit in a file under ``directory``."""
    with tempfile.TemporaryDirectory(dir=directory, prefix="floor-commit-") as tmp:
        con = duckdb.connect(str(Path(tmp) / "floor.duckdb"))
        try:
            con.execute("CREATE TABLE t (seq BIGINT, payload VARCHAR)")
            timings = []
            for i in range(samples + 10):
                t0 = time.perf_counter()
                con.execute("INSERT INTO t VALUES (?, ?)", [i, "x" * 200])
                timings.append(time.perf_counter() - t0)
            return statistics.median(timings[10:]) * 1000
        finally:
            con.close()


async def _spawn_true() -> float:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec("/bin/true")
    await proc.wait()
    return time.perf_counter() - t0


def floor_spawn_true_ms(samples: int = 100) -> float:
    """p50 of ``asyncio.create_subprocess_exec("/bin/true")`` to its exit."""

    async def run() -> float:
        for _ in range(5):
            await _spawn_true()
        return statistics.median([await _spawn_true() for _ in range(samples)]) * 1000

    return asyncio.run(run())


def floor_spawn_many_true_s(n: int = 200, at_once: int | None = None) -> float:
    """``n`` spawns of ``/bin/true``, at most ``at_once`` (default: the cores) at a time."""
    limit = at_once or len(os.sched_getaffinity(0))

    async def run() -> float:
        gate = asyncio.Semaphore(limit)

        async def one() -> None:
            async with gate:
                await _spawn_true()

        await asyncio.gather(*(one() for _ in range(5)))
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - t0

    return asyncio.run(run())
