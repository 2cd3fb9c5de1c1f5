"""Small builders of realistic events for the tests."""

from __future__ import annotations

from events.envelope import NewEvent, Recorded, new_event
from events.ids import new_id
from events.types import NodeHeartbeat, TaskSpec, TaskStarted, TaskSubmitted


def submitted(task_id: str | None = None, *, source: str = "host") -> NewEvent:
    """A task.submitted wrapped for appending."""
    tid = task_id or new_id()
    spec = TaskSpec(command="echo", args=("hi",), batch_id="b-1", owner="alice")
    return new_event(TaskSubmitted(task_id=tid, spec=spec), source=source)


def heartbeat(node: str = "node1") -> NewEvent:
    """A node.heartbeat wrapped for appending."""
    return new_event(NodeHeartbeat(node=node, cpu_percent=12.5), source=node)


def started(task_id: str, node: str = "node1") -> NewEvent:
    """A task.started wrapped for appending."""
    return new_event(TaskStarted(task_id=task_id, node=node, pid=42), source=node)


def record_in_memory(events: list[NewEvent], start_seq: int = 1) -> list[Recorded]:
    """Give events seqs and times as the store would, without a store (for pure fold tests)."""
    return [
        Recorded(
            seq=start_seq + i,
            id=e.id,
            kind=e.kind,
            stream=e.stream,
            source=e.source,
            occurred_at_us=e.occurred_at_us,
            recorded_at_us=e.occurred_at_us,
            schema_version=e.schema_version,
            hash=b"",
            event=e.event,
        )
        for i, e in enumerate(events)
    ]
