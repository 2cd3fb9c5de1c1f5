"""Every kind of event has a sentence that says what happened (replay_tools/summaries.py)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from events.types import EVENT_TYPES, Event, TaskPlaced, TaskSpec, TaskSubmitted
from replay_tools.summaries import SUMMARIES, summarize

# Fields whose value a reader of ``events tail`` must find in the summary, when the event
# has them: who or what it is about, who asked, and why (ids are in the stream column).
TOLD = ("node", "name", "image", "requested_by", "user", "reason", "address", "state")
# ... except where the line's source column shows it: a node reports its tasks' ends.
SHOWN_AS_SOURCE = {("task.finished", "node")}


def sample(kind: type[Event]) -> Event:
    """An instance of ``kind`` with every field set to a value naming the field."""
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    return msgspec.convert(
        {f.name: _value(f.name, f.type) for f in info.fields}, kind, from_attributes=True
    )


def _value(name: str, t: msgspec.inspect.Type) -> Any:
    match t:
        case msgspec.inspect.StrType():
            return f"<{name}>"
        case msgspec.inspect.IntType():
            return 3
        case msgspec.inspect.FloatType():
            return 1.5
        case msgspec.inspect.BoolType():
            return True
        case msgspec.inspect.LiteralType(values=values):
            return values[-1]
        case msgspec.inspect.UnionType(types=types):
            return _value(
                name, next(x for x in types if not isinstance(x, msgspec.inspect.NoneType))
            )
        case (
            msgspec.inspect.VarTupleType(item_type=item) | msgspec.inspect.ListType(item_type=item)
        ):
            return [_value(name, item)]
        case msgspec.inspect.DictType():
            return {}
        case msgspec.inspect.StructType(fields=fields):
            return {f.name: _value(f.name, f.type) for f in fields}
    raise AssertionError(f"no sample value for {name}: {t}")


def test_every_kind_has_its_own_summary() -> None:
    assert set(SUMMARIES) == set(EVENT_TYPES.values())


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_a_summary_says_what_happened(kind: str) -> None:
    event = sample(EVENT_TYPES[kind])
    text = summarize(event)
    assert text and text != kind
    for field in TOLD:
        value = getattr(event, field, None)
        if (kind, field) in SHOWN_AS_SOURCE:
            continue
        if isinstance(value, str):
            assert value in text, (field, text)


def test_the_issues_examples_read_as_sentences() -> None:
    placed = TaskPlaced(task_id="t", node="node-a", cores=2, gpu_ids=(0,), policy="first-fit")
    assert summarize(placed) == "placed on node-a (2 cores, GPU 0): first-fit"
    spec = TaskSpec(command="python3", args=("-c", "print(1)"), cores=1, batch_id="b")
    assert (
        summarize(TaskSubmitted(task_id="t", spec=spec))
        == "submitted by anonymous: python3 -c 'print(1)' (1 core, as a process)"
    )
