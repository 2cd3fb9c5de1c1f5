"""Submissions the node could never run are refused at submit, naming the field (pure).

Issue 14, finding 11: container names like ``../../etc`` or ``A B;rm -rf /``, NUL bytes
in arguments or env values were accepted (201), recorded, and failed on the node; a task
name could hold terminal escapes (finding 10). Finding 9: a body that is not UTF-8 was a
500. Finding 13: what a user who is not an admin gets by default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.decisions import context, principal

from control_plane.commands import SubmitTasks
from control_plane.commands.submit import decide_submission
from control_plane.errors import InvalidRequest, Refused
from control_plane.requests import SubmitTask, decode_batch, decode_submit
from control_plane.settings import HostDocker, HostSettings
from projections.cluster import ClusterState

USER = principal("bob")
ADMIN = principal("root-of-the-lab", "admin")


def decide(request: dict[str, Any], who: Any = USER, host: HostSettings | None = None) -> Any:
    body = {"command": "true", **request}
    command = SubmitTasks(
        requests=(decode_submit(json.dumps(body).encode()),), batch_id="b", actor=who
    )
    return decide_submission(ClusterState(), command, context(settings=host)).submitted


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"container": "../../etc"}, "container", "neither an environment name"),
        ({"container": "A B;rm -rf /"}, "container", "neither an environment name"),
        ({"container": "env\nx"}, "container", "neither"),
        ({"container": "Upper"}, "container", "neither"),
        ({"container": "x" * 300}, "container", "neither"),
        ({"command": "true\x00rm"}, "command", "NUL"),
        ({"args": ["ok", "a\x00b"]}, "args[1]", "NUL"),
        ({"env": {"X": "a\x00b"}}, "env.X", "NUL"),
        ({"env": {"A=B": "x"}}, "env", "invalid variable name"),
        ({"env": {"A\x00B": "x"}}, "env", "invalid variable name"),
        ({"env": {"A\nB": "x"}}, "env", "invalid variable name"),
        ({"env": {"": "x"}}, "env", "invalid variable name"),
        ({"mounts": ["/a\x00b:/x"]}, "mounts[0]", "control character"),
        ({"name": "\x1b]0;owned\x07\x1b[31mRED"}, "name", "control"),
        ({"name": "evil\u202etxt.exe"}, "name", "invisible"),
        ({"name": "n" * 129}, "name", "at most 128"),
        ({"args": ["x"] * 4097}, "args", "at most 4096"),
        (
            {
                "task_type": "vps",
                "command": "",
                "container": "env",
                "ssh_public_key": "ssh-ed25519 A\r\nssh-rsa B",
            },
            "ssh_public_key",
            "line 1 holds",
        ),
    ],
)
def test_what_a_node_could_never_run_is_refused_at_submit(
    fields: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        decide(fields)
    assert refused.value.field == field
    assert words in refused.value.message
    assert refused.value.status == 400


def test_one_submission_holds_at_most_a_batchs_tasks_however_spread() -> None:
    """A request's targets each make a task: 20,000 targets in one request (or spread over
    a batch's requests) must not get round the batch's 10,000."""
    with pytest.raises(InvalidRequest) as refused:
        decide({"targets": [f"n{i}" for i in range(10_001)]})
    assert refused.value.field == "targets" and "10001 tasks" in refused.value.message
    body = {"command": "true", "targets": [f"n{i}" for i in range(5_001)]}
    request = decode_submit(json.dumps(body).encode())
    command = SubmitTasks(requests=(request, request), batch_id="b", actor=USER)
    with pytest.raises(InvalidRequest, match="10002 tasks"):
        decide_submission(ClusterState(), command, context())


def test_a_batch_names_the_task_at_fault() -> None:
    command = SubmitTasks(
        requests=(
            SubmitTask(command="true"),
            SubmitTask(command="true", container="../../etc"),
        ),
        batch_id="b",
        actor=USER,
    )
    with pytest.raises(InvalidRequest) as refused:
        decide_submission(ClusterState(), command, context())
    assert refused.value.field == "tasks[1].container"


@pytest.mark.parametrize(
    "container",
    [
        "NULL",
        "null",
        "env",
        "my-env.v2",
        "busybox:1.36",
        "hakuriver/env:base",
        "registry.example.org:5000/team/img:tag",
        "img@sha256:" + "a" * 64,
    ],
)
def test_environment_names_and_image_references_are_accepted(container: str) -> None:
    [event] = decide({"container": container})
    assert event.spec.container == (None if container.upper() == "NULL" else container)


def test_names_may_be_any_printable_text() -> None:
    [event] = decide({"name": "[red]x[/red] 训练 ✓", "args": ["tab\tand\nnewline are fine"]})
    assert event.spec.name == "[red]x[/red] 训练 ✓"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b'{"command":"\xff\xfe"}', "command", "not valid UTF-8"),
        (b'{"command":"true","args":["ok","\xc3"]}', "args[1]", "not valid UTF-8"),
        (b'{"command":"true","env":{"K":"v\xff"}}', "env.K", "not valid UTF-8"),
        (b'{"command":"true","env":{"K\xff":"v"}}', "env", "not valid UTF-8"),
        (b'\xff{"command":"true"}', "body", "malformed JSON"),
    ],
)
def test_a_body_that_is_not_utf8_is_refused_naming_the_field(
    body: bytes, field: str, words: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        decode_submit(body)
    assert refused.value.field == field
    assert words in refused.value.message


def test_a_batch_body_that_is_not_utf8_names_the_task() -> None:
    with pytest.raises(InvalidRequest) as refused:
        decode_batch(b'{"tasks":[{"command":"true"},{"command":"\xff"}]}')
    assert refused.value.field == "tasks[1].command"


# -- finding 13: the defaults -------------------------------------------------------------------


def test_by_default_a_user_can_neither_mount_the_host_nor_run_privileged(tmp_path: Path) -> None:
    host = HostSettings(data_dir=str(tmp_path))
    # The attack: a plain user mounts / to read /etc/shadow.
    with pytest.raises(Refused) as refused:
        decide(
            {"container": "env", "mounts": ["/:/host"], "args": ["/host/etc/shadow"]}, USER, host
        )
    assert refused.value.field == "mounts[0]" and refused.value.status == 403
    with pytest.raises(Refused) as refused:
        decide({"container": "env", "privileged": True}, USER, host)
    assert refused.value.field == "privileged"
    # An admin may do both (they are root on the nodes already).
    assert decide({"container": "env", "mounts": ["/:/host"], "privileged": True}, ADMIN, host)


def test_tasks_privileged_does_not_make_a_users_container_privileged(tmp_path: Path) -> None:
    # Before: [docker] tasks_privileged = true gave every user's task a privileged
    # container, around [auth] user_privileged = false.
    host = HostSettings(data_dir=str(tmp_path), docker=HostDocker(tasks_privileged=True))
    [users] = decide({"container": "env"}, USER, host)
    assert users.spec.privileged is False
    [admins] = decide({"container": "env"}, ADMIN, host)
    assert admins.spec.privileged is True
