"""The shim's launch request (issue 14, finding 1): what the agent sends the zygote, and
every way a request that is not exactly that is refused before anything runs."""

from __future__ import annotations

import json
import marshal
from typing import Any

import pytest

from events.types import TaskSpec
from node_agent.executors import shim
from node_agent.executors.base import TaskRun
from node_agent.executors.process_plan import HostFacilities, plan_launch

pytestmark = pytest.mark.timeout(10)


def spec(**changes: Any) -> dict[str, Any]:
    """A launch spec as the agent makes it, with ``changes``."""
    run = TaskRun(
        task_id="t-1",
        spec=TaskSpec(command="true", batch_id="b", env={"A": "1"}),
        cores=1,
        cpus=(0, 1),
        shared_dir="/shared",
        local_temp_dir="/scratch",
    )
    built = plan_launch(run, HostFacilities(), {"PATH": "/bin"}).to_builtins()
    return {**built, **changes}


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(shim.HEADER_BYTES, "big") + body


def request_of(payload: object) -> bytes:
    return frame(json.dumps(payload).encode())


def test_what_the_agent_sends_comes_back_whole() -> None:
    sent = spec(uid=65534, gid=65534, groups=[65534], memory_bytes=2**30)
    # (tuples arrive as lists: what the shim does with them takes either)
    assert shim.decode_request(shim.encode_request("t-1", sent)) == (
        "t-1",
        json.loads(json.dumps(sent)),
    )


def test_the_old_marshal_request_is_refused() -> None:
    # What an attacker sent the zygote before: marshal((state_dir, task_id, spec))
    old = marshal.dumps(("/tmp/chosen", "x", spec()))
    with pytest.raises(shim.BadRequest):
        shim.decode_request(old)


@pytest.mark.parametrize(
    ("request_bytes", "why"),
    [
        (b"", "shorter than its header"),
        (frame(b"{}")[:-1], "announces 2 bytes and has 1"),
        (frame(b"{}") + b"x", "announces 2 bytes and has 3"),
        ((shim.MAX_REQUEST_BYTES + 1).to_bytes(4, "big"), "over"),
        (frame(b"\xff\xfe"), "not UTF-8"),
        (frame(b"not json"), "not JSON"),
        (frame(b"[" * 100_000 + b"]" * 100_000), "not JSON"),
        (frame(b'{"task_id": "t", "spec": {}} trailing'), "data after its JSON"),
        (frame(b'{"task_id": "t", "task_id": "u", "spec": {}}'), "appears twice"),
        (request_of(["t-1", spec()]), "exactly the keys task_id and spec"),
        (request_of({"task_id": "t-1", "spec": spec(), "state_dir": "/etc"}), "exactly the keys"),
    ],
)
def test_a_malformed_request_is_refused_saying_why(request_bytes: bytes, why: str) -> None:
    with pytest.raises(shim.BadRequest, match=why):
        shim.decode_request(request_bytes)


def test_nan_and_infinity_are_no_values_of_a_spec() -> None:
    body = json.dumps({"task_id": "t-1", "spec": spec()}).replace('"memory_bytes": null', "NaN")
    body = body.replace('"cpus": [0, 1]', '"cpus": [Infinity]')
    with pytest.raises(shim.BadRequest, match="Infinity"):
        shim.decode_request(frame(body.encode()))


@pytest.mark.parametrize(
    "task_id", ["", "../../etc/cron.d/x", "a/b", ".hidden", "x" * 201, "t\0", 7, None]
)
def test_a_task_id_must_be_a_plain_file_name(task_id: object) -> None:
    with pytest.raises(shim.BadRequest, match="task_id"):
        shim.decode_request(request_of({"task_id": task_id, "spec": spec()}))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("argv", []),
        ("argv", "id"),
        ("argv", ["id", 3]),
        ("argv", ["i\0d"]),
        ("env", {"A=B": "1"}),
        ("env", {"": "1"}),
        ("env", {"A": 1}),
        ("env", [["A", "1"]]),
        ("cwd", "relative/dir"),
        ("stdout", None),
        ("stderr", "/x\0y"),
        ("cpus", [True]),
        ("cpus", [-1]),
        ("cpus", [0.5]),
        ("memory_bytes", 0),
        ("memory_bytes", "1G"),
        ("cgroup_parent", "sys/fs/cgroup"),
        ("uid", True),
        ("uid", -1),
        ("uid", 2**40),
        ("groups", [0, "wheel"]),
    ],
)
def test_every_value_has_its_type(key: str, value: object) -> None:
    with pytest.raises(shim.BadRequest, match=rf"spec\.{key} has the wrong type"):
        shim.decode_request(request_of({"task_id": "t-1", "spec": spec(**{key: value})}))


def test_a_spec_with_a_key_missing_or_added_is_refused() -> None:
    missing = spec()
    del missing["groups"]
    for wrong in (missing, {**spec(), "setuid": 0}):
        with pytest.raises(shim.BadRequest, match="exactly the keys argv, env"):
            shim.decode_request(request_of({"task_id": "t-1", "spec": wrong}))


def test_a_uid_without_a_gid_is_refused() -> None:
    with pytest.raises(shim.BadRequest, match=r"uid and spec\.gid go together"):
        shim.decode_request(request_of({"task_id": "t-1", "spec": spec(uid=0)}))


def test_accounts_with_large_mapped_ids_are_valid_owners() -> None:
    # sssd / AD id mapping hands out uids near two thousand million; -1 and 2**32 are no ids
    big = 2_000_200_000
    _, decoded = shim.decode_request(
        request_of({"task_id": "t-1", "spec": spec(uid=big, gid=big, groups=[big])})
    )
    assert (decoded["uid"], decoded["gid"], decoded["groups"]) == (big, big, [big])
    for wrong in (-1, 1 << 32):
        with pytest.raises(shim.BadRequest, match=r"spec\.uid has the wrong type"):
            shim.decode_request(request_of({"task_id": "t-1", "spec": spec(uid=wrong, gid=0)}))
