"""The host's log line per event of interest, said once each is committed.

Every change the host makes or hears of passes through one place: the event log's
commit. A store listener (after the state's, so the state already includes the batch)
logs each committed event that ``events.log_lines`` finds of interest, on the logger
``hakuriver.host.events``, with the task, node and job it concerns as the record's
context (``extra``): the CLI's formatters put them on the line (cli/hakuriver/logs.py).
No route or loop has to remember to log what it recorded, and a replay logs nothing
(the listener sees live commits only).

A task event that does not name its node (a kill request, a pause) gets the node the
state has for the task (a submission none: where it goes is the placement's line).
Each line also carries the event's ``seq``: where to look in the event log
(``hakuriver events``) for the whole of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from events.envelope import Recorded
from events.log_lines import line_of
from projections.cluster import ClusterState

log = logging.getLogger("hakuriver.host.events")


def event_lines(state: Callable[[], ClusterState]) -> Callable[[list[Recorded]], None]:
    """A store listener logging the lines of a committed batch (``state``: the current
    state, for the node of a task event that does not name one)."""

    def listener(recorded: list[Recorded]) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        for r in recorded:
            try:
                line = line_of(r.event, r.kind)
                if line is None or not log.isEnabledFor(line.level):
                    continue
                context: dict[str, str | int] = {**line.context, "seq": r.seq}
                task = line.context.get("task")
                if task is not None and "node" not in context and r.kind != "task.submitted":
                    view = state().tasks.get(task)
                    if view is not None and view.node:
                        context["node"] = view.node
                # A record made directly, without ``Logger.log``'s walk up the stack for
                # the caller (always this line): half the cost of a line, paid per event on
                # the loop at every commit (an agent's batch of 1000 ends, issue 19).
                log.handle(
                    log.makeRecord(
                        log.name, line.level, __file__, 0, line.message, (), None, extra=context
                    )
                )
            except Exception:  # a line is never worth a commit's listeners
                log.exception("could not log event %d (%s)", r.seq, r.kind)

    return listener
