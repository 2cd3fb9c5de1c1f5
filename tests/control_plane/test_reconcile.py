"""A node going silent and coming back: pure decisions over a ClusterState.

Each branch of ``decide_hello`` (what a reconnecting agent's hello leads to), of
``decide_offline`` and ``decide_give_up``, and the kill of an unknown task.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import msgspec
import pytest
from support.decisions import context, principal
from support.factories import record_in_memory

from control_plane.commands import (
    Decision,
    KillTask,
    NodeHello,
    NodeNotOnline,
    PauseTask,
    RecordFacts,
    ReportFacts,
)
from control_plane.commands.nodes import decide_give_up, decide_offline, decide_report
from control_plane.commands.nodes import decide_hello as decide_hello_cmd
from control_plane.commands.tasks import decide_kill as decide_kill_cmd
from control_plane.commands.tasks import decide_pause
from control_plane.errors import Conflict
from control_plane.hub import ControlPlane
from control_plane.settings import HostSettings, HostTiming
from events import link
from events.envelope import new_event
from events.ids import new_id
from events.types import (
    AnyEvent,
    NodeOffline,
    NodeOnline,
    NodeRegistered,
    TaskDispatched,
    TaskFinished,
    TaskKillRequested,
    TaskLost,
    TaskPaused,
    TaskPauseRequested,
    TaskPlaced,
    TaskReconnected,
    TaskResumeRequested,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
    TaskUnreachable,
)
from projections.cluster import ClusterState

NODE = NodeRegistered(node="n1", address="10.0.0.1", cores=8, memory_bytes=1 << 34)
HOUR_US = 3_600_000_000


class History:
    """A ClusterState built event by event, with the store clock under the test's control."""

    def __init__(self) -> None:
        self.state = ClusterState()
        self.clock_us = 1_000_000
        self.add(NODE)

    def add(self, *events: AnyEvent) -> None:
        recorded = record_in_memory(
            [new_event(e, source="host") for e in events], start_seq=self.state.last_seq + 1
        )
        for r in recorded:
            self.clock_us += 1000
            self.state.apply(msgspec.structs.replace(r, recorded_at_us=self.clock_us))

    def task(self, state: str, *, kill_by: str | None = None) -> str:
        """A task on n1, brought to ``state`` (assigning, running or paused)."""
        task_id = new_id()
        spec = TaskSpec(command="train", batch_id="b", cores=2)
        self.add(
            TaskSubmitted(task_id=task_id, spec=spec),
            TaskPlaced(task_id=task_id, node="n1", cores=2),
            TaskDispatched(task_id=task_id, node="n1"),
        )
        if state in ("running", "paused"):
            self.add(TaskStarted(task_id=task_id, node="n1", pid=4242))
        if state == "paused":
            self.add(TaskPaused(task_id=task_id))
        if kill_by:
            self.add(TaskKillRequested(task_id=task_id, requested_by=kill_by))
        return task_id

    def go_silent(self) -> None:
        self.add(*decide_offline(self.state, "n1", "no heartbeat for 6s"))


def hello(running: tuple[str, ...] = (), reported: tuple[str, ...] = ()) -> link.Hello:
    return link.Hello(
        node="n1",
        address=NODE.address,
        cores=NODE.cores,
        memory_bytes=NODE.memory_bytes,
        running=tuple(link.AgentTask(task_id=t) for t in running),
        reported=reported,
    )


class Plan(NamedTuple):
    """A hello's decision, split as a reader of these tests wants it."""

    registration: list[AnyEvent]
    events: list[AnyEvent]
    commands: list[link.Message]  # after the Welcome, which always comes first


def decide_hello(state: ClusterState, hi: link.Hello, *, now_us: int, grace_s: float) -> Plan:
    settings = HostSettings(timing=HostTiming(kill_grace_period=grace_s))
    decision = decide_hello_cmd(
        state, NodeHello(hello=hi), context(now_us=now_us, settings=settings)
    )
    welcome, *commands = [send.message for send in decision.sends]
    assert isinstance(welcome, link.Welcome) and welcome.kill_grace_s == grace_s
    assert all(send.node == hi.node for send in decision.sends)
    return Plan(decision.node_events, decision.events, commands)


def decide_kill(state: ClusterState, task_id: str, by: str) -> list[AnyEvent]:
    return decide_kill_cmd(
        state, KillTask(task_id=task_id, actor=principal(by, "admin")), context()
    ).events


