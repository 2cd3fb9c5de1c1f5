"""Liveness: which nodes missed their heartbeat deadline, and what that means for their tasks.

Pure functions over the state; ``ControlPlane`` runs them on a timer. Silence is
measured on the host's monotonic clock at the moment each agent message arrived
(not the agents' clocks, which may disagree with the host's); how long a task has
been unknown, on the store's clock, which survives host restarts.
"""

from __future__ import annotations

from events.types import AnyEvent, NodeOffline, TaskLost, TaskUnreachable
from projections.cluster import ClusterState

# The states a task can be in when its node goes silent (those that hold resources).
REACHABLE_STATES = frozenset({"assigning", "running", "paused"})


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
    """``node.offline`` for ``node``, and ``task.unreachable`` for each task it held.

    The tasks are not given up: the node may still run them (a restarted agent, a
    network cut). They stay ``unknown``, holding their resources on the node, until
    the node comes back or ``lost_after`` passes (``decide_give_up``).
    """
    view = state.nodes.get(node)
    if view is None or not view.online:
        return []
    events: list[AnyEvent] = [NodeOffline(node=node, reason=reason, last_seen_us=view.last_seen_us)]
    for task_id in list(view.task_ids):
        task = state.tasks.get(task_id)
        if task is not None and task.state in REACHABLE_STATES:
            events.append(
                TaskUnreachable(
                    task_id=task_id,
                    node=node,
                    was=task.state,  # type: ignore[arg-type]
                    reason=f"node {node} offline: {reason}",
                )
            )
    return events


def decide_give_up(
    state: ClusterState, now_us: int, lost_after_s: float, *, not_before_us: int = 0
) -> list[AnyEvent]:
    """``task.lost`` for every task unknown for longer than ``lost_after_s``.

    Times are the store's clock (``recorded_at``); unknown time counts from
    ``not_before_us`` at the earliest (when this host started listening).
    """
    events: list[AnyEvent] = []
    limit_us = int(lost_after_s * 1_000_000)
    for node in state.nodes.values():
        if node.online:
            continue
        for task_id in node.task_ids:
            task = state.tasks.get(task_id)
            if task is None or task.state != "unknown" or task.unknown_since_us is None:
                continue
            if now_us - max(task.unknown_since_us, not_before_us) > limit_us:
                events.append(
                    TaskLost(
                        task_id=task_id,
                        node=node.name,
                        reason=(
                            f"node {node.name} unreachable for longer than lost_after"
                            f" ({_duration(lost_after_s)}); given up"
                        ),
                    )
                )
    return events


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"
