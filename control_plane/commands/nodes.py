"""A node's life as the host sees it: its hello, its reports, its silence.

* ``decide_hello``: what a (re)connecting agent's hello leads to (registration or return,
  reconciliation of the tasks it runs with the log, then the commands to send it).
* ``decide_report``: the events an agent reports are recorded as sent; a start reported
  for a task the host already gave up on is answered with a kill.
* ``decide_liveness``: nodes silent past the timeout go offline, their tasks ``unknown``;
  tasks unknown past ``lost_after`` are given up.
* ``decide_forget``: an admin removes a node that is offline for good.

Silence is measured on the host's monotonic clock at the moment each agent message
arrived (not the agents' clocks, which may disagree with the host's); how long a task
has been unknown, on the store's clock, which survives host restarts.
"""

from __future__ import annotations

from collections.abc import Sequence

from control_plane.commands.submit import dispatching, run_of
from control_plane.commands.types import (
    CheckLiveness,
    Context,
    Decision,
    ForgetNode,
    NodeHello,
    ReportFacts,
    Send,
)
from control_plane.errors import Conflict, NotFound, Refused
from events import link
from events.envelope import NewEvent
from events.types import (
    AnyEvent,
    JobSetupDone,
    NodeForgotten,
    NodeOffline,
    NodeOnline,
    NodeRegistered,
    TaskFinished,
    TaskLost,
    TaskPlaced,
    TaskReconnected,
    TaskStarted,
    TaskUnreachable,
)
from projections.cluster import ClusterState
from projections.nodes import NodeView
from projections.tasks import HOLDING_STATES, TaskView, next_state


class NodeNotOnline(Conflict):
    """An agent reported facts for a node declared offline: it must say hello first."""

    def __init__(self, node: str) -> None:
        super().__init__("node", f"node {node} was declared offline; say hello again")
        self.node = node


# The states a task can be in when its node goes silent (those that hold resources).
REACHABLE_STATES = frozenset({"assigning", "running", "paused"})


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


def decide_liveness(state: ClusterState, command: CheckLiveness, ctx: Context) -> Decision:
    """Offline for each node silent past ``heartbeat_timeout`` (its link is closed, so its
    agent reconnects and says hello); ``lost`` for tasks unknown past ``lost_after``."""
    timing = ctx.settings.timing
    decision = Decision()
    for name, node in sorted(state.nodes.items()):
        silent = ctx.now_mono - command.heard_at.get(name, command.never_heard_at)
        if node.online and silent > timing.heartbeat_timeout:
            events = decide_offline(
                state,
                name,
                f"no heartbeat for {silent:.1f}s (timeout {timing.heartbeat_timeout}s)",
            )
            if events:
                decision.events += events
                decision.disconnect.append((name, "declared offline"))
    decision.events += decide_give_up(
        state, ctx.now_us, timing.lost_after, not_before_us=ctx.started_us
    )
    return decision


def decide_forget(state: ClusterState, command: ForgetNode, ctx: Context) -> Decision:
    """``node.forgotten`` for a node that is offline and not connected; the tasks still
    holding resources there (``unknown`` ones) are given up first, in the same commit."""
    name = command.node
    view = state.nodes.get(name)
    if view is None:
        raise NotFound("node", f"no node {name!r}")
    if view.online or name in ctx.connected:
        raise Conflict(
            "node",
            f"node {name} is online; forget is for a node that will not return"
            " (stop its runner first, and wait until it is offline)",
        )
    reason = command.reason or f"node {name} forgotten"
    events: list[AnyEvent] = [
        TaskLost(task_id=task_id, node=name, reason=reason)
        for task_id in view.task_ids
        if task_id in state.tasks and state.tasks[task_id].holds_resources
    ]
    events.append(NodeForgotten(node=name, reason=command.reason))
    return Decision(events=events)


