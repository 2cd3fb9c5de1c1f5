"""Where the history commands read from: the running control plane, or a database file.

``ApiSource`` asks the REST API (docs/history.md) through the CLI's one HTTP client
(client.py); ``FileSource`` asks ``replay_tools.history.History`` on a file opened
read-only (the host stopped, or a copy): the very code that answers the API, with the
same checks of what was asked (``replay_tools.queries``). Both return the API's JSON
documents; the API's refusals come as ``ApiError``, the file's as ``HistoryError``,
with the same field and message. So the commands neither know nor care which they hold.
"""

from __future__ import annotations

import io
import itertools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol
from urllib.parse import quote

import msgspec
from cyclopts import Parameter, validators

from cli.hakuriver.client import ApiError, HakuClient, lines_of
from cli.hakuriver.invocation import Connection, connection, note
from control_plane.requests import InvalidRequest
from replay_tools.queries import EventQuery, HistoryError

if TYPE_CHECKING:  # DuckDB and Arrow load only for --db and exports (every command imports this)
    import pyarrow as pa

Json = dict[str, Any]
Positive = Annotated[int, Parameter(validator=validators.Number(gt=0))]
# A point may be a relative time such as -10m: a value, not an option.
PointText = Annotated[str, Parameter(allow_leading_hyphen=True)]

__all__ = [
    "ApiSource",
    "EventQuery",
    "HistorySource",
    "Json",
    "Offline",
    "PointText",
    "Positive",
    "reading",
]


class HistorySource(Protocol):
    """What the history commands need; each method returns the API's document."""

    def events(self, query: EventQuery, *, after: int, limit: int, tail: bool) -> Json: ...
    def follow(self, query: EventQuery, *, after: int) -> Iterator[Json]: ...
    def event(self, seq: int) -> Json: ...
    def task_history(self, ident: str) -> Json: ...
    def why(self, ident: str) -> Json: ...
    def state(self, at: str | None, *, all_tasks: bool) -> Json: ...
    def diff(self, a: str, b: str) -> Json: ...
    def audit(self, *, full: bool = False, watermark: Path | None = None) -> Json: ...
    def sql(self, sql: str, max_rows: int) -> Json: ...
    def report(self, name: str, *, since: str | None, by: str) -> Json: ...
    def export(self, name: str, since: str | None) -> pa.RecordBatchReader: ...
    def close(self) -> None: ...


# -- the running control plane ------------------------------------------------------------


