"""Where the history commands read from: the running control plane, or a database file.

``ApiSource`` asks the REST API (docs/history.md); ``FileSource`` runs the same
``replay_tools`` functions on a file opened read-only (the host stopped, or a copy).
Both return the API's JSON documents, and both fail with ``ApiError`` (a file source
makes the error the API would have made), so the commands neither know nor care
which one they hold.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import duckdb
import httpx
import msgspec
import pyarrow as pa

from cli.hakuriver.client import ApiError, Unreachable
from cli.hakuriver.invocation import note
from control_plane.history import state_document
from events.envelope import now_us
from replay_tools.analytics import (
    SqlRefused,
    open_analytics,
    report_table,
    run_readonly_sql,
    table_document,
)
from replay_tools.audit import audit
from replay_tools.export import export_reader
from replay_tools.feed import MAX_PAGE, EventFilter, check_kinds, event_at, events_page
from replay_tools.logfile import LogFile
from replay_tools.points import Point, iso, parse_point
from replay_tools.replay import diff_between, state_at
from replay_tools.task_names import AmbiguousTask, LogTasks, UnknownTask, find_task
from replay_tools.timeline import task_history, why

Json = dict[str, Any]


@dataclass(frozen=True)
class EventQuery:
    """The filters of ``events tail`` (the API's query parameters)."""

    kinds: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    task: str | None = None
    node: str | None = None
    source: str | None = None
    since: str | None = None

    def params(self) -> dict[str, str | list[str]]:
        """As query parameters."""
        out: dict[str, str | list[str]] = {}
        if self.kinds:
            out["kind"] = list(self.kinds)
        if self.exclude:
            out["exclude"] = list(self.exclude)
        for key in ("task", "node", "source", "since"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


class HistorySource(Protocol):
    """What the history commands need; each method returns the API's document."""

    def events(self, query: EventQuery, *, after: int, limit: int, tail: bool) -> Json: ...
    def follow(self, query: EventQuery, *, after: int) -> Iterator[Json]: ...
    def event(self, seq: int) -> Json: ...
    def task_history(self, ident: str) -> Json: ...
    def why(self, ident: str) -> Json: ...
    def state(self, at: str | None, *, all_tasks: bool) -> Json: ...
    def diff(self, a: str, b: str) -> Json: ...
    def audit(self) -> Json: ...
    def sql(self, sql: str, max_rows: int) -> Json: ...
    def report(self, name: str, *, since: str | None, by: str) -> Json: ...
    def export(self, name: str, since: str | None) -> pa.RecordBatchReader: ...
    def close(self) -> None: ...


def _builtins(value: Any) -> Json:
    """A msgspec value as the plain JSON the API would have sent."""
    document: Json = json.loads(msgspec.json.encode(value))
    return document


# -- the running control plane ------------------------------------------------------------


class ApiSource:
    """The control plane's history routes."""

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _get(self, path: str, **params: Any) -> Json:
        wanted = {k: v for k, v in params.items() if v is not None}
        return self._json(self._send("GET", path, params=wanted))

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(self.base_url, str(exc) or type(exc).__name__) from None
        if response.is_error:
            raise error_of(response)
        return response

    @staticmethod
    def _json(response: httpx.Response) -> Json:
        document = response.json()
        if not isinstance(document, dict):
            raise ApiError(response.status_code, "bad_answer", None, "expected a JSON object")
        return document

    def events(self, query: EventQuery, *, after: int, limit: int, tail: bool) -> Json:
        """``GET /api/events``."""
        size = {"tail": limit} if tail else {"limit": limit}
        return self._get("/api/events", after=after, **size, **query.params())

    def follow(self, query: EventQuery, *, after: int) -> Iterator[Json]:
        """``GET /api/events/stream``, reconnecting from the last id seen when it drops."""
        position, seen, failures = after, after, 0
        while True:
            try:
                with self._http.stream(
                    "GET",
                    "/api/events/stream",
                    params=query.params(),
                    headers={"Last-Event-ID": str(position)},
                    timeout=httpx.Timeout(10.0, read=None),
                ) as response:
                    if response.is_error:
                        response.read()
                        error = error_of(response)
                        if error.bad_input:
                            raise error
                    else:
                        failures = 0
                        for event_id, data in sse_messages(response.iter_lines()):
                            if event_id is not None:
                                position = max(position, event_id)
                            if data:
                                document = json.loads(data)
                                if document["seq"] > seen:  # never twice, whatever happens
                                    seen = document["seq"]
                                    yield document
            except httpx.TransportError:
                pass
            failures += 1
            if failures == 1:
                note(f"lost the control plane's stream; resuming after seq {position}")
            time.sleep(min(0.1 * 2**failures, 5.0))  # reconnection backoff

    def event(self, seq: int) -> Json:
        """``GET /api/events/{seq}``."""
        return self._get(f"/api/events/{seq}")

    def task_history(self, ident: str) -> Json:
        """``GET /api/tasks/{id}/history``."""
        return self._get(f"/api/tasks/{quote(ident, safe='')}/history")

    def why(self, ident: str) -> Json:
        """``GET /api/tasks/{id}/why``."""
        return self._get(f"/api/tasks/{quote(ident, safe='')}/why")

    def state(self, at: str | None, *, all_tasks: bool) -> Json:
        """``GET /api/state``."""
        return self._get("/api/state", at=at, tasks="all" if all_tasks else "active")

    def diff(self, a: str, b: str) -> Json:
        """``GET /api/state/diff``."""
        return self._get("/api/state/diff", a=a, b=b)

    def audit(self) -> Json:
        """``GET /api/audit``."""
        return self._get("/api/audit")

    def sql(self, sql: str, max_rows: int) -> Json:
        """``POST /api/sql``."""
        return self._json(self._send("POST", "/api/sql", json={"sql": sql, "max_rows": max_rows}))

    def report(self, name: str, *, since: str | None, by: str) -> Json:
        """``GET /api/reports/{name}``."""
        return self._get(f"/api/reports/{quote(name, safe='')}", since=since, by=by)

    def export(self, name: str, since: str | None) -> pa.RecordBatchReader:
        """``GET /api/export/{name}``: an Arrow stream, read batch by batch as it arrives."""
        params = {"since": since} if since is not None else {}
        request = self._http.build_request(
            "GET", f"/api/export/{name}", params=params, timeout=httpx.Timeout(10.0, read=None)
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise Unreachable(self.base_url, str(exc)) from None
        if response.is_error:
            response.read()
            raise error_of(response)
        return pa.ipc.open_stream(io.BufferedReader(_ChunkReader(response.iter_raw())))


def sse_messages(lines: Iterator[str]) -> Iterator[tuple[int | None, str]]:
    """(last id, data) per server-sent message; an id-only message moves the id on."""
    event_id: int | None = None
    data: list[str] = []
    for line in lines:
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


def error_of(response: httpx.Response) -> ApiError:
    """The ``ApiError`` an error answer describes."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "message" in body:
        kind = str(body.get("error", "error"))
        return ApiError(response.status_code, kind, body.get("field"), str(body["message"]))
    text = response.text.strip()[:200] or response.reason_phrase
    return ApiError(
        response.status_code, "http_error", None, f"HTTP {response.status_code}: {text}"
    )


# -- a database file ----------------------------------------------------------------------


def bad(field_name: str, message: str, status: int = 400) -> ApiError:
    """The error the API would answer for bad input."""
    kinds = {400: "invalid_request", 404: "not_found", 409: "conflict"}
    return ApiError(status, kinds.get(status, "invalid_request"), field_name, message)


class FileSource:
    """The same documents, computed here from a database file opened read-only."""

    def __init__(self, db: Path) -> None:
        self.db = db.expanduser()
        if not self.db.is_file():
            raise bad("db", f"no event log at {self.db}")
        self._analytics: list[duckdb.DuckDBPyConnection] = []
        try:
            self.log = LogFile(self.db)
        except duckdb.IOException as exc:
            raise bad(
                "db",
                f"cannot open {self.db}: {exc}. A running control plane holds its file:"
                " drop --db to ask it, or give a copy of the file",
                409,
            ) from None

    def close(self) -> None:
        """Close the file."""
        for con in self._analytics:
            con.close()
        self.log.close()

    def _point(self, field_name: str, text: str) -> Point:
        try:
            return parse_point(text, now_us=now_us())
        except ValueError as exc:
            raise bad(field_name, str(exc)) from None

    def _task(self, ident: str, field_name: str = "task_id") -> str:
        try:
            return find_task(ident, LogTasks(self.log.con))
        except AmbiguousTask as exc:
            raise bad(field_name, str(exc), 400) from None
        except UnknownTask as exc:
            raise bad(field_name, str(exc), 404) from None

    def _filter(self, query: EventQuery) -> EventFilter:
        try:
            kinds = check_kinds(query.kinds)
            exclude = check_kinds(query.exclude)
        except ValueError as exc:
            raise bad("kind", str(exc)) from None
        if (
            query.node is not None
            and not self.log.con.execute(
                "SELECT 1 FROM events WHERE stream = ? LIMIT 1", [f"node:{query.node}"]
            ).fetchall()
        ):
            raise bad("node", f"no node {query.node!r}", 404)
        since = self._point("since", query.since) if query.since is not None else None
        return EventFilter(
            kinds=kinds,
            exclude=exclude,
            task_id=self._task(query.task, "task") if query.task is not None else None,
            node=query.node,
            source=query.source,
            since_seq=since.seq if since else None,
            since_us=since.at_us if since else None,
        )

    def events(self, query: EventQuery, *, after: int, limit: int, tail: bool) -> Json:
        """As ``GET /api/events``."""
        if limit > MAX_PAGE:
            raise bad("tail" if tail else "limit", f"at most {MAX_PAGE}, got {limit}")
        upto = self.log.last_seq
        page = events_page(
            self.log.con, self._filter(query), after=after, upto=upto, limit=limit, tail=tail
        )
        return {**_builtins(page), "last_seq": upto}

    def follow(self, query: EventQuery, *, after: int) -> Iterator[Json]:
        """Following needs a running control plane."""
        raise bad("follow", "--follow needs the running control plane: drop --db")

    def event(self, seq: int) -> Json:
        """As ``GET /api/events/{seq}``."""
        found = event_at(self.log.con, seq)
        if found is None:
            raise bad("seq", f"no event at seq {seq} (the log ends at {self.log.last_seq})", 404)
        return _builtins(found)

    def task_history(self, ident: str) -> Json:
        """As ``GET /api/tasks/{id}/history``."""
        return task_history(self.log, self._task(ident))

    def why(self, ident: str) -> Json:
        """As ``GET /api/tasks/{id}/why``."""
        return _builtins(why(self.log, self._task(ident)))

    def state(self, at: str | None, *, all_tasks: bool) -> Json:
        """As ``GET /api/state``."""
        point = self._point("at", at) if at is not None else Point()
        state = state_at(self.log, seq=point.seq, at_us=point.at_us, ended=all_tasks)
        return _builtins(state_document(state, ended=all_tasks))

    def diff(self, a: str, b: str) -> Json:
        """As ``GET /api/state/diff``."""
        return diff_between(self.log, self._point("a", a), self._point("b", b)).to_dict()

    def audit(self) -> Json:
        """As ``GET /api/audit``."""
        return audit(self.log.con).to_dict()

    def sql(self, sql: str, max_rows: int) -> Json:
        """As ``POST /api/sql``."""
        try:
            result = run_readonly_sql(self.db, sql, max_rows=max_rows)
        except SqlRefused as exc:
            raise bad("sql", str(exc)) from None
        except duckdb.Error as exc:
            raise bad("sql", f"the statement failed: {exc}") from None
        return table_document(
            result.columns, result.rows, row_count=len(result.rows), truncated=result.truncated
        )

    def report(self, name: str, *, since: str | None, by: str) -> Json:
        """As ``GET /api/reports/{name}``."""
        since_us = self._time("since", since)
        con = open_analytics(self.db)
        try:
            columns, rows = report_table(con, name, since_us=since_us, by=by)  # type: ignore[arg-type]
        except ValueError as exc:
            raise bad("name", str(exc), 404) from None
        finally:
            con.close()
        return table_document(columns, rows, report=name, by=by, since=iso(since_us))

    def _time(self, field_name: str, text: str | None) -> int | None:
        if text is None:
            return None
        point = self._point(field_name, text)
        if point.seq is not None:
            raise bad(field_name, f"give a time (ISO 8601 or -10m), not a seq ({point.seq})")
        return point.at_us

    def export(self, name: str, since: str | None) -> pa.RecordBatchReader:
        """The export's batches, read from the file."""
        since_us = self._time("since", since)
        con = open_analytics(self.db)
        self._analytics.append(con)  # the reader needs it open; closed with the source
        return export_reader(con, name, since_us=since_us)


def open_source(db: Path | None, base_url: str) -> HistorySource:
    """A file source for ``--db``, else the control plane at ``base_url``."""
    if db is not None:
        return FileSource(db)
    return ApiSource(base_url)
