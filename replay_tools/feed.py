"""The log as a feed: filtered, paged pages of events, as JSON documents.

One query serves ``GET /api/events``, the server-sent stream and the offline CLI, so
a filter means the same everywhere. Pages are in seq order and carry ``next_after``:
pass it back as ``after`` to continue exactly where the page ended (the seqs a filter
skipped are not scanned again).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from events.codec import Codec
from events.schema import SELECT_COLUMNS
from events.types import EVENT_TYPES
from replay_tools.points import iso
from replay_tools.summaries import summarize

if TYPE_CHECKING:  # the CLI imports this module for every command: DuckDB only when used
    import duckdb

MAX_PAGE = 10_000
FAMILIES = tuple(sorted({kind.split(".", 1)[0] for kind in EVENT_TYPES}))


class EventFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which events a page or a stream holds (every given condition must match)."""

    kinds: tuple[str, ...] = ()  # exact kinds, or families written ``task.*``
    exclude: tuple[str, ...] = ()  # kinds or families left out (``events tail``: heartbeats)
    task_id: str | None = None  # stream task:<id>
    node: str | None = None  # stream node:<name>, or any event whose payload names the node
    source: str | None = None
    actor: str | None = None  # events caused by this user's requests
    since_us: int | None = None  # recorded at or after
    until_us: int | None = None  # recorded at or before
    since_seq: int | None = None  # first seq included
    until_seq: int | None = None  # last seq included


class EventDoc(msgspec.Struct, kw_only=True):
    """One event as the API and the CLI show it (``payload`` is the stored JSON)."""

    seq: int
    id: str
    kind: str
    stream: str
    source: str
    occurred_at: str | None
    recorded_at: str | None
    recorded_at_us: int
    schema_version: int
    hash: str
    summary: str
    payload: msgspec.Raw


class Page(msgspec.Struct, kw_only=True):
    """A page of events: ``next_after`` continues it, ``more`` says whether a page is full."""

    events: list[EventDoc]
    next_after: int
    more: bool


def check_kinds(words: Iterable[str]) -> tuple[str, ...]:
    """Kinds from repeated or comma-separated words; ValueError naming an unknown one."""
    kinds: list[str] = []
    for word in words:
        for kind in (k.strip() for k in word.split(",")):
            if not kind:
                continue
            family = kind.removesuffix(".*")
            if kind not in EVENT_TYPES and not (kind.endswith(".*") and family in FAMILIES):
                raise ValueError(
                    f"unknown kind {kind!r}: give an event kind (task.placed, node.heartbeat,"
                    f" ...) or a family ({', '.join(f + '.*' for f in FAMILIES)})"
                )
            kinds.append(kind)
    return tuple(kinds)


def _any_kind(kinds: tuple[str, ...]) -> tuple[str, list[Any]]:
    """A condition true for an event of any of ``kinds`` (exact kinds or families)."""
    exact = [k for k in kinds if not k.endswith(".*")]
    families = [k.removesuffix("*") for k in kinds if k.endswith(".*")]
    alternatives = ["kind IN (SELECT unnest(?::VARCHAR[]))"] if exact else []
    params: list[Any] = [exact] if exact else []
    for family in families:
        alternatives.append("starts_with(kind, ?)")
        params.append(family)
    return "(" + " OR ".join(alternatives) + ")", params


def _where(flt: EventFilter) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for kinds, negate in ((flt.kinds, ""), (flt.exclude, "NOT ")):
        if kinds:
            condition, values = _any_kind(kinds)
            where.append(negate + condition)
            params += values
    if flt.task_id is not None:
        where.append("stream = ?")
        params.append(f"task:{flt.task_id}")
    if flt.node is not None:
        where.append(
            "(stream = ? OR (NOT starts_with(stream, 'node:') AND payload->>'$.node' = ?))"
        )
        params += [f"node:{flt.node}", flt.node]
    if flt.source is not None:
        where.append("source = ?")
        params.append(flt.source)
    if flt.actor is not None:
        where.append("payload->>'$.actor.user' = ?")
        params.append(flt.actor)
    if flt.since_us is not None:
        where.append("recorded_at >= make_timestamptz(?::BIGINT)")
        params.append(flt.since_us)
    if flt.until_us is not None:
        where.append("recorded_at <= make_timestamptz(?::BIGINT)")
        params.append(flt.until_us)
    return where, params


def events_page(
    con: duckdb.DuckDBPyConnection,
    flt: EventFilter,
    *,
    after: int,
    upto: int,
    limit: int = 1000,
    tail: bool = False,
) -> Page:
    """Events matching ``flt`` with ``after < seq <= upto``: the first ``limit`` (or the last)."""
    low = max(after, (flt.since_seq or 1) - 1)
    high = upto if flt.until_seq is None else min(upto, flt.until_seq)
    where, params = _where(flt)
    where = ["seq > ?", "seq <= ?", *where]
    params = [low, high, *params]
    sql = f"SELECT {SELECT_COLUMNS} FROM events WHERE {' AND '.join(where)}"
    if tail:
        sql = f"SELECT * FROM ({sql} ORDER BY seq DESC LIMIT {int(limit)}) ORDER BY 1"
    else:
        sql += f" ORDER BY seq LIMIT {int(limit)}"
    docs = documents(con.execute(sql, params).fetchall())
    full = not tail and len(docs) == limit
    return Page(events=docs, next_after=docs[-1].seq if full else max(high, low), more=full)


def event_at(con: duckdb.DuckDBPyConnection, seq: int) -> EventDoc | None:
    """The event at ``seq``, or None."""
    rows = con.execute(f"SELECT {SELECT_COLUMNS} FROM events WHERE seq = ?", [seq]).fetchall()
    return documents(rows)[0] if rows else None


_codec = Codec()


def documents(rows: Sequence[tuple[Any, ...]]) -> list[EventDoc]:
    """Rows of ``SELECT_COLUMNS`` as documents (an unknown or unreadable kind keeps its JSON)."""
    out = []
    for seq, eid, kind, stream, source, occurred, recorded, version, payload, digest in rows:
        try:
            event = _codec.decode(kind, version, payload)
        except (msgspec.MsgspecError, ValueError):
            event = None
            summary = f"{kind} (its payload does not decode)"
        else:
            summary = summarize(event) if event is not None else kind
        out.append(
            EventDoc(
                seq=seq,
                id=str(eid),
                kind=kind,
                stream=stream,
                source=source,
                occurred_at=iso(occurred),
                recorded_at=iso(recorded),
                recorded_at_us=recorded,
                schema_version=version,
                hash=bytes(digest).hex(),
                summary=summary,
                payload=msgspec.Raw(payload.encode()) if event is not None else _raw_json(payload),
            )
        )
    return out


def _raw_json(payload: str) -> msgspec.Raw:
    """The stored payload as JSON to embed; a payload that is not JSON becomes a string."""
    data = payload.encode()
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError:
        return msgspec.Raw(msgspec.json.encode(payload))
    return msgspec.Raw(data)
