"""The log's hash chain: how each event's hash is made, and how a range is checked.

Each stored event carries ``SHA-256(previous hash + envelope head + payload)``, starting
from ``GENESIS_HASH``, so an edited, deleted or reordered row breaks the chain from
that seq on (docs/events.md). The writer extends the chain (``events.store``); anyone
holding a connection can check it (``verify_chain``; ``replay_tools.audit`` checks the
same format in bulk).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import duckdb
import msgspec

from events.schema import SELECT_COLUMNS

GENESIS_HASH = bytes(32)


def chain_hash(prev: bytes, head: bytes, payload: bytes) -> bytes:
    """SHA-256 over the previous hash, this event's envelope head and its payload."""
    return hashlib.sha256(prev + head + payload).digest()


def canonical_head(
    seq: int,
    event_id: str,
    kind: str,
    stream: str,
    source: str,
    occurred_at_us: int,
    recorded_at_us: int,
    schema_version: int,
) -> bytes:
    """The envelope fields of an event, unit-separated, as hashed before its payload."""
    return (
        f"{seq}\x1f{event_id}\x1f{kind}\x1f{stream}\x1f{source}\x1f"
        f"{occurred_at_us}\x1f{recorded_at_us}\x1f{schema_version}\x1f"
    ).encode()


class VerifyResult(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of a hash-chain check over a range of the log."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""


def verify_chain(
    con: duckdb.DuckDBPyConnection, start: int = 1, end: int | None = None, *, page: int = 100_000
) -> VerifyResult:
    """Check seq continuity and the hash chain of the ``events`` table on ``con``."""
    prev = GENESIS_HASH
    if start > 1:
        found = con.execute("SELECT hash FROM events WHERE seq = ?", [start - 1]).fetchall()
        if not found:
            return VerifyResult(ok=False, checked=0, first_bad_seq=start - 1, reason="seq missing")
        prev = bytes(found[0][0])
    expected = start
    checked = 0
    stored = con.execute("SELECT coalesce(max(seq), 0) FROM events").fetchall()[0][0]
    last = stored if end is None else min(end, stored)
    last = int(last or 0)
    while expected <= last:
        upper = min(expected + page - 1, last)
        rows = con.execute(
            f"SELECT {SELECT_COLUMNS} FROM events WHERE seq BETWEEN ? AND ? ORDER BY seq",
            [expected, upper],
        ).fetchall()
        for seq, eid, kind, stream, source, occ, rec, version, payload, digest in rows:
            if seq != expected:
                return VerifyResult(
                    ok=False,
                    checked=checked,
                    first_bad_seq=expected,
                    reason="seq missing" if seq > expected else "seq duplicated",
                )
            head = canonical_head(seq, eid, kind, stream, source, occ, rec, version)
            prev = chain_hash(prev, head, payload.encode())
            if prev != bytes(digest):
                return VerifyResult(
                    ok=False, checked=checked, first_bad_seq=seq, reason="hash mismatch"
                )
            expected += 1
            checked += 1
        if expected <= upper:
            return VerifyResult(
                ok=False, checked=checked, first_bad_seq=expected, reason="seq missing"
            )
    return VerifyResult(ok=True, checked=checked)


def hash_at(con: duckdb.DuckDBPyConnection, seq: int) -> bytes | None:
    """The stored chain hash of ``seq`` (None if the log holds no such seq)."""
    rows = con.execute("SELECT hash FROM events WHERE seq = ?", [seq]).fetchall()
    return bytes(rows[0][0]) if rows else None


def hashes_at(con: duckdb.DuckDBPyConnection, seqs: Iterable[int]) -> dict[int, bytes]:
    """The stored chain hashes of several seqs at once (those that exist)."""
    wanted = sorted(set(seqs))
    if not wanted:
        return {}
    rows = con.execute(
        "SELECT seq, hash FROM events WHERE list_contains(?::BIGINT[], seq)", [wanted]
    ).fetchall()
    return {int(seq): bytes(digest) for seq, digest in rows}