# -- going silent --------------------------------------------------------------------------


def test_a_silent_node_makes_its_tasks_unknown_and_keeps_their_resources() -> None:
    h = History()
    running, paused, assigning = h.task("running"), h.task("paused"), h.task("assigning")
    h.go_silent()
    node = h.state.nodes["n1"]
    assert not node.online
    for task_id, was in ((running, "running"), (paused, "paused"), (assigning, "assigning")):
        task = h.state.tasks[task_id]
        assert task.state == "unknown" and task.state_before_unknown == was
        assert task.holds_resources
    assert node.allocated_cores == 6 and sorted(node.task_ids) == sorted(
        [running, paused, assigning]
    )


def test_offline_twice_decides_nothing_the_second_time() -> None:
    h = History()
    h.task("running")
    h.go_silent()
    assert decide_offline(h.state, "n1", "again") == []


# -- coming back: decide_hello ---------------------------------------------------------------


def test_the_agent_still_runs_it_so_it_is_running_again_with_the_gap() -> None:
    h = History()
    task_id = h.task("running")
    h.go_silent()
    since = h.state.tasks[task_id].unknown_since_us
    assert since is not None
    plan = decide_hello(h.state, hello(running=(task_id,)), now_us=since + 90_000_000, grace_s=5)
    assert plan.registration == [NodeOnline(node="n1")]
    assert plan.events == [
        TaskReconnected(task_id=task_id, node="n1", state="running", unreachable_s=90.0)
    ]
    assert plan.commands == []
    h.add(*plan.registration, *plan.events)
    assert h.state.tasks[task_id].state == "running"
    assert h.state.tasks[task_id].unknown_since_us is None


def test_a_paused_task_comes_back_paused() -> None:
    h = History()
    task_id = h.task("paused")
    h.go_silent()
    plan = decide_hello(h.state, hello(running=(task_id,)), now_us=h.clock_us, grace_s=5)
    assert [(type(e), e.state) for e in plan.events] == [(TaskReconnected, "paused")]  # type: ignore[union-attr]


def test_its_final_report_waits_in_the_outbox_so_it_reconnects_and_the_report_follows() -> None:
    h = History()
    task_id = h.task("running")
    h.go_silent()
    plan = decide_hello(h.state, hello(reported=(task_id,)), now_us=h.clock_us, grace_s=5)
    assert [type(e) for e in plan.events] == [TaskReconnected]
    h.add(*plan.registration, *plan.events, TaskFinished(task_id=task_id, state="completed"))
    assert h.state.tasks[task_id].state == "completed"
    assert h.state.anomalies == []


def test_placed_but_never_received_is_run_again() -> None:
    h = History()
    task_id = h.task("assigning")
    h.go_silent()
    plan = decide_hello(h.state, hello(), now_us=h.clock_us, grace_s=5)
    assert [(type(e), e.state) for e in plan.events] == [(TaskReconnected, "assigning")]  # type: ignore[union-attr]
    assert [type(c) for c in plan.commands] == [link.Run]
    assert plan.commands[0].task_id == task_id  # type: ignore[union-attr]


def test_placed_never_received_and_killed_meanwhile_is_killed_before_it_started() -> None:
    h = History()
    task_id = h.task("assigning", kill_by="alice")
    plan = decide_hello(h.state, hello(), now_us=h.clock_us, grace_s=5)
    assert plan.events == [
        TaskFinished(task_id=task_id, state="killed", message="killed before it started", node="n1")
    ]
    assert plan.commands == []


def test_a_running_task_the_agent_has_no_trace_of_is_lost() -> None:
    h = History()
    task_id = h.task("running")
    h.go_silent()
    plan = decide_hello(h.state, hello(), now_us=h.clock_us, grace_s=5)
    [lost] = plan.events
    assert isinstance(lost, TaskLost) and lost.task_id == task_id
    assert "came back without this task" in lost.reason
    h.add(*plan.registration, *plan.events)
    assert h.state.nodes["n1"].allocated_cores == 0


def test_a_kill_asked_for_while_connected_is_sent_again_on_reconnect() -> None:
    h = History()
    task_id = h.task("running", kill_by="bob")
    plan = decide_hello(h.state, hello(running=(task_id,)), now_us=h.clock_us, grace_s=3)
    assert plan.events == [] and plan.registration == []
    assert plan.commands == [link.Kill(task_id=task_id, grace_s=3)]


