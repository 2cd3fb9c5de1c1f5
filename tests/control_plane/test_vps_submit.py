"""Submitting a VPS task (issue 15, item 1): each refusal names its field, the owner's
registered keys are the default, a key's comment is kept literally, and only nodes that
can run a VPS (Docker, tasks run as the runner) get one.

Pure: a ClusterState folded from events, the decision called directly. Through the real
API: tests/e2e/test_vps_shell_relay.py submits one.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from support.decisions import context, principal
from support.factories import record_in_memory

from control_plane.commands import SubmitTasks
from control_plane.commands.submit import decide_submission
from control_plane.errors import InvalidRequest
from control_plane.requests import decode_submit
from events.envelope import new_event
from events.types import AnyEvent, NodeRegistered, SshKeyAdded, TaskPlaced
from projections.cluster import ClusterState

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMVgsrjvUWjrmylU9ejqs+tPeSN7XdrZcMyuKLEQSbyv"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICU2/wUULZyFk8yZso6rlkdwixTG/c+Ne0aZ/RerFcbt"
ALICE = principal("alice")
_seq = itertools.count(1)


def apply(state: ClusterState, *events: AnyEvent) -> None:
    wrapped = [new_event(e, source="test") for e in events]
    state.apply_all(record_in_memory(wrapped, start_seq=next(_seq) * 1000))


def node(
    name: str, *, executors: tuple[str, ...] = ("process", "docker"), owner_mode: bool = False
):
    return NodeRegistered(
        node=name,
        address=name,
        cores=4,
        memory_bytes=1 << 33,
        executors=executors,
        run_tasks_as="owner" if owner_mode else "runner",
        accounts=("alice",) if owner_mode else None,
    )


def cluster(*nodes: NodeRegistered) -> ClusterState:
    state = ClusterState()
    apply(state, *(nodes or (node("docker1"),)))
    return state


def submit(state: ClusterState, who: Any = ALICE, **fields: Any) -> Any:
    body = {"task_type": "vps", "container": "env", "ssh_public_key": KEY, **fields}
    body = {k: v for k, v in body.items() if v is not None}
    command = SubmitTasks(
        requests=(decode_submit(json.dumps(body).encode()),), batch_id="b", actor=who
    )
    return decide_submission(state, command, context("docker1", "docker2"))


def refusal(state: ClusterState, **fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as refused:
        submit(state, **fields)
    assert refused.value.status == 400
    return refused.value


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"container": "NULL"}, "container", "NULL (no container) cannot be a VPS"),
        ({"command": "bash"}, "command", "takes no command"),
        ({"args": ["-c", "x"]}, "args", "takes no arguments"),
        ({"targets": ["docker1", "docker1"]}, "targets", "at most one target"),
        ({"ssh_public_key": "not a key"}, "ssh_public_key", "not an OpenSSH public key"),
        ({"ssh_public_key": f"{KEY} a\nssh-rsa AAAA b"}, "ssh_public_key", "line 2 is not"),
        ({"ssh_public_key": f"{KEY} a\r\n"}, "ssh_public_key", "line 1 holds '\\r'"),
        ({"ssh_public_key": f"{KEY} \x1b[2J"}, "ssh_public_key", "holds '\\x1b'"),
        ({"targets": ["nowhere"]}, "targets[0]", "unknown node"),
    ],
)
def test_what_no_vps_can_be_is_refused_naming_the_field(
    fields: dict[str, Any], field: str, words: str
) -> None:
    refused = refusal(cluster(), **fields)
    assert refused.field == field
    assert words in refused.message


def test_a_vps_records_sshd_as_its_command_and_the_key_literally() -> None:
    # Given a key whose comment is full of shell metacharacters
    key = f'{KEY} alice\'; touch /tmp/pwned; echo "$(id)" `x` & | > * ~ \\'
    # When it is submitted with a two-line key (blank lines around)
    decision = submit(cluster(), ssh_public_key=f"\n{key}\n\n{OTHER_KEY}\n")
    (submitted,) = decision.submitted
    # Then the spec holds the lines exactly as written, and the command the VPS runs
    assert submitted.spec.ssh_public_key == f"{key}\n{OTHER_KEY}"
    assert submitted.spec.command == "sshd" and submitted.spec.args == ()
    assert submitted.spec.task_type == "vps"


def test_without_a_key_the_owners_registered_keys_are_let_in() -> None:
    state = cluster()
    apply(
        state,
        SshKeyAdded(
            key_id="k1",
            user="alice",
            key_type="ssh-ed25519",
            public_key=KEY,
            fingerprint="SHA256:a",
            comment="alice@laptop",
        ),
        SshKeyAdded(
            key_id="k2",
            user="bob",
            key_type="ssh-ed25519",
            public_key=OTHER_KEY,
            fingerprint="SHA256:b",
            comment="bob",
        ),
        SshKeyAdded(
            key_id="k3",
            user="alice",
            key_type="ssh-ed25519",
            public_key=OTHER_KEY,
            fingerprint="SHA256:c",
        ),
    )
    (submitted,) = submit(state, ssh_public_key=None).submitted
    # alice's two keys, one a line, comments kept; bob's is not let in
    assert submitted.spec.ssh_public_key == f"{KEY} alice@laptop\n{OTHER_KEY}"


def test_without_a_key_and_none_registered_the_refusal_says_how_to_add_one() -> None:
    refused = refusal(cluster(), ssh_public_key=None)
    assert refused.field == "ssh_public_key"
    assert "hakuriver key add" in refused.message


def test_an_admin_submitting_for_a_user_lets_in_that_users_keys() -> None:
    state = cluster()
    apply(
        state,
        SshKeyAdded(
            key_id="k1",
            user="carol",
            key_type="ssh-ed25519",
            public_key=KEY,
            fingerprint="SHA256:a",
            comment="carol",
        ),
    )
    (submitted,) = submit(
        state, principal("root", "admin"), ssh_public_key=None, owner="carol"
    ).submitted
    assert submitted.spec.owner == "carol" and submitted.spec.ssh_public_key == f"{KEY} carol"


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (node("owners", owner_mode=True), "runs tasks as their owners"),
        (node("plain", executors=("process",)), "has no Docker executor"),
    ],
)
def test_a_target_that_cannot_run_a_vps_is_refused(bad: NodeRegistered, words: str) -> None:
    refused = refusal(cluster(bad), targets=[bad.node])
    assert refused.field == "targets[0]"
    assert words in refused.message


def test_when_no_node_can_run_a_vps_the_refusal_says_why_for_each() -> None:
    state = cluster(node("owners", owner_mode=True), node("plain", executors=("process",)))
    refused = refusal(state)
    assert refused.field == "task_type"
    assert "no registered node can run a VPS" in refused.message
    assert "owners runs tasks as their owners" in refused.message
    assert "plain has no Docker executor" in refused.message


def test_automatic_placement_skips_nodes_that_cannot_run_a_vps() -> None:
    # Given three nodes, sorted first the two that cannot run a VPS
    state = cluster(
        node("a-owners", owner_mode=True), node("b-plain", executors=("process",)), node("docker2")
    )
    # When a VPS is submitted without a target
    decision = submit(state)
    (placed,) = [e for e in decision.events if isinstance(e, TaskPlaced)]
    # Then it goes to the node that can, and the others are rejected with their reasons
    assert placed.node == "docker2"
    reasons = {r.node: r.reason for r in placed.rejected}
    assert "run_tasks_as = owner" in reasons["a-owners"]
    assert "no Docker executor" in reasons["b-plain"]


def test_a_command_task_still_needs_its_command() -> None:
    with pytest.raises(InvalidRequest) as refused:
        decode_submit_and_decide({"cores": 1})
    assert refused.value.field == "command"


def decode_submit_and_decide(body: dict[str, Any]) -> Any:
    command = SubmitTasks(
        requests=(decode_submit(json.dumps(body).encode()),), batch_id="b", actor=ALICE
    )
    return decide_submission(cluster(), command, context())


def test_gpu_ids_are_only_given_through_a_target() -> None:
    # The request has no GPU field of its own: GPUs are named as HOST::GPU, one target.
    refused = refusal(cluster(), gpus=[0])
    assert refused.field == "gpus"
