"""A folded state for the pure tests of VPS sessions and gateway logins: a node, users
alice (with a registered key), bob and the admin root, and VPS tasks as far as they got."""

from __future__ import annotations

import base64
import itertools
from typing import Any

from control_plane.commands import OpenSshSession, decide
from control_plane.commands.vps import key_blob, key_fingerprint
from events.envelope import new_event
from events.types import (
    NodeRegistered,
    SshKeyAdded,
    TaskPlaced,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
    UserCreated,
    VpsReady,
)
from projections.cluster import ClusterState
from support.decisions import context, principal
from support.factories import record_in_memory

_numbers = itertools.count(1)


def _key(seed: int) -> str:
    """A well-formed ed25519 public key line (the blob names its type)."""
    name = b"ssh-ed25519"
    blob = len(name).to_bytes(4, "big") + name + (32).to_bytes(4, "big") + bytes([seed]) * 32
    return f"ssh-ed25519 {base64.b64encode(blob).decode()}"


ALICE_KEY, BOB_KEY, VPS_KEY = _key(1), _key(2), _key(3)


def fingerprint_of(line: str) -> str:
    """The SHA256 fingerprint of a key line's blob."""
    blob = key_blob(line)
    assert blob is not None
    return key_fingerprint(blob)


class World:
    """A state with a node, users alice (with a key), bob and the admin, and VPS tasks."""

    def __init__(self) -> None:
        self.state = ClusterState()
        self._apply(
            NodeRegistered(node="n1", address="10.0.0.1", cores=8, memory_bytes=1 << 34),
            UserCreated(name="alice"),
            UserCreated(name="bob"),
            UserCreated(name="root", role="admin"),
            SshKeyAdded(
                key_id="k1",
                user="alice",
                key_type="ssh-ed25519",
                public_key=ALICE_KEY,
                fingerprint=fingerprint_of(ALICE_KEY),
            ),
        )

    def _apply(self, *events: Any) -> None:
        news = [new_event(e, source="n1" if hasattr(e, "node") else "host") for e in events]
        self.state.apply_all(record_in_memory(news, start_seq=self.state.last_seq + 1))

    def task(
        self,
        owner: str = "alice",
        *,
        task_type: str = "vps",
        placed: bool = True,
        started: bool = True,
        ready: dict[str, Any] | None = None,
        key: str | None = VPS_KEY,
    ) -> str:
        """A task of ``owner``'s, as far as it got; its id."""
        task_id = f"01aaaaaa-{next(_numbers):04d}-7bbb-8ccc-dddddddddddd"
        spec = TaskSpec(
            task_type=task_type,  # type: ignore[arg-type]
            command="sshd",
            container="vps",
            batch_id="b",
            owner=owner,
            ssh_public_key=key if task_type == "vps" else None,
        )
        self._apply(TaskSubmitted(task_id=task_id, spec=spec))
        if placed:
            self._apply(TaskPlaced(task_id=task_id, node="n1", cores=1))
        if started:
            self._apply(TaskStarted(task_id=task_id, node="n1"))
        if ready is not None:
            self._apply(VpsReady(task_id=task_id, node="n1", **ready))
        return task_id

    def apply(self, *events: Any) -> None:
        self._apply(*events)

    def open(self, task: str, user: str = "alice", role: str = "user", **fields: Any) -> Any:
        command = OpenSshSession(task=task, actor=principal(user, role), session_id="s1", **fields)
        # The node's agent link comes from the address it registered.
        return decide(self.state, command, context("n1", link_peers={"n1": "10.0.0.1"}))


READY = {"address": "10.0.0.1", "ssh_port": 32022}
