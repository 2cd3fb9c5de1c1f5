"""The log's DuckDB schema and its migrations, applied in order at open."""

from __future__ import annotations

import duckdb

# Each migration is (version, statements). Never edit a released migration: add one.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """
            CREATE TABLE events (
                seq            BIGINT      NOT NULL,
                id             UUID        NOT NULL,
                kind           VARCHAR     NOT NULL,
                stream         VARCHAR     NOT NULL,
                source         VARCHAR     NOT NULL,
                occurred_at    TIMESTAMPTZ NOT NULL,
                recorded_at    TIMESTAMPTZ NOT NULL,
                schema_version USMALLINT   NOT NULL,
                payload        VARCHAR     NOT NULL,
                hash           BLOB        NOT NULL
            )
            """,
        ],
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]

# The events table's columns as readers select them (times as Unix microseconds), in the
# order ``events.log_reader.decode_table`` and ``events.chain.verify_chain`` expect.
SELECT_COLUMNS = (
    "seq, id::VARCHAR, kind, stream, source, epoch_us(occurred_at), epoch_us(recorded_at),"
    " schema_version, payload, hash"
)


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Bring the database to the latest schema version; return the version it had."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)"
    ).fetchall()
    ((found,),) = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()
    if int(found) > LATEST_VERSION:
        raise RuntimeError(
            f"database schema version {found} is newer than this build ({LATEST_VERSION});"
            " upgrade HakuRiver"
        )
    for version, statements in MIGRATIONS:
        if version <= int(found):
            continue
        con.execute("BEGIN").fetchall()
        try:
            for sql in statements:
                con.execute(sql).fetchall()
            con.execute("INSERT INTO schema_version (version) VALUES (?)", [version]).fetchall()
            con.execute("COMMIT").fetchall()
        except BaseException:
            con.execute("ROLLBACK").fetchall()
            raise
    return int(found)
