"""The task list's query (projections/task_query.py): filters, text search that never looks
into what the viewer may not see, sorts with nulls last, and pages that neither overlap
nor skip."""

from __future__ import annotations

from events.types import TaskSpec
from projections.task_query import SORT_KEYS, TaskQuery, select_tasks
from projections.tasks import TaskView


def task(number: int, **fields: object) -> TaskView:
    spec_fields = {k: fields.pop(k) for k in ("command", "args", "owner", "name") if k in fields}
    spec = TaskSpec(command=str(spec_fields.pop("command", "true")), batch_id="b", **spec_fields)  # type: ignore[arg-type]
    return TaskView(task_id=f"0000-{number:04d}", spec=spec, number=number, **fields)  # type: ignore[arg-type]


def numbers(tasks: list[TaskView]) -> list[int]:
    return [t.number for t in tasks]


TASKS = [
    task(
        1,
        owner="amy",
        name="train-a",
        state="completed",
        node="n1",
        submitted_at_us=10,
        started_at_us=20,
    ),
    task(
        2,
        owner="bob",
        command="secret-tool",
        state="running",
        node="n2",
        submitted_at_us=11,
        started_at_us=15,
    ),
    task(3, owner="amy", state="pending", submitted_at_us=12),
    task(
        4,
        owner="amy",
        name="Train-b",
        state="running",
        node="n1",
        submitted_at_us=13,
        started_at_us=30,
    ),
    task(
        5, owner="bob", name="eval", state="failed", node="n2", submitted_at_us=14, started_at_us=16
    ),
]


def everyone(owner: str) -> bool:
    return True


def only_amy(owner: str) -> bool:
    return owner == "amy"


def test_the_default_is_newest_first_and_total_counts_every_match() -> None:
    page = select_tasks(TASKS, TaskQuery(limit=2), everyone)
    assert numbers(page.tasks) == [5, 4]
    assert page.total == 5


def test_pages_cover_every_task_once_in_both_orders() -> None:
    for descending in (True, False):
        for sort in SORT_KEYS:
            seen: list[int] = []
            for offset in range(0, 6, 2):
                query = TaskQuery(sort=sort, descending=descending, offset=offset, limit=2)
                seen += numbers(select_tasks(TASKS, query, everyone).tasks)
            assert sorted(seen) == [1, 2, 3, 4, 5], (sort, descending, seen)


def test_filters_combine() -> None:
    query = TaskQuery(states=frozenset({"running", "failed"}), node="n2", owner="bob")
    assert numbers(select_tasks(TASKS, query, everyone).tasks) == [5, 2]
    assert numbers(select_tasks(TASKS, TaskQuery(name="train"), everyone).tasks) == [4, 1]


def test_a_sort_puts_tasks_without_the_value_last_either_way() -> None:
    up = select_tasks(TASKS, TaskQuery(sort="started", descending=False), everyone).tasks
    down = select_tasks(TASKS, TaskQuery(sort="started", descending=True), everyone).tasks
    assert numbers(up) == [2, 5, 1, 4, 3]
    assert numbers(down) == [4, 1, 5, 2, 3]
    by_node = select_tasks(TASKS, TaskQuery(sort="node", descending=False), everyone).tasks
    assert numbers(by_node) == [1, 4, 2, 5, 3]


def test_search_finds_the_command_only_where_the_viewer_may_see_it() -> None:
    assert numbers(select_tasks(TASKS, TaskQuery(text="SECRET"), everyone).tasks) == [2]
    assert select_tasks(TASKS, TaskQuery(text="secret"), only_amy).total == 0
    # What every viewer sees is searchable: the owner, the number, the state.
    assert numbers(select_tasks(TASKS, TaskQuery(text="bob"), only_amy).tasks) == [5, 2]
    assert numbers(select_tasks(TASKS, TaskQuery(text="pend"), only_amy).tasks) == [3]


def test_an_offset_past_the_end_is_an_empty_page() -> None:
    page = select_tasks(TASKS, TaskQuery(offset=10, limit=5), everyone)
    assert page.tasks == [] and page.total == 5
