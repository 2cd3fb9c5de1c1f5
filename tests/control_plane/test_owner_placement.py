"""Owner-mode nodes on the host's side (``[runner] run_tasks_as = "owner"``): their hello
registers their mode and accounts, and the scheduler never places a task on a node that
has no account of the task's owner, saying so in the placement's rejections.

Pure: a ClusterState folded from events, decisions called directly. The submission's
refusal, through the real API, is in tests/e2e/test_tasks_run_as.py.
"""

from __future__ import annotations

import itertools

from support.decisions import context
from support.factories import record_in_memory

from control_plane.commands import NodeHello
from control_plane.commands.nodes import decide_hello
from control_plane.scheduler import Scheduler
from events import link
from events.envelope import new_event
from events.ids import new_id
from events.types import AnyEvent, NodeRegistered, TaskSpec, TaskSubmitted
from projections.cluster import ClusterState
from replay_tools.timeline import explain_placement

_seq = itertools.count(1)


def apply(state: ClusterState, *events: AnyEvent) -> None:
    wrapped = [new_event(e, source="test") for e in events]
    state.apply_all(record_in_memory(wrapped, start_seq=next(_seq) * 1000))


def node(name: str, *, accounts: tuple[str, ...] | None = None, owner_mode: bool = True):
    return NodeRegistered(
        node=name,
        address=name,
        cores=4,
        memory_bytes=1 << 33,
        run_tasks_as="owner" if owner_mode else "runner",
        accounts=accounts,
    )


def task(owner: str, target: str | None = None) -> TaskSubmitted:
    spec = TaskSpec(command="true", batch_id="b", owner=owner, target=target)
    return TaskSubmitted(task_id=new_id(), spec=spec)


def test_a_node_without_the_owners_account_is_a_rejected_candidate() -> None:
    # Given an owner-mode node without bob's account, then one with it
    state = ClusterState()
    apply(state, node("n1", accounts=("alice", "root")), node("n2", accounts=("bob", "root")))
    submitted = task("bob")
    apply(state, submitted)
    # When the scheduler places bob's task
    (placed,) = Scheduler("first-fit").plan(state)
    # Then it goes to n2, and n1's rejection names the account and the mode
    assert placed.node == "n2"
    assert [(r.node, r.reason) for r in placed.rejected] == [
        ("n1", "no account 'bob' on node n1 (run_tasks_as = owner)")
    ]


def test_a_task_no_node_has_an_account_for_stays_pending_and_why_says_so() -> None:
    state = ClusterState()
    apply(state, node("n1", accounts=("alice",)))
    submitted = task("bob")
    apply(state, submitted)
    assert Scheduler().plan(state) == []
    assert list(state.pending) == [submitted.task_id]
    records = record_in_memory([new_event(submitted, source="host")])
    explanation = explain_placement(records, state)
    assert [(r.node, r.reason) for r in explanation.rejected] == [
        ("n1", "no account 'bob' on node n1 (run_tasks_as = owner)")
    ]


def test_a_targeted_task_waits_rather_than_run_without_its_owners_account() -> None:
    state = ClusterState()
    apply(state, node("n1", accounts=("alice",)))
    bobs, alices = task("bob", target="n1"), task("alice", target="n1")
    apply(state, bobs, alices)
    assert [p.task_id for p in Scheduler().plan(state)] == [alices.task_id]


def test_runner_mode_nodes_and_unlisted_accounts_are_not_checked_on_the_host() -> None:
    # A node in the default mode runs every task as its runner's user; an owner-mode
    # node with too many accounts to list leaves the check to the task's start.
    state = ClusterState()
    apply(state, node("n1", accounts=None, owner_mode=False), node("n2", accounts=None))
    first, second = task("bob", target="n1"), task("bob", target="n2")
    apply(state, first, second)
    assert {p.task_id: p.node for p in Scheduler().plan(state)} == {
        first.task_id: "n1",
        second.task_id: "n2",
    }


def hello(*, run_tasks_as: str = "owner", accounts: tuple[str, ...] | None) -> link.Hello:
    return link.Hello(
        node="n1",
        address="10.0.0.1",
        cores=4,
        memory_bytes=1 << 33,
        run_tasks_as=run_tasks_as,  # type: ignore[arg-type]
        accounts=accounts,
    )


def registration(state: ClusterState, hi: link.Hello) -> list[AnyEvent]:
    return decide_hello(state, NodeHello(hello=hi), context()).node_events


def test_the_hello_registers_the_mode_and_accounts_and_a_change_registers_again() -> None:
    state = ClusterState()
    # A first hello registers the node with its mode and accounts
    [registered] = registration(state, hello(accounts=("bob", "alice")))
    assert isinstance(registered, NodeRegistered)
    assert (registered.run_tasks_as, registered.accounts) == ("owner", ("bob", "alice"))
    apply(state, registered)
    view = state.nodes["n1"]
    assert (view.run_tasks_as, view.accounts) == ("owner", frozenset({"alice", "bob"}))
    # The same accounts again (in any order) register nothing new
    assert registration(state, hello(accounts=("alice", "bob"))) == []
    # An account added since, or a change of mode, is registered again
    [added] = registration(state, hello(accounts=("alice", "bob", "carol")))
    assert isinstance(added, NodeRegistered) and added.accounts == ("alice", "bob", "carol")
    [runner] = registration(state, hello(run_tasks_as="runner", accounts=None))
    assert isinstance(runner, NodeRegistered) and runner.run_tasks_as == "runner"
    apply(state, runner)
    assert (state.nodes["n1"].run_tasks_as, state.nodes["n1"].accounts) == ("runner", None)


def test_the_owner_fields_survive_a_snapshot() -> None:
    state = ClusterState()
    apply(state, node("n1", accounts=("alice",)))
    restored = ClusterState.restore(state.snapshot())
    assert restored.nodes["n1"].accounts == frozenset({"alice"})
    assert restored.nodes["n1"].run_tasks_as == "owner"
