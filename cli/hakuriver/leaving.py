"""What ``hakuriver up`` does with its tasks when it stops.

By default it leaves them running (agents never stop work, see docs/decisions.md) and
says how many, and that the next ``up`` on the same data directory re-adopts them.
With ``--stop-tasks-on-exit`` it first kills every task not ended through the API,
exactly as ``hakuriver task kill`` does, so the log records who asked
(``task.kill_requested``) and how each ended (``task.finished killed``), then waits
for the ends to be reported before the agent is stopped.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cli.hakuriver.client import ApiError, HakuClient, Unreachable
from projections.cluster import ClusterState
from projections.tasks import ENDED_STATES

KILL_REASON = "hakuriver up --stop-tasks-on-exit"
# After the kill grace period, how long the node may take to report the ends.
REPORT_MARGIN_S = 10.0


def unended(state: ClusterState) -> tuple[list[str], list[str]]:
    """Ids of the tasks placed and not ended (running, paused, ...), and of those queued."""
    placed: list[str] = []
    queued: list[str] = []
    for task in state.tasks.values():
        if task.state in ENDED_STATES:
            continue
        (queued if task.state == "pending" else placed).append(task.task_id)
    return placed, queued


def count(n: int, noun: str) -> str:
    """``1 task``, ``2 tasks``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


async def stop_tasks(
    cp: Any, url: str, *, token: str | None, ca_fingerprint: str | None = None
) -> tuple[int, list[str]]:
    """Kill every task not ended; how many were asked, and the ids still not ended."""
    placed, queued = unended(cp.state)
    # Queued first: killing a running task frees room the scheduler would fill from them.
    ids = queued + placed
    if not ids:
        return 0, []

    def kill_each() -> None:
        with HakuClient(url, timeout=30, token=token, ca_fingerprint=ca_fingerprint) as client:
            for task_id in ids:
                try:
                    client.kill(task_id, reason=KILL_REASON)
                except Unreachable:
                    raise
                except ApiError:
                    pass  # 409: it ended meanwhile, which is what we want anyway

    # On a thread: the control plane answering these runs on this very loop.
    await asyncio.to_thread(kill_each)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cp.settings.timing.kill_grace_period + REPORT_MARGIN_S

    def left() -> list[str]:
        return [i for i in ids if cp.state.tasks[i].state not in ENDED_STATES]

    while (remaining := left()) and loop.time() < deadline:
        await cp.changed(min(0.5, deadline - loop.time()))
    return len(ids), remaining


def farewell(
    state: ClusterState, *, node: str, data: str, asked: int | None, timeout_s: float
) -> list[str]:
    """What ``up`` says as it stops (``asked``: how many --stop-tasks-on-exit killed)."""
    placed, queued = unended(state)
    lines: list[str] = []
    if asked:
        left = len(placed) + len(queued)
        lines.append(f"stopped {count(asked - left, 'task')} (--stop-tasks-on-exit)")
        if left:
            lines.append(
                f"{count(left, 'task')} did not end within {timeout_s:.0f}s and"
                f" {'is' if left == 1 else 'are'} left on {node}"
            )
        return lines
    if placed:
        lines.append(
            f"{count(len(placed), 'task')} left running on {node}, unwatched until the next"
            f" `hakuriver up` with data in {data} re-adopts"
            f" {'it' if len(placed) == 1 else 'them'}"
            " (`hakuriver up --stop-tasks-on-exit` kills tasks on exit instead)"
        )
    if queued:
        lines.append(
            f"{count(len(queued), 'queued task')} will start after the next `hakuriver up`"
        )
    return lines or ["no tasks were running"]
