"""Filter, search, sort and page the task views (``GET /api/tasks``, the dashboard's list).

A pure function over the state's tasks, so that a page of a 100k-task list costs one pass
over the views and a sort of the matches, and only the page's documents are built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from projections.durations import durations
from projections.tasks import TaskView

# The keys a list may be sorted by: each maps a task to a comparable value or None (None
# sorts last whatever the order, as "not yet" rather than "smallest").
SORT_KEYS: dict[str, Callable[[TaskView], Any]] = {
    "number": lambda t: t.number,
    "submitted": lambda t: t.submitted_at_us or None,
    "placed": lambda t: t.placed_at_us,
    "started": lambda t: t.started_at_us,
    "finished": lambda t: t.finished_at_us,
    "state": lambda t: t.state,
    "node": lambda t: t.node,
    "owner": lambda t: t.spec.owner,
    "name": lambda t: (t.spec.name or "").lower() or None,
    "cores": lambda t: t.cores if t.node else t.spec.cores,
    "run_time": lambda t: durations(t).run_time_s,
}


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """What a list asks for; every field optional (empty: no filter)."""

    states: frozenset[str] = frozenset()
    node: str | None = None
    batch: str | None = None
    owner: str | None = None
    # Case-insensitive substrings: ``name`` of the task's name, ``text`` of its name,
    # number, id, owner, node, state, and (where the viewer may see them) command and args.
    name: str | None = None
    text: str | None = None
    # Only tasks numbered this or below: a walk through the pages that passes the first
    # page's ``upto`` back sees no task submitted after it began (no row twice, none
    # shifted in); None: every task.
    upto: int | None = None
    sort: str = "number"
    descending: bool = True
    offset: int = 0
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of a list: its tasks, and how many matched in all."""

    tasks: list[TaskView]
    total: int


def select_tasks(
    tasks: Iterable[TaskView], query: TaskQuery, may_see: Callable[[str], bool]
) -> TaskPage:
    """The page of ``tasks`` (in submission order) that ``query`` asks for; ``may_see(owner)``
    says whether the viewer may search a task's command (a redacted one is never matched
    on what the viewer cannot see)."""
    name = query.name.lower() if query.name else None
    text = query.text.lower() if query.text else None
    found: list[TaskView] = [
        t
        for t in tasks
        if (query.upto is None or t.number <= query.upto)
        and (not query.states or t.state in query.states)
        and (query.node is None or t.node == query.node)
        and (query.batch is None or t.spec.batch_id == query.batch)
        and (query.owner is None or t.spec.owner == query.owner)
        and (name is None or name in (t.spec.name or "").lower())
        and (text is None or _mentions(t, text, may_see))
    ]
    total = len(found)
    end = query.offset + query.limit
    if query.sort == "number":
        # Submission order is the state's order: no sort, only a slice from the right end.
        if query.descending:
            start = max(total - end, 0)
            stop = max(total - query.offset, 0)
            return TaskPage(found[start:stop][::-1], total)
        return TaskPage(found[query.offset : end], total)
    return TaskPage(_sorted(found, query.sort, query.descending)[query.offset : end], total)


def _sorted(found: list[TaskView], sort: str, descending: bool) -> list[TaskView]:
    key = SORT_KEYS[sort]
    keyed = [(key(t), t.number, t) for t in found]
    known = [k for k in keyed if k[0] is not None]
    unknown = [k for k in keyed if k[0] is None]
    # Ties break by number in the same direction, so that pages never overlap.
    known.sort(key=lambda k: (k[0], k[1]), reverse=descending)
    unknown.sort(key=lambda k: k[1], reverse=descending)
    return [k[2] for k in known] + [k[2] for k in unknown]


def _mentions(task: TaskView, text: str, may_see: Callable[[str], bool]) -> bool:
    spec = task.spec
    fields = [
        str(task.number),
        task.task_id,
        spec.name or "",
        spec.owner,
        task.node or "",
        task.state,
    ]
    if may_see(spec.owner):
        fields.append(spec.command)
        fields.extend(spec.args)
    return any(text in field.lower() for field in fields)
