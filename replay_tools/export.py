"""Exports: the events and the documented views as Arrow batches, written as Parquet.

The rows come out of DuckDB as Arrow record batches and Python (pyarrow) writes the
files, so the DuckDB instance needs no file access (see analytics.py). The control
plane streams the batches to the CLI, which writes the files on its side.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports this module for every command: DuckDB only when used
    import duckdb
    import pyarrow as pa

_EXPORTS: dict[str, str] = {
    "events": "SELECT * REPLACE (id::VARCHAR AS id) FROM events"
    " WHERE recorded_at >= make_timestamptz($since) ORDER BY seq",
    "tasks": "SELECT * FROM tasks WHERE submitted_at_us >= $since ORDER BY submitted_at_us",
    "nodes": "SELECT * FROM nodes ORDER BY name",
    "node_heartbeats": "SELECT * FROM node_heartbeats WHERE recorded_at_us >= $since ORDER BY seq",
    "placements": "SELECT * FROM placements WHERE recorded_at_us >= $since ORDER BY seq",
    "ssh_sessions": "SELECT * FROM ssh_sessions"
    " WHERE coalesce(opened_at_us, closed_at_us) >= $since"
    " ORDER BY coalesce(opened_at_us, closed_at_us)",
    "jobs": "SELECT * FROM jobs WHERE submitted_at_us >= $since ORDER BY submitted_at_us, job_id",
    "job_ranks": "SELECT job_ranks.* FROM job_ranks JOIN jobs USING (job_id)"
    " WHERE jobs.submitted_at_us >= $since ORDER BY jobs.submitted_at_us, job_id, rank",
}


def export_queries(since_us: int | None = None) -> dict[str, str]:
    """The query behind each exported file, from ``since_us`` on."""
    since = str(int(since_us or 0))
    return {name: select.replace("$since", since) for name, select in _EXPORTS.items()}


def export_reader(
    con: duckdb.DuckDBPyConnection, name: str, *, since_us: int | None = None
) -> pa.RecordBatchReader:
    """One export (``events`` or a view) as a stream of Arrow record batches."""
    queries = export_queries(since_us)
    if name not in queries:
        raise ValueError(f"unknown export {name!r}; choose one of {', '.join(queries)}")
    return con.sql(queries[name]).to_arrow_reader(64 * 1024)


def write_parquet(reader: pa.RecordBatchReader, target: Path) -> int:
    """Write a stream of batches as one Parquet file (via a temporary name); the row count."""
    import pyarrow.parquet as pq

    tmp = target.with_name(f".{target.name}.tmp")
    rows = 0
    with pq.ParquetWriter(tmp, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
            rows += batch.num_rows
    os.replace(tmp, target)
    return rows


def export_parquet(
    db: str | Path, out_dir: str | Path, *, since_us: int | None = None
) -> dict[str, tuple[Path, int]]:
    """Write the events and each view as ``<name>.parquet``; {name: (path, rows)}."""
    from replay_tools.analytics import open_analytics

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    con = open_analytics(db)
    written: dict[str, tuple[Path, int]] = {}
    try:
        for name in _EXPORTS:
            target = out / f"{name}.parquet"
            written[name] = (
                target,
                write_parquet(export_reader(con, name, since_us=since_us), target),
            )
    finally:
        con.close()
    return written
