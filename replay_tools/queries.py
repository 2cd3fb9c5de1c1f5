"""History questions as people write them, checked once for the API and the ``--db`` mode.

The host's routes read query parameters, the CLI reads its options; both turn the text
into the queries here, so a point (``1200``, ``2026-11-21T10:00Z``, ``-10m``), a kind
filter (``task.*``), a report's name or a row limit means the same and is refused the
same way live and offline: ``HistoryError``, naming the field. The answers are
``replay_tools.history.History``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from events.envelope import now_us
from replay_tools.export import export_queries
from replay_tools.feed import MAX_PAGE, EventFilter, check_kinds
from replay_tools.points import Point, parse_point
from replay_tools.reports import REPORTS

MAX_SQL_ROWS = 100_000
Grouping = Literal["node", "owner"]


class HistoryError(Exception):
    """A history question that cannot be answered as asked: the field, and what was wrong.

    ``kind`` is ``invalid`` (bad input) or ``not_found`` (it names nothing there is).
    """

    def __init__(
        self, field: str, message: str, kind: Literal["invalid", "not_found"] = "invalid"
    ) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.kind = kind


# -- points of history ------------------------------------------------------------------


def point_of(field: str, text: str | None) -> Point | None:
    """A seq or a time (``1200``, ISO 8601, ``now``, ``-10m``); None when not given."""
    if text is None or text == "":
        return None
    try:
        return parse_point(text, now_us=now_us())
    except ValueError as exc:
        raise HistoryError(field, str(exc)) from None


def time_of(field: str, text: str | None) -> int | None:
    """A time as Unix microseconds (a seq is refused: reports and exports go by time)."""
    point = point_of(field, text)
    if point is not None and point.seq is not None:
        raise HistoryError(field, f"give a time (ISO 8601 or -10m), not a seq ({point.seq})")
    return point.at_us if point is not None else None


def diff_points(a: str | None, b: str | None) -> tuple[Point, Point | None]:
    """The two points of a diff; ``b`` None means the end of the log."""
    first = point_of("a", a)
    if first is None:
        raise HistoryError("a", "give the first point: a seq or a time")
    return first, point_of("b", b)


# -- the feed ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EventQuery:
    """Which events to list or follow, as written (``GET /api/events``'s parameters)."""

    kinds: tuple[str, ...] = ()  # kinds or families (task.*), each maybe a comma list
    exclude: tuple[str, ...] = ()
    task: str | None = None  # a task's number, id or id prefix
    node: str | None = None
    source: str | None = None
    actor: str | None = None  # a user: the events their requests caused
    since: str | None = None  # points
    until: str | None = None

    def params(self) -> dict[str, str | list[str]]:
        """As the API's query parameters."""
        out: dict[str, str | list[str]] = {}
        if self.kinds:
            out["kind"] = list(self.kinds)
        if self.exclude:
            out["exclude"] = list(self.exclude)
        for key in ("task", "node", "source", "actor", "since", "until"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


class Names(Protocol):
    """Where a filter looks up the task and the node it names (memory live, SQL offline)."""

    def task_id(self, ident: str, field: str) -> str:
        """The id of the task ``ident`` names (an error naming ``field`` if none)."""
        ...

    def has_node(self, name: str) -> bool:
        """Whether a node of that name ever registered."""
        ...


def event_filter(query: EventQuery, names: Names) -> EventFilter:
    """The filter a query asks for, its task resolved and its node checked."""
    kinds = _kinds("kind", query.kinds)
    exclude = _kinds("exclude", query.exclude)
    if query.node is not None and not names.has_node(query.node):
        raise HistoryError("node", f"no node {query.node!r}", "not_found")
    since, until = point_of("since", query.since), point_of("until", query.until)
    return EventFilter(
        kinds=kinds,
        exclude=exclude,
        task_id=names.task_id(query.task, "task") if query.task is not None else None,
        node=query.node,
        source=query.source,
        actor=query.actor,
        since_seq=since.seq if since else None,
        since_us=since.at_us if since else None,
        until_seq=until.seq if until else None,
        until_us=until.at_us if until else None,
    )


def _kinds(field: str, words: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return check_kinds(words)
    except ValueError as exc:
        raise HistoryError(field, str(exc)) from None


def page_size(limit: int, *, tail: bool) -> int:
    """A page's size, at most ``MAX_PAGE`` (the field is ``tail`` or ``limit``)."""
    if limit > MAX_PAGE:
        raise HistoryError("tail" if tail else "limit", f"at most {MAX_PAGE}, got {limit}")
    return limit


# -- SQL, reports, exports --------------------------------------------------------------


@dataclass(frozen=True)
class SqlQuery:
    """One read-only statement and how many rows to answer at most."""

    text: str
    max_rows: int


def sql_query(text: object, max_rows: object) -> SqlQuery:
    """A statement and a row limit from what was sent (a JSON body's values)."""
    if not isinstance(text, str) or not text.strip():
        raise HistoryError("sql", "give one SELECT statement as a string")
    if (
        isinstance(max_rows, bool)
        or not isinstance(max_rows, int)
        or not 1 <= max_rows <= MAX_SQL_ROWS
    ):
        raise HistoryError("max_rows", f"must be an integer from 1 to {MAX_SQL_ROWS}")
    return SqlQuery(text, max_rows)


@dataclass(frozen=True)
class ReportQuery:
    """A canned report, grouped by node or owner, over tasks from ``since_us`` on."""

    name: str
    by: Grouping
    since_us: int | None
    owner: str | None = None  # only this owner's tasks


def report_query(
    name: str, by: str | None, since: str | None, owner: str | None = None
) -> ReportQuery:
    """A report by name (``REPORTS``), ``by`` node (the default) or owner, ``since`` a time."""
    if name not in REPORTS:
        raise HistoryError("name", f"no report {name!r}; one of {', '.join(REPORTS)}", "not_found")
    if by is None:
        by = "node"
    if by not in ("node", "owner"):
        raise HistoryError("by", f"must be node or owner, got {by!r}")
    return ReportQuery(name, "node" if by == "node" else "owner", time_of("since", since), owner)


@dataclass(frozen=True)
class ExportQuery:
    """One exported file's rows (``events`` or a view) from ``since_us`` on."""

    name: str
    since_us: int | None


def export_query(name: str, since: str | None) -> ExportQuery:
    """An export by name (``export_queries``), ``since`` a time."""
    names = export_queries()
    if name not in names:
        raise HistoryError("name", f"no export {name!r}; one of {', '.join(names)}", "not_found")
    return ExportQuery(name, time_of("since", since))
