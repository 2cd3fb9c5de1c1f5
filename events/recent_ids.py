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
from typing import NamedTuple

import duckdb

from events.ids import id_timestamp_ms


def _id_prefix(timestamp_ms: int) -> str:
    """The first 13 characters of a canonical UUIDv7 stamped ``timestamp_ms``."""
    digits = f"{timestamp_ms:012x}"
    return f"{digits[:8]}-{digits[8:]}"


class IdMark(NamedTuple):
    """The store's id mark: at seq ``seq``, ``bound`` is at or above every id stored at or
    below it; a mark written by this version also has the writer's window then: its
    ``watermark_ms`` and ``capacity`` (None and 0 in a mark of an older version)."""

    seq: int
    bound: str
    watermark_ms: int | None = None
    capacity: int = 0


class RecentIds:
    """Every stored id stamped at or above ``watermark_ms``, with its seq, bounded in size."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.seq_by_id: dict[str, int] = {}
        self.order: collections.deque[str] = collections.deque()
        self._watermark_ms = 0
        self.watermark_id = _id_prefix(0)

    @property
    def watermark_ms(self) -> int:
        """Every stored id stamped at or above this is in the window."""
        return self._watermark_ms

    @watermark_ms.setter
    def watermark_ms(self, value: int) -> None:
        self._watermark_ms = value
        self.watermark_id = _id_prefix(value)

    def below_watermark(self, event_id: str) -> bool:
        """Whether a canonical UUIDv7 ``event_id`` is stamped below the watermark.

        One string comparison instead of parsing the id's timestamp: a canonical id starts
        with its 48-bit millisecond timestamp in fixed-width lower-case hex, so ids compare
        as their timestamps do, and an id stamped exactly at the watermark sorts after the
        bare prefix (it is longer)."""
        return event_id < self.watermark_id

    def extend(self, ids: Iterable[str], seqs: Iterable[int]) -> None:
        """Remember newly stored ids (in seq order), evicting the oldest past capacity."""
        order = self.order
        ids = ids if isinstance(ids, list) else list(ids)
        seqs = seqs if isinstance(seqs, list) else list(seqs)
        if len(ids) != len(seqs):
            raise ValueError(f"{len(ids)} ids and {len(seqs)} seqs")
        # Two C-level loops instead of a Python one per id (an append learns 1000 at once).
        self.seq_by_id.update(zip(ids, seqs, strict=True))
        order.extend(ids)
        excess = len(order) - self.capacity
        if excess > 0:
            pop, forget = order.popleft, self.seq_by_id.pop
            evicted = [pop() for _ in range(excess)]
            for old_id in evicted:
                forget(old_id, None)
            # Canonical ids sort as their timestamps (``below_watermark``): the newest
            # evicted stamp is that of the greatest evicted id.
            newest_evicted = id_timestamp_ms(max(evicted))
            if newest_evicted >= self.watermark_ms:
                self.watermark_ms = newest_evicted + 1

    def load(
        self, con: duckdb.DuckDBPyConnection, last_seq: int, mark: IdMark | None = None
    ) -> str:
        """Fill the window from the newest stored events, at open; return an upper bound
        of every stored id ("" when none).

        ``mark``: the store's id mark (``IdMark``, written at checkpoints and at close):
        at seq S, a bound at or above every id stored at or below S. The watermark must
        sit above every id not loaded; finding the greatest of those reads the id of
        every older row, which grows with the history (about 0.17 s at 10M events). With
        a mark, only the rows between it and the window's start are read, and none when
        it is past that start.

        A mark at the log's very end (a clean close, or no commit since its checkpoint)
        that has the writer's window, of this capacity, gives that window's watermark: the
        writer's window then held exactly the rows loaded now (the newest ``capacity``),
        so every id not loaded is stamped below it. The mark's bound alone would put the
        watermark above the whole window, and send every id of a lagging clock to the
        table until the clocks pass the newest id stored.
        """
        cutoff = max(last_seq - self.capacity, 0)
        table = con.sql(
            "SELECT id::VARCHAR AS id, seq FROM events WHERE seq > ? ORDER BY seq", params=[cutoff]
        ).to_arrow_table()
        ids = table.column("id").to_pylist()
        self.extend(ids, table.column("seq").to_pylist())
        newest = max(ids, default="")
        if cutoff and (
            mark is not None
            and mark.seq == last_seq
            and mark.capacity == self.capacity
            and mark.watermark_ms is not None
            # A writer whose window evicted (``cutoff``: it held more rows than fit) has a
            # watermark above 0 and at most one past its bound's stamp: anything else is
            # no writer's, and the bound decides (0 would skip every table lookup).
            and 0 < mark.watermark_ms <= id_timestamp_ms(mark.bound) + 1
        ):
            self.watermark_ms = max(self.watermark_ms, mark.watermark_ms)
            newest = max(newest, mark.bound)
        elif cutoff:
            # Every id not loaded must sit below the watermark.
            unloaded = _newest_up_to(con, cutoff, mark)
            if unloaded:
                self.watermark_ms = max(self.watermark_ms, id_timestamp_ms(unloaded) + 1)
                newest = max(newest, unloaded)
        return newest


def _newest_up_to(con: duckdb.DuckDBPyConnection, cutoff: int, mark: IdMark | None) -> str:
    """An id at or above every id stored at or below seq ``cutoff`` ("" for none)."""
    if mark is not None and mark.seq >= cutoff:
        return mark.bound
    after, bound = (mark.seq, mark.bound) if mark is not None else (0, "")
    ((found,),) = con.execute(
        "SELECT max(id)::VARCHAR FROM events WHERE seq > ? AND seq <= ?", [after, cutoff]
    ).fetchall()
    return max(found or "", bound)