def test_a_task_the_host_considers_ended_is_killed_on_the_node() -> None:
    h = History()
    task_id = h.task("running")
    h.go_silent()
    h.add(*decide_kill(h.state, task_id, "carol"))  # killed while unreachable: lost now
    stranger = new_id()  # and one the host never heard of
    plan = decide_hello(h.state, hello(running=(task_id, stranger)), now_us=h.clock_us, grace_s=5)
    killed = sorted(c.task_id for c in plan.commands if isinstance(c, link.Kill))
    assert killed == sorted([task_id, stranger])
    assert plan.events == []


def test_a_changed_machine_registers_again_and_an_unchanged_one_just_returns() -> None:
    h = History()
    changed = hello()
    bigger = link.Hello(
        **{**{f: getattr(changed, f) for f in changed.__struct_fields__}, "cores": 16}
    )
    assert [type(e) for e in decide_hello(h.state, bigger, now_us=0, grace_s=5).registration] == [
        NodeRegistered
    ]
    assert decide_hello(h.state, hello(), now_us=0, grace_s=5).registration == []
    h.go_silent()
    assert decide_hello(h.state, hello(), now_us=0, grace_s=5).registration == [
        NodeOnline(node="n1")
    ]


# -- giving up, and killing what cannot be reached ---------------------------------------------


def test_unknown_tasks_are_given_up_only_after_lost_after() -> None:
    h = History()
    task_id = h.task("running")
    h.go_silent()
    since = h.state.tasks[task_id].unknown_since_us
    assert since is not None
    assert decide_give_up(h.state, since + HOUR_US, lost_after_s=2 * 3600) == []
    [lost] = decide_give_up(h.state, since + 3 * HOUR_US, lost_after_s=2 * 3600)
    assert isinstance(lost, TaskLost) and lost.task_id == task_id and "2h" in lost.reason


def test_the_unknown_clock_starts_no_earlier_than_the_host() -> None:
    """A host down for a weekend gives the agents their chance before giving up."""
    h = History()
    h.task("running")
    h.go_silent()
    host_started = h.clock_us + 60 * HOUR_US
    assert (
        decide_give_up(h.state, host_started + 10_000_000, 3600, not_before_us=host_started) == []
    )


def test_killing_an_unknown_task_ends_it_as_lost_naming_who() -> None:
    h = History()
    task_id = h.task("running")
    h.go_silent()
    events = decide_kill(h.state, task_id, "carol")
    assert [type(e) for e in events] == [TaskKillRequested, TaskLost]
    assert "carol" in events[1].reason  # type: ignore[union-attr]
    h.add(*events)
    assert h.state.tasks[task_id].state == "lost"
    assert h.state.nodes["n1"].allocated_cores == 0


# -- facts from a node declared offline -----------------------------------------------------


@pytest.mark.timeout(30)
async def test_reports_from_a_node_declared_offline_wait_for_its_hello(tmp_path: Path) -> None:
    settings = HostSettings.from_mapping(
        {"paths": {"shared_dir": str(tmp_path / "shared")}}, data_dir=str(tmp_path)
    )
    cp = await ControlPlane.open(settings)
    try:
        await cp.execute(RecordFacts(events=(NODE,)))
        task_id = new_id()
        spec = TaskSpec(command="x", batch_id="b")
        placed = TaskPlaced(task_id=task_id, node="n1", cores=1)
        await cp.execute(RecordFacts(events=(TaskSubmitted(task_id=task_id, spec=spec), placed)))
        await cp.execute(RecordFacts(events=(NodeOffline(node="n1"),)))
        # When the node's agent, declared offline, reports a start before saying hello
        started = new_event(TaskStarted(task_id=task_id, node="n1"), source="n1")
        with pytest.raises(NodeNotOnline):
            await cp.execute(ReportFacts(node="n1", events=(started,)))
        # Then nothing was recorded; after its return the same report is taken
        assert cp.state.tasks[task_id].state == "assigning"
        await cp.execute(RecordFacts(events=(NodeOnline(node="n1"),)))
        await cp.execute(ReportFacts(node="n1", events=(started,)))
        assert cp.state.tasks[task_id].state == "running"
    finally:
        await cp.close()


def test_an_unreachable_event_names_the_state_it_came_from() -> None:
    h = History()
    task_id = h.task("paused")
    [offline, unreachable] = decide_offline(h.state, "n1", "silent")
    assert isinstance(offline, NodeOffline)
    assert unreachable == TaskUnreachable(
        task_id=task_id, node="n1", was="paused", reason="node n1 offline: silent"
    )