def decide_report(state: ClusterState, command: ReportFacts, ctx: Context) -> Decision:
    """Record what an agent reported; kill tasks it started that the host gave up on.

    Refused (``NodeNotOnline``) once its node was declared offline: its tasks are
    ``unknown`` and only its next hello may bring them back; the agent's outbox keeps
    the events and sends them again after that hello.
    """
    view = state.nodes.get(command.node)
    if view is None or not view.online:
        raise NodeNotOnline(command.node)
    for i, new in enumerate(command.events):
        # A node reports only on tasks placed on it: a report on another node's task (or
        # one the host never placed) is forged, and refuses the whole batch.
        task_id = getattr(new.event, "task_id", None)
        if task_id is not None:
            task = state.tasks.get(task_id)
            if task is None or task.node != command.node:
                raise Refused(
                    f"events[{i}]",
                    f"task {task_id} is not placed on node {command.node}: not its to report",
                )
            if isinstance(new.event, JobSetupDone) and (
                task.spec.job_id != new.event.job_id or task.spec.rank != new.event.rank
            ):
                raise Refused(
                    f"events[{i}]",
                    f"task {task_id} is not rank {new.event.rank} of job {new.event.job_id}",
                )
    sends: list[Send] = []
    for new in command.events:
        if not isinstance(new.event, TaskStarted):
            continue
        task = state.tasks.get(new.event.task_id)
        if task is None:
            continue
        if not task.holds_resources:
            # A start reported for a task the host already gave up on (lost, killed while
            # queued...) must not keep running: its resources may be someone else's now.
            reason = f"task is {task.state} on the host"
        elif task.kill_requested_by is not None:
            # A kill sent while the run command was still on its way can reach the agent
            # first, which ignores a kill for a task it does not know: say it again.
            reason = f"requested by {task.kill_requested_by}"
        else:
            continue
        kill = link.Kill(
            task_id=task.task_id, grace_s=ctx.settings.timing.kill_grace_period, reason=reason
        )
        sends.append(Send(command.node, kill))
    facts = _without_second_ends(state, command.events)
    decision = Decision(facts=facts, sends=sends)
    if command.place:
        _place_into_freed(state, facts, ctx, decision)
    return decision


def _place_into_freed(
    state: ClusterState, facts: Sequence[NewEvent], ctx: Context, decision: Decision
) -> None:
    """Place queued work into what the batch's ends free, in the batch's own commit.

    A slot's turnover is otherwise two commits and a hop through the scheduler loop
    (the end, then a pass that sees it). Decided on committed facts all the same: the
    placements are recorded after the ends, all or nothing, and planned on the state as
    the ends leave it (``Scheduler.plan``'s ``freed``). A batch that ends a job's rank
    leaves its placements to the scheduler loop, which advances jobs first (a failed
    rank's siblings are stopped before anything else is placed).
    """
    freed: list[TaskView] = []
    for new in facts:
        if not isinstance(new.event, TaskFinished):
            continue
        task = state.tasks.get(new.event.task_id)
        if task is None or not task.holds_resources:
            continue
        if task.spec.job_id is not None:
            return
        target = next_state(task.state, "task.finished", new.event.state)
        if target is not None and target not in HOLDING_STATES:
            freed.append(task)
    if not freed or not state.pending:
        return
    placements = ctx.scheduler.plan(state, now_us=ctx.now_us, freed=freed)
    specs = {
        p.task_id: state.tasks[p.task_id].spec for p in placements if isinstance(p, TaskPlaced)
    }
    placed = dispatching(placements, specs, ctx.connected)
    decision.after_facts = placed.events
    decision.sends += placed.sends


def _without_second_ends(state: ClusterState, events: Sequence[NewEvent]) -> list[NewEvent]:
    """The batch less any ``task.finished`` of a task already finished (in the log, or
    earlier in the batch): acknowledged with the batch, not recorded.

    An agent killed between putting a task's end in its outbox and forgetting the task's
    records reports the end again when its next start adopts the ended task (a chaos test
    saw it: ``kill -9`` of ``hakuriver up``). The first end stands either way (the fold
    keeps it); recording the second would only put an illegal transition in the log.
    """
    kept: list[NewEvent] = []
    ended: set[str] = set()
    for new in events:
        if isinstance(new.event, TaskFinished):
            task = state.tasks.get(new.event.task_id)
            if new.event.task_id in ended or (task is not None and task.is_final):
                continue
            ended.add(new.event.task_id)
        kept.append(new)
    return kept


