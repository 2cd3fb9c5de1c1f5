"""What the fold keeps for the SSH gateway: the per-user key index, the removed keys, the
VPS tasks each user holds, and the sessions open, each as replay and snapshots see it."""

from __future__ import annotations

import msgspec
import pytest
from support.vps_state import ALICE_KEY, BOB_KEY, READY, World, fingerprint_of

from events.types import (
    NodeForgotten,
    NodeOffline,
    SshKeyAdded,
    SshKeyRemoved,
    SshSessionClosed,
    SshSessionOpened,
    TaskFinished,
    TaskLost,
)
from projections.cluster import ClusterState, SnapshotFormatError, _Snapshot


def _scan(state: ClusterState) -> dict[str, set[str]]:
    """The VPS tasks each owner holds, read the long way (every node's task ids)."""
    held: dict[str, set[str]] = {}
    for node in state.nodes.values():
        for task_id in node.task_ids:
            task = state.tasks[task_id]
            if task.spec.task_type == "vps":
                held.setdefault(task.spec.owner, set()).add(task_id)
    return held


def _index(state: ClusterState) -> dict[str, set[str]]:
    return {owner: set(tasks) for owner, tasks in state.vps_holding.items()}


def test_the_vps_index_follows_the_nodes_task_ids_and_survives_a_snapshot() -> None:
    world = World()
    ended, lost = world.task(ready=READY), world.task("bob", ready=READY)
    world.task(started=False)
    world.task(placed=False, started=False)
    world.task("bob", task_type="command")
    assert _index(world.state) == _scan(world.state) != {}
    world.apply(TaskFinished(task_id=ended, state="killed", node="n1"))
    world.apply(NodeOffline(node="n1"), TaskLost(task_id=lost, node="n1", reason="gone"))
    assert _index(world.state) == _scan(world.state)
    assert set(world.state.vps_holding) == {"alice"}
    restored = ClusterState.restore(world.state.snapshot())
    assert _index(restored) == _index(world.state)
    # A node forgotten takes its tasks out of the index.
    world.apply(NodeForgotten(node="n1"))
    assert world.state.vps_holding == {}


def test_keys_are_indexed_per_user_and_removals_remembered_across_a_snapshot() -> None:
    world = World()
    alice = fingerprint_of(ALICE_KEY)
    identity = world.state.identity
    assert identity.key_of("alice", alice) is not None and identity.key_of("bob", alice) is None
    world.apply(SshKeyRemoved(key_id="k1", user="alice"))
    assert identity.key_of("alice", alice) is None
    assert identity.key_removed("alice", alice) and not identity.key_removed("bob", alice)
    restored = ClusterState.restore(world.state.snapshot())
    assert restored.identity.key_removed("alice", alice)
    assert restored.identity == world.state.identity
    # Registered again: no longer removed.
    world.apply(
        SshKeyAdded(
            key_id="k2",
            user="alice",
            key_type="ssh-ed25519",
            public_key=ALICE_KEY,
            fingerprint=alice,
        )
    )
    assert not identity.key_removed("alice", alice)
    assert identity.key_of("alice", alice) is not None


def test_removing_one_of_two_copies_of_a_key_leaves_it_registered() -> None:
    world = World()
    bob = fingerprint_of(BOB_KEY)
    for key_id in ("a", "b"):  # two copies (the API refuses this; the fold must not care)
        world.apply(
            SshKeyAdded(
                key_id=key_id,
                user="bob",
                key_type="ssh-ed25519",
                public_key=BOB_KEY,
                fingerprint=bob,
            )
        )
    world.apply(SshKeyRemoved(key_id="a", user="bob"))
    assert world.state.identity.key_of("bob", bob) is not None
    assert not world.state.identity.key_removed("bob", bob)


def test_open_sessions_are_kept_until_closed_and_across_a_snapshot() -> None:
    world = World()
    task_id = world.task(ready=READY)
    world.apply(
        SshSessionOpened(session_id="s1", task_id=task_id, user="alice"),
        SshSessionOpened(session_id="s2", task_id=task_id, user="alice", via="shell"),
        SshSessionClosed(session_id="s1", task_id=task_id),
    )
    [open_one] = world.state.ssh_sessions.values()
    assert (open_one.session_id, open_one.via, open_one.user) == ("s2", "shell", "alice")
    restored = ClusterState.restore(world.state.snapshot())
    assert restored.ssh_sessions == world.state.ssh_sessions


def test_a_snapshot_of_the_older_format_is_refused_as_such() -> None:
    # (The host then folds the log from its start: test_ssh_gateway_revocation.py.)
    world = World()
    old = msgspec.msgpack.encode(
        _Snapshot(format=1, last_seq=world.state.last_seq, tasks=[], nodes=[], anomalies=[])
    )
    with pytest.raises(SnapshotFormatError, match="snapshot format 1 is not 3"):
        ClusterState.restore(old)
