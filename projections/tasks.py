"""TaskView and the task state machine.

States: ``pending -> assigning -> running <-> paused -> completed | failed |
killed | killed_oom``; any non-final state may become ``lost`` when its node
goes offline.

``TRANSITIONS`` is the whole machine: for each (state, event kind) it names
the state the task moves to. A pair that is not in the table is *illegal*.
The fold never raises on an illegal pair, because the log is history and the
event is already recorded: it leaves the task unchanged and reports an
``Anomaly`` that ``hakuriver audit`` surfaces.

A node that goes silent (no heartbeat past the timeout) does not kill its tasks:
state: each non-final task on it becomes ``unknown`` (``task.unreachable``, which
remembers the state it had) and keeps its resources on the node. When the node
comes back:

* with the task (running, or its final report waiting in the node's outbox), the
  task returns to the state it had (``task.reconnected``), and whatever the node
  did meanwhile follows as ordinary reports (``task.started``, ``task.finished``...);
* without any trace of it, the task is ``lost``.

An ``unknown`` task may also end by a ``task.finished`` (a final report that got
through), become ``lost`` when ``[timing] lost_after`` passes, or be killed by a user
(recorded as a kill request and ``lost``; the node is told to kill it if it returns).

Late reports from a node that comes back after its tasks were declared lost:

* ``task.finished`` on a ``lost`` task is legal. The node knows how the task
  really ended, so the task takes the reported final state and exit code.
  Its resources were already released when it was lost.
* ``task.started`` / ``task.paused`` / ``task.resumed`` on a ``lost`` task are
  illegal (the task stays ``lost``; the control plane tells the node to stop
  such a task, because the scheduler may have reused its resources).
* Anything after a final state is illegal and ignored: a final state is final.

``task.kill_requested`` is legal in every non-final state and changes no
state by itself: the task becomes ``killed`` when the node reports it, or at
once (``task.finished``) while it was still ``pending``. Likewise
``task.pause_requested`` / ``task.resume_requested`` (legal while ``running`` or
``paused``) change nothing until the node reports ``task.paused`` / ``task.resumed``.
"""

from __future__ import annotations

from typing import Literal, get_args

from msgspec import Struct

from events.types import TaskSpec

TaskState = Literal[
    "pending",
    "assigning",
    "running",
    "paused",
    "completed",
    "failed",
    "killed",
    "killed_oom",
    "lost",
    "unknown",
]

STATES: tuple[str, ...] = get_args(TaskState)
FINAL_STATES: frozenset[str] = frozenset({"completed", "failed", "killed", "killed_oom"})
# States after which nothing more happens unless a node reports late (lost -> final).
ENDED_STATES: frozenset[str] = FINAL_STATES | {"lost"}
# States that hold resources on a node (an unknown task may still be using them).
HOLDING_STATES: frozenset[str] = frozenset({"assigning", "running", "paused", "unknown"})
ACTIVE_STATES: frozenset[str] = frozenset({"pending", "assigning", "running", "paused", "unknown"})

_FINISHED = "task.finished"  # target state comes from the event's ``state`` field
FROM_EVENT = "<from event>"

TRANSITIONS: dict[tuple[str, str], str] = {
    ("pending", "task.placed"): "assigning",
    ("pending", "task.kill_requested"): "pending",
    ("pending", _FINISHED): FROM_EVENT,  # killed before placement
    ("pending", "task.lost"): "lost",
    ("assigning", "task.dispatched"): "assigning",
    ("assigning", "task.started"): "running",
    ("assigning", "task.kill_requested"): "assigning",
    ("assigning", _FINISHED): FROM_EVENT,  # failed to start, or killed before start
    ("assigning", "task.lost"): "lost",
    ("running", "task.paused"): "paused",
    ("running", "task.pause_requested"): "running",
    ("running", "task.resume_requested"): "running",
    ("paused", "task.pause_requested"): "paused",
    ("paused", "task.resume_requested"): "paused",
    ("running", "task.kill_requested"): "running",
    ("running", _FINISHED): FROM_EVENT,
    ("running", "task.lost"): "lost",
    ("paused", "task.resumed"): "running",
    ("paused", "task.kill_requested"): "paused",
    ("paused", _FINISHED): FROM_EVENT,
    ("paused", "task.lost"): "lost",
    ("assigning", "task.unreachable"): "unknown",
    ("running", "task.unreachable"): "unknown",
    ("paused", "task.unreachable"): "unknown",
    ("unknown", "task.reconnected"): FROM_EVENT,  # back to the state it had
    ("unknown", "task.kill_requested"): "unknown",
    ("unknown", _FINISHED): FROM_EVENT,  # its final report got through
    ("unknown", "task.lost"): "lost",
    ("lost", _FINISHED): FROM_EVENT,  # a late but true report from the node
    # A VPS's readiness (and its port again after a runner restart): no state change.
    ("running", "vps.ready"): "running",
    ("paused", "vps.ready"): "paused",
    ("unknown", "vps.ready"): "unknown",
    # A job's rank finished its setup and waits for the run phase: no state change.
    ("running", "job.setup_done"): "running",
    ("paused", "job.setup_done"): "paused",
    ("unknown", "job.setup_done"): "unknown",
    # ... reported late by a node that comes back after its rank was given up.
    ("lost", "job.setup_done"): "lost",
}


def next_state(state: str, kind: str, reported: str | None = None) -> str | None:
    """The state after ``kind`` in ``state``; None if the transition is illegal."""
    target = TRANSITIONS.get((state, kind))
    if target == FROM_EVENT:
        return reported
    return target


class TaskView(Struct, kw_only=True, gc=False):
    """A task as users see it: its spec, where it runs, how far it got."""

    task_id: str
    spec: TaskSpec
    number: int = 0  # the cluster-wide task number (see TaskSubmitted)
    state: str = "pending"
    node: str | None = None
    cores: int = 0
    memory_bytes: int | None = None
    gpu_ids: tuple[int, ...] = ()
    numa_id: int | None = None
    submitted_at_us: int = 0
    placed_at_us: int | None = None
    started_at_us: int | None = None
    finished_at_us: int | None = None
    exit_code: int | None = None
    pid: int | None = None
    container_id: str | None = None
    ssh_port: int | None = None
    # VPS tasks, from ``vps.ready``: the address the port is published on, whether the
    # image runs sshd (None: not reported yet) and the runner's word on it.
    ssh_address: str | None = None
    sshd: bool | None = None
    vps_message: str = ""
    kill_requested_by: str | None = None
    # What the placement added to the environment (``task.placed``'s env: a job rank's).
    placed_env: dict[str, str] = {}
    message: str = ""
    last_seq: int = 0
    # While ``unknown``: since when (store clock), and the state it had before.
    unknown_since_us: int | None = None
    state_before_unknown: str | None = None

    @property
    def is_final(self) -> bool:
        """True once the task can change no more."""
        return self.state in FINAL_STATES

    @property
    def holds_resources(self) -> bool:
        """True while the task's placement counts against its node."""
        return self.state in HOLDING_STATES
