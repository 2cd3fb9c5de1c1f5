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

Where the lines are made (issue 19): an agent's batch commits up to a thousand events at
once, and a record per event made on the event loop cost more than the rest of the
batch's work there (the fold, the checks). When every handler the logger reaches takes
batches (``takes_batches``: the host's writer thread, cli/hakuriver/logs.py), the loop
hands it ONE record for the whole commit (``EventLines``), and the writer thread makes
the lines (``expand``). The loop still looks up, at the commit, the node of each task
event that does not name one (the state moves on after it). Any other handler (a test's
``caplog``, no configuration at all) gets the records made on the loop, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from events.envelope import Recorded
from events.log_lines import line_of
from events.types import EVENT_TYPES
from projections.cluster import ClusterState

log = logging.getLogger("hakuriver.host.events")

# Event types naming a task: the only ones whose line may need the state's node.
_TASK_TYPES = frozenset(t for t in EVENT_TYPES.values() if "task_id" in t.__struct_fields__)


def event_lines(state: Callable[[], ClusterState]) -> Callable[[list[Recorded]], None]:
    """A store listener logging the lines of a committed batch (``state``: the current
    state, for the node of a task event that does not name one)."""

    def listener(recorded: list[Recorded]) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        try:
            nodes = _nodes_of_unnamed(recorded, state())
        except Exception:  # a line is never worth a commit's listeners
            log.exception("could not log events %d..", recorded[0].seq)
            return
        if _batches_taken():
            # One record for the commit; the writer thread makes its lines.
            log.handle(EventLines(recorded, nodes))
            return
        for record in records_of(recorded, nodes):
            log.handle(record)

    return listener


def _nodes_of_unnamed(recorded: list[Recorded], state: ClusterState) -> dict[int, str]:
    """``seq -> node`` for each task event naming no node whose task the state places (a
    submission excepted): what its line says, as of this commit."""
    nodes: dict[int, str] = {}
    task_types = _TASK_TYPES
    for r in recorded:
        event = r.event
        if type(event) not in task_types or getattr(event, "node", None):
            continue
        if r.kind == "task.submitted":
            continue
        view = state.tasks.get(event.task_id)  # type: ignore[union-attr]
        if view is not None and view.node:
            nodes[r.seq] = view.node
    return nodes


def _batches_taken() -> bool:
    """Whether every handler a record of ``log`` reaches takes a whole batch (and one does)."""
    logger: logging.Logger | None = log
    found = False
    while logger is not None:
        for handler in logger.handlers:
            if not getattr(handler, "takes_batches", False):
                return False
            found = True
        if not logger.propagate:
            break
        logger = logger.parent
    return found


def records_of(
    recorded: list[Recorded], nodes: dict[int, str], created: float | None = None
) -> Iterator[logging.LogRecord]:
    """The records of a commit's lines (``nodes``: from ``_nodes_of_unnamed``);
    ``created``: the time they carry (the commit's), else now."""
    # One record made as ``Logger.makeRecord`` makes it (time, process, thread...), the
    # others copied from it with their own level, message and context: a record's
    # ``__init__`` was most of a line's cost, paid per event (issue 19).
    base = log.makeRecord(log.name, logging.INFO, __file__, 0, "", (), None).__dict__
    if created is not None:
        base["created"] = created
        base["msecs"] = (created - int(created)) * 1000
    for r in recorded:
        try:
            line = line_of(r.event, r.kind)
            if line is None or not log.isEnabledFor(line.level):
                continue
            fields = {
                **base,
                "msg": line.message,
                "levelno": line.level,
                "levelname": logging.getLevelName(line.level),
                **line.context,
                "seq": r.seq,
            }
            if "node" not in line.context and r.seq in nodes:
                fields["node"] = nodes[r.seq]
            record = logging.LogRecord.__new__(logging.LogRecord)
            record.__dict__ = fields
            yield record
        except Exception:  # one event's line must not cost the others theirs
            yield log.makeRecord(
                log.name,
                logging.ERROR,
                __file__,
                0,
                "could not log event %d (%s)",
                (r.seq, r.kind),
                None,
            )


class EventLines(logging.LogRecord):
    """A commit's lines, still to be made: ``expand`` makes their records (on the thread
    that writes them). Its own level is the highest, so no handler's level stops it
    before that: each line's level is checked once it is made."""

    def __init__(self, recorded: list[Recorded], nodes: dict[int, str]) -> None:
        super().__init__(
            log.name, logging.CRITICAL, __file__, 0, "%d event(s) committed", (len(recorded),), None
        )
        self.recorded = recorded
        self.nodes = nodes

    def expand(self) -> Iterator[logging.LogRecord]:
        """The records of the lines, stamped with the commit's time."""
        return records_of(self.recorded, self.nodes, self.created)