# -- an agent's reports ----------------------------------------------------------------------


def _report(h: History, *events: AnyEvent) -> Decision:
    batch = tuple(new_event(e, source="n1") for e in events)
    return decide_report(h.state, ReportFacts(node="n1", events=batch), context("n1"))


def test_a_start_of_a_task_the_host_gave_up_on_is_answered_with_a_kill() -> None:
    h = History()
    task_id = h.task("assigning")
    h.go_silent()
    h.add(*decide_kill(h.state, task_id, "carol"))  # lost while unreachable
    h.add(NodeOnline(node="n1"))
    decision = _report(h, TaskStarted(task_id=task_id, node="n1", pid=7))
    [(node, kill)] = decision.sends
    assert node == "n1" and isinstance(kill, link.Kill) and kill.task_id == task_id
    assert "lost" in kill.reason
    assert len(decision.facts) == 1  # the report itself is recorded as sent


def test_a_kill_that_overtook_its_run_is_sent_again_when_the_start_is_reported() -> None:
    """The Kill left before the Run reached the agent (which ignores a kill for a task it
    does not know yet); the task's start report is answered with the kill again."""
    h = History()
    task_id = h.task("assigning", kill_by="bob")
    decision = _report(h, TaskStarted(task_id=task_id, node="n1", pid=7))
    assert [(s.node, type(s.message), s.message.task_id) for s in decision.sends] == [  # type: ignore[attr-defined]
        ("n1", link.Kill, task_id)
    ]


def test_an_ordinary_start_sends_nothing_back() -> None:
    h = History()
    task_id = h.task("assigning")
    assert _report(h, TaskStarted(task_id=task_id, node="n1", pid=7)).sends == []


# -- pause and resume ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "resume", "connected", "refusal"),
    [
        ("running", False, True, None),
        ("paused", True, True, None),
        ("paused", False, True, "it is paused"),
        ("running", True, True, "it is running"),
        ("running", False, False, "not connected"),
        ("assigning", False, True, "it is assigning"),
    ],
)
def test_pause_and_resume_need_the_right_state_and_a_connected_node(
    state: str, resume: bool, connected: bool, refusal: str | None
) -> None:
    h = History()
    task_id = h.task(state)
    command = PauseTask(task_id=task_id, actor=principal("alice", "admin"), resume=resume)
    ctx = context("n1") if connected else context()
    if refusal is not None:
        with pytest.raises(Conflict, match=refusal):
            decide_pause(h.state, command, ctx)
        return
    decision = decide_pause(h.state, command, ctx)
    [event] = decision.events
    assert isinstance(event, TaskResumeRequested if resume else TaskPauseRequested)
    assert event.requested_by == "alice"
    [(node, message)] = decision.sends
    assert node == "n1" and isinstance(message, link.Resume if resume else link.Pause)


def test_an_unknown_task_cannot_be_paused_its_node_is_unreachable() -> None:
    h = History()
    task_id = h.task("running")
    h.go_silent()
    with pytest.raises(Conflict, match="unreachable"):
        decide_pause(
            h.state, PauseTask(task_id=task_id, actor=principal("a", "admin")), context("n1")
        )


def test_a_second_end_of_a_finished_task_is_acknowledged_not_recorded() -> None:
    """An agent killed between putting a task's end in its outbox and forgetting the task
    reports the end again when its next start adopts it (chaos: kill -9 of hakuriver up):
    the first end stands, and the log gets no illegal transition."""
    h = History()
    task_id = h.task("running")
    first = TaskFinished(task_id=task_id, state="completed", exit_code=0, node="n1")
    [recorded] = _report(h, first).facts
    h.add(recorded.event)
    assert h.state.tasks[task_id].state == "completed"
    again = TaskFinished(task_id=task_id, state="failed", exit_code=1, node="n1")
    other = h.task("running")
    decision = _report(h, again, TaskStarted(task_id=other, node="n1", pid=9))
    assert [type(f.event) for f in decision.facts] == [TaskStarted]


def test_two_ends_of_one_task_in_one_batch_keep_the_first() -> None:
    h = History()
    task_id = h.task("running")
    ends = [
        TaskFinished(task_id=task_id, state=state, exit_code=code, node="n1")
        for state, code in (("completed", 0), ("failed", 1))
    ]
    decision = _report(h, *ends)
    assert [f.event for f in decision.facts] == [ends[0]]
