"""Liveness: which nodes missed their heartbeat deadline, and what that means.

Pure functions over the state; ``ControlPlane`` runs them on a timer. The clock
is the host's monotonic clock at the moment each agent message arrived (not the
agents' clocks, which may disagree with the host's).
"""

from __future__ import annotations

from events.types import AnyEvent, NodeOffline, TaskLost
from projections.cluster import ClusterState


def overdue(
    state: ClusterState,
    seen: dict[str, float],
    now: float,
    timeout: float,
    *,
    default_seen: float,
) -> list[str]:
    """Online nodes not heard from for more than ``timeout`` seconds.

    A node never heard from by this process (the host restarted) counts from
    ``default_seen``, the host's start, so its agent has a full timeout to reconnect.
    """
    return [
        name
        for name, node in state.nodes.items()
        if node.online and now - seen.get(name, default_seen) > timeout
    ]


def decide_offline(state: ClusterState, node: str, reason: str) -> list[AnyEvent]:
    """``node.offline`` for ``node`` and ``task.lost`` for every task it held."""
    view = state.nodes.get(node)
    if view is None or not view.online:
        return []
    events: list[AnyEvent] = [NodeOffline(node=node, reason=reason, last_seen_us=view.last_seen_us)]
    for task_id in list(view.task_ids):
        task = state.tasks.get(task_id)
        if task is not None and task.holds_resources:
            events.append(TaskLost(task_id=task_id, node=node, reason=f"node {node} offline"))
    return events