class ApiSource(HakuClient):
    """The control plane's history routes (a query may take a while: a long time limit)."""

    def __init__(
        self,
        base_url: str,
        timeout: float = 120.0,
        *,
        token: str | None = None,
        ca_fingerprint: str | None = None,
    ) -> None:
        super().__init__(base_url, timeout, token=token, ca_fingerprint=ca_fingerprint)

    def events(self, query: EventQuery, *, after: int, limit: int, tail: bool) -> Json:
        """``GET /api/events``."""
        size = {"tail": limit} if tail else {"limit": limit}
        return self._json("GET", "/api/events", params={"after": after, **size, **query.params()})

    def follow(self, query: EventQuery, *, after: int) -> Iterator[Json]:
        """``GET /api/events/stream``, reconnecting from the last id seen when it drops."""
        position, seen, failures = after, after, 0
        while True:
            try:
                pieces = self._stream(
                    "GET",
                    "/api/events/stream",
                    query.params(),
                    headers={"Last-Event-ID": str(position)},
                )
                first = next(pieces, b"")  # answered: connected (or refused, as ApiError)
                failures = 0
                for event_id, data in sse_messages(lines_of(itertools.chain([first], pieces))):
                    if event_id is not None:
                        position = max(position, event_id)
                    if data:
                        document = json.loads(data)
                        if document["seq"] > seen:  # never twice, whatever happens
                            seen = document["seq"]
                            yield document
            except ApiError as exc:
                if exc.bad_input:
                    raise
                # Gone (Unreachable), or answering 5xx while it starts or stops: retry.
            failures += 1
            if failures == 1:
                note(f"lost the control plane's stream; resuming after seq {position}")
            time.sleep(min(0.1 * 2**failures, 5.0))  # reconnection backoff

    def event(self, seq: int) -> Json:
        """``GET /api/events/{seq}``."""
        return self._json("GET", f"/api/events/{seq}")

    def task_history(self, ident: str) -> Json:
        """``GET /api/tasks/{id}/history``."""
        return self._json("GET", f"/api/tasks/{quote(ident, safe='')}/history")

    def why(self, ident: str) -> Json:
        """``GET /api/tasks/{id}/why``."""
        return self._json("GET", f"/api/tasks/{quote(ident, safe='')}/why")

    def state(self, at: str | None, *, all_tasks: bool) -> Json:
        """``GET /api/state``."""
        params = {"tasks": "all" if all_tasks else "active"}
        return self._json(
            "GET", "/api/state", params=params | ({"at": at} if at is not None else {})
        )

    def diff(self, a: str, b: str) -> Json:
        """``GET /api/state/diff``."""
        return self._json("GET", "/api/state/diff", params={"a": a, "b": b})

    def audit(self, *, full: bool = False, watermark: Path | None = None) -> Json:
        """``GET /api/audit`` (the control plane reads every row: no watermark to skip by)."""
        return self._json("GET", "/api/audit")

    def sql(self, sql: str, max_rows: int) -> Json:
        """``POST /api/sql``."""
        return self._json("POST", "/api/sql", body={"sql": sql, "max_rows": max_rows})

    def report(self, name: str, *, since: str | None, by: str) -> Json:
        """``GET /api/reports/{name}``."""
        params = {"by": by} | ({"since": since} if since is not None else {})
        return self._json("GET", f"/api/reports/{quote(name, safe='')}", params=params)

    def export(self, name: str, since: str | None) -> pa.RecordBatchReader:
        """``GET /api/export/{name}``: an Arrow stream, read batch by batch as it arrives."""
        import pyarrow.ipc

        params = {"since": since} if since is not None else {}
        pieces = self._stream("GET", f"/api/export/{quote(name, safe='')}", params)
        first = next(pieces, b"")  # a refusal is raised here, before any file is written
        chunks = itertools.chain([first], pieces)
        return pyarrow.ipc.open_stream(io.BufferedReader(_ChunkReader(chunks)))


def sse_messages(lines: Iterator[bytes]) -> Iterator[tuple[int | None, str]]:
    """(last id, data) per server-sent message; an id-only message moves the id on."""
    event_id: int | None = None
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8").removesuffix("\r")
        if not line:
            if event_id is not None or data:
                yield event_id, "\n".join(data)
            data = []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id" and value.isdigit():
            event_id = int(value)
        elif name == "data":
            data.append(value)


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (an HTTP body as it arrives)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


# -- a database file ----------------------------------------------------------------------


def plain(value: Any) -> Json:
    """An answer as the JSON document the API would have sent, decoded."""
    document: Json = msgspec.json.decode(msgspec.json.encode(value))
    return document


def open_source(
    db: Path | None,
    base_url: str,
    token: str | None = None,
    *,
    ca_fingerprint: str | None = None,
) -> HistorySource:
    """A file source for ``--db``, else the control plane at ``base_url``."""
    if db is not None:
        from cli.hakuriver.history_file import FileSource

        return FileSource(db)
    return ApiSource(base_url, token=token, ca_fingerprint=ca_fingerprint)


@Parameter(name="*")
@dataclass(frozen=True)
class Offline:
    """Read a database file instead of the control plane."""

    db: Path | None = None
    """Read this event log file directly (the control plane must be stopped, or give a copy)."""


@contextmanager
def reading(offline: Offline | None, conn: Connection | None) -> Iterator[HistorySource]:
    """The source a command reads, closed afterwards; the file's refusals read as the API's."""
    db = offline.db if offline is not None else None
    try:
        if db is None:
            client = connection(conn).client()
            client.close()
            source = open_source(
                None, client.base_url, client.token, ca_fingerprint=client.ca_fingerprint
            )
        else:
            source = open_source(db, "")
        try:
            yield source
        finally:
            source.close()
    except HistoryError as exc:
        raise InvalidRequest(exc.field, exc.message) from None
