"""Floors measured in the same run as the figures they judge (issue 19).

Each is the cheapest way the machine can do what a figure does, with no HakuRiver code:
one durable DuckDB commit of one row of the log's own table on the same disk, one
``/bin/true`` spawned from asyncio.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import duckdb

from events.schema import MIGRATIONS

# One row as the log stores it: the average payload of the cluster simulation (416 bytes,
# bench_store.py measures it) and a SHA-256 hash.
_INSERT_ROW = (
    "INSERT INTO events VALUES (?, ?::UUID, ?, ?, ?, make_timestamptz(?::BIGINT),"
    " make_timestamptz(?::BIGINT), ?, ?, ?)"
)


def floor_commit_ms(directory: Path, samples: int = 200) -> float:
    """p50 of one durable single-row DuckDB commit in a file under ``directory``.

    The row is one of the log's own table (events/schema.py), with no Python encoding
    timed: what the store's commit of one event cannot go below. A two-column row costs
    about two thirds of it; judging the log against that would charge the store for its
    schema.
    """
    with tempfile.TemporaryDirectory(dir=directory, prefix="floor-commit-") as tmp:
        con = duckdb.connect(str(Path(tmp) / "floor.duckdb"))
        try:
            for sql in MIGRATIONS[0][1]:
                con.execute(sql)
            now_us = int(time.time() * 1_000_000)
            payload = "x" * 416
            digest = bytes(32)
            timings = []
            for i in range(samples + 10):
                row = [i, str(uuid.uuid4()), "task.finished", "task:t", "n1", now_us, now_us]
                row += [1, payload, digest]
                t0 = time.perf_counter()
                con.execute(_INSERT_ROW, row)
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
