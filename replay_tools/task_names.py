"""How people name a task, and the one rule that finds it: live in memory, offline in SQL.

A task is named by its number (canonical decimal: ``12``), its full id, or a unique
prefix of its id of at least ``MIN_PREFIX`` characters. Ids are UUIDv7, whose first 8
digits change once a minute, so a short prefix often names several tasks: then the
answer is ``AmbiguousTask``, naming some of them. A UUIDv7 starts with ``0`` and a
number never does, so one word is never both.

``find_task`` is the rule; it asks a ``TaskIndex`` two questions. The host answers
them from its folded state (``StateTasks``, on its event loop, no I/O); the history
tools from the log itself (``LogTasks``, SQL over the events).
"""

from __future__ import annotations

import itertools
from typing import Any, Protocol

from events.ids import task_number
from projections.cluster import ClusterState
from projections.sql import task_numbers_sql

MIN_PREFIX = 8
# How many candidates an ambiguous prefix reports (AmbiguousTask shows three and "...").
CANDIDATES = 4


class UnknownTask(LookupError):
    """No task has that number, that id, or an id with that prefix."""

    def __init__(self, ident: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"no task {ident!r} (give its number, its id,"
            f" or a unique prefix of {MIN_PREFIX}+ characters)"
        )
        self.ident = ident


class AmbiguousTask(UnknownTask):
    """A prefix of several task ids."""

    def __init__(self, ident: str, matches: list[str]) -> None:
        shown = ", ".join(matches[:3]) + (", ..." if len(matches) > 3 else "")
        super().__init__(
            ident, f"{ident!r} is a prefix of several tasks ({shown}): give more of the id"
        )
        self.matches = matches


class TaskIndex(Protocol):
    """The two questions ``find_task`` asks about the tasks there are."""

    def numbered(self, number: int) -> str | None:
        """The id of the task with this number, if any."""
        ...

    def ids_from(self, text: str, limit: int) -> list[str]:
        """``[text]`` if a task has that id; else up to ``limit`` ids starting with it."""
        ...


def find_task(ident: str, index: TaskIndex) -> str:
    """The id of the task ``ident`` names (``UnknownTask``, or ``AmbiguousTask``)."""
    number = task_number(ident)
    if number is not None:
        found = index.numbered(number)
        if found is not None:
            return found
    # Too short to be a prefix: only the whole id (a test's "t1") may match.
    ids = index.ids_from(ident, CANDIDATES if len(ident) >= MIN_PREFIX else 0)
    if ident in ids:
        return ident
    if not ids:
        raise UnknownTask(ident)
    if len(ids) > 1:
        raise AmbiguousTask(ident, ids)
    return ids[0]


class StateTasks:
    """The tasks of a folded ``ClusterState`` (the host's, read on its event loop)."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def numbered(self, number: int) -> str | None:
        """The id of the task with this number, if any."""
        return self.state.numbers.get(number)

    def ids_from(self, text: str, limit: int) -> list[str]:
        """``[text]`` if a task has that id; else up to ``limit`` ids starting with it."""
        if text in self.state.tasks:
            return [text]
        tasks = self.state.tasks
        return list(itertools.islice((t for t in tasks if t.startswith(text)), limit))


class SqlConnection(Protocol):
    """What ``LogTasks`` needs of a DuckDB connection (the module does not import DuckDB:
    the host's decisions use ``find_task``, and they do no I/O)."""

    def execute(self, query: str, parameters: Any = ..., /) -> Any: ...


class LogTasks:
    """The tasks submitted in a log, found with SQL over its ``events``."""

    def __init__(self, con: SqlConnection) -> None:
        self.con = con

    def numbered(self, number: int) -> str | None:
        """The id of the task with this number, if any (numbered as the fold numbers them)."""
        # Every query is read to its end (fetchall): a result left open would refuse
        # the connection's next query.
        rows = (
            self.con.execute(
                "SELECT payload->>'$.task_id' FROM events WHERE kind = 'task.submitted'"
                " AND (payload->>'$.number')::BIGINT = ? LIMIT 1",
                [number],
            ).fetchall()
            or self.con.execute(  # a log from before task numbers
                f"SELECT task_id FROM ({task_numbers_sql()}) WHERE number = ? LIMIT 1", [number]
            ).fetchall()
        )
        return str(rows[0][0]) if rows else None

    def ids_from(self, text: str, limit: int) -> list[str]:
        """``[text]`` if a task has that id; else up to ``limit`` ids starting with it."""
        # In id order an id comes before every longer id it is a prefix of.
        rows = self.con.execute(
            "SELECT DISTINCT substr(stream, 6) AS id FROM events"
            " WHERE kind = 'task.submitted' AND starts_with(stream, 'task:' || ?)"
            " ORDER BY id LIMIT ?",
            [text, max(limit, 1)],
        ).fetchall()
        ids = [str(row[0]) for row in rows]
        if ids[:1] == [text]:
            return [text]
        return ids[:limit]