def decide_hello(state: ClusterState, command: NodeHello, ctx: Context) -> Decision:
    """Reconcile what a (re)connecting agent runs with what the log says runs there.

    For each task holding resources on the node (``unknown`` ones by the state they had):
    the agent runs it, or holds its final report → it stays (an unknown one is
    ``task.reconnected``), and a kill requested meanwhile is sent; placed but never
    received → ``run`` again (or, if a kill was asked for, ``killed before it started``);
    anything else the agent has no trace of → ``task.lost``. A task the agent runs that
    the host considers ended, or placed elsewhere, is killed.
    """
    hello, now_us, grace_s = command.hello, ctx.now_us, ctx.settings.timing.kill_grace_period
    registration: list[AnyEvent] = []
    events: list[AnyEvent] = []
    commands: list[link.Message] = []
    machine = NodeRegistered(
        node=hello.node,
        address=hello.address,
        cores=hello.cores,
        memory_bytes=hello.memory_bytes,
        numa=hello.numa,
        gpus=hello.gpus,
        agent_version=hello.agent_version,
        executors=hello.executors,
        run_tasks_as=hello.run_tasks_as,
        accounts=hello.accounts,
        process_mounts=hello.process_mounts,
    )
    view = state.nodes.get(hello.node)
    if view is None or _machine(view) != _machine(machine):
        registration.append(machine)
    elif not view.online:
        registration.append(NodeOnline(node=hello.node))
    running = {t.task_id for t in hello.running}
    reported = set(hello.reported)
    for task_id in list(view.task_ids) if view is not None else []:
        task = state.tasks[task_id]
        was = task.state_before_unknown if task.state == "unknown" else task.state
        back = (
            [
                TaskReconnected(
                    task_id=task_id,
                    node=hello.node,
                    state=was,  # type: ignore[arg-type]
                    unreachable_s=max(0, now_us - (task.unknown_since_us or now_us)) / 1e6,
                )
            ]
            if task.state == "unknown"
            else []
        )
        if task_id in running:
            events += back
            if task.kill_requested_by is not None:
                commands.append(link.Kill(task_id=task_id, grace_s=grace_s))
            elif _job_runs(state, task):
                # A job's rank told to run while its agent was away (or before it restarted)
                # may never have heard it: say it again (the agent applies it once).
                commands.append(link.JobGo(task_id=task_id))
        elif task_id in reported:
            events += back  # its final report follows in the agent's first batch
        elif was == "assigning" and task.kill_requested_by is not None:
            events.append(
                TaskFinished(
                    task_id=task_id,
                    state="killed",
                    message="killed before it started",
                    node=hello.node,
                )
            )
        elif was == "assigning":
            events += back
            commands.append(run_command(task))
        else:
            events.append(
                TaskLost(
                    task_id=task_id,
                    node=hello.node,
                    reason="the node's agent came back without this task",
                )
            )
    for task_id in running:
        known = state.tasks.get(task_id)
        if known is None or known.node != hello.node or not known.holds_resources:
            commands.append(
                link.Kill(
                    task_id=task_id, grace_s=grace_s, reason="the host considers this task ended"
                )
            )
    welcome = link.Welcome(
        heartbeat_interval_s=ctx.settings.timing.heartbeat_interval,
        kill_grace_s=grace_s,
        last_seq=state.last_seq,
    )
    return Decision(
        node=hello.node,
        node_events=registration,
        events=events,
        sends=[Send(hello.node, m) for m in (welcome, *commands)],
    )


def _job_runs(state: ClusterState, task: TaskView) -> bool:
    """Whether ``task`` is a rank of a job in its run phase."""
    job = state.jobs.get(task.spec.job_id) if task.spec.job_id else None
    return job is not None and job.phase == "run"


def _machine(e: NodeView | NodeRegistered) -> tuple[object, ...]:
    """What a registration says about the machine (a change is recorded again)."""
    accounts = None if e.accounts is None else frozenset(e.accounts)
    return (
        *(
            getattr(e, f)
            for f in (
                "address",
                "cores",
                "memory_bytes",
                "numa",
                "gpus",
                "agent_version",
                "executors",
                "run_tasks_as",
                "process_mounts",
            )
        ),
        accounts,
    )


def run_command(task: TaskView) -> link.Run:
    """The run command for a placed task, with the resources it was placed on."""
    placed = TaskPlaced(
        task_id=task.task_id,
        node=task.node or "",
        cores=task.cores,
        memory_bytes=task.memory_bytes,
        gpu_ids=task.gpu_ids,
        numa_id=task.numa_id,
        env=task.placed_env,
    )
    return run_of(placed, task.spec)
