"""The store's idempotency window: recently stored event ids, in memory, bounded.

Ids are UUIDv7, so each carries its producer's timestamp. The window keeps every stored
id stamped at or above a watermark ``W`` (older entries are evicted and ``W`` rises past
them). An incoming id stamped at or above ``W`` is new unless it is in the window; only
one stamped below ``W`` (a late resend, a producer with a slow clock) must be looked up
in the table (docs/decisions.md, "Idempotency without a unique index"). Exact because
the store has a single writer.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import duckdb

from events.ids import id_timestamp_ms


class RecentIds:
    """Every stored id stamped at or above ``watermark_ms``, with its seq, bounded in size."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.seq_by_id: dict[str, int] = {}
        self.order: collections.deque[str] = collections.deque()
        self.watermark_ms = 0

    def extend(self, ids: Iterable[str], seqs: Iterable[int]) -> None:
        """Remember newly stored ids (in seq order), evicting the oldest past capacity."""
        order = self.order
        for event_id, seq in zip(ids, seqs, strict=True):
            self.seq_by_id[event_id] = seq
            order.append(event_id)
        excess = len(order) - self.capacity
        if excess > 0:
            pop, forget = order.popleft, self.seq_by_id.pop
            newest_evicted = self.watermark_ms - 1
            for _ in range(excess):
                old_id = pop()
                forget(old_id, None)
                newest_evicted = max(newest_evicted, id_timestamp_ms(old_id))
            self.watermark_ms = newest_evicted + 1

    def load(self, con: duckdb.DuckDBPyConnection, last_seq: int) -> None:
        """Fill the window from the newest stored events, at open."""
        cutoff = max(last_seq - self.capacity, 0)
        table = con.sql(
            "SELECT id::VARCHAR AS id, seq FROM events WHERE seq > ? ORDER BY seq", params=[cutoff]
        ).to_arrow_table()
        self.extend(table.column("id").to_pylist(), table.column("seq").to_pylist())
        if cutoff:
            # Every id not loaded must sit below the watermark.
            ((newest_unloaded,),) = con.execute(
                "SELECT max(id)::VARCHAR FROM events WHERE seq <= ?", [cutoff]
            ).fetchall()
            if newest_unloaded:
                self.watermark_ms = max(self.watermark_ms, id_timestamp_ms(newest_unloaded) + 1)
