"""What the host and the runner log about each event kind (events/log_lines.py)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from msgspec import inspect

from events import types as t
from events.log_lines import COMMAND_CHARS, line_of
from events.types import EVENT_TYPES

# Kinds said in no line: samples and the host's own plumbing (the event log has them).
UNSAID = {"node.heartbeat", "task.dispatched"}


def _value(info: inspect.Type) -> Any:
    """A valid value of a field's type, made up."""
    match info:
        case inspect.StrType():
            return "x"
        case inspect.IntType() | inspect.FloatType():
            return 1
        case inspect.BoolType():
            return True
        case inspect.LiteralType():
            return info.values[0]
        case inspect.TupleType() | inspect.VarTupleType() | inspect.ListType():
            return []
        case inspect.DictType():
            return {}
        case inspect.UnionType():
            return _value(next(x for x in info.types if not isinstance(x, inspect.NoneType)))
        case inspect.StructType():
            return _fields(info)
    raise AssertionError(f"no sample for {info}")


def _fields(info: inspect.StructType) -> dict[str, Any]:
    return {f.encode_name: _value(f.type) for f in info.fields if f.required}


def sample(kind: str) -> t.Event:
    """An event of ``kind`` with its required fields made up."""
    cls = EVENT_TYPES[kind]
    info = inspect.type_info(cls)
    assert isinstance(info, inspect.StructType)
    event: t.Event = msgspec.convert(_fields(info), cls)
    return event


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_every_kind_is_said_or_knowingly_not(kind: str) -> None:
    """A new kind fails here until it has a line or joins UNSAID."""
    line = line_of(sample(kind))
    if kind in UNSAID:
        assert line is None
        return
    assert line is not None, kind
    assert line.message and "\n" not in line.message
    assert line.context["event"] == kind
    for field in ("task_id", "node", "job_id"):
        value = getattr(sample(kind), field, None)
        if isinstance(value, str) and value:
            assert value in line.context.values(), (kind, field, line.context)


def test_no_secret_reaches_a_line() -> None:
    token = t.TokenIssued(
        token_id="abc123", user="alice", token_kind="join", sha256="SECRET-HASH", name="ci"
    )
    key = t.SshKeyAdded(
        key_id="k1",
        user="alice",
        key_type="ssh-ed25519",
        public_key="AAAAC3NzaC1lZDI1NTE5AAAAIPUBLICKEYBYTES",
        fingerprint="SHA256:fp",
    )
    spec = t.TaskSpec(
        command="train",
        args=("--epochs", "3"),
        env={"API_KEY": "hunter2"},
        batch_id="b",
        owner="alice",
        ssh_public_key="ssh-ed25519 AAAAKEYINTASK",
    )
    submitted = t.TaskSubmitted(task_id="t1", spec=spec, number=7)
    said = [line_of(e) for e in (token, key, submitted)]
    text = " ".join(f"{s.message} {s.context}" for s in said if s is not None)
    for secret in ("SECRET-HASH", "PUBLICKEYBYTES", "hunter2", "API_KEY", "AAAAKEYINTASK"):
        assert secret not in text
    assert "abc123" in text and "SHA256:fp" in text and "train --epochs 3" in text


def test_a_long_command_is_cut() -> None:
    spec = t.TaskSpec(command="echo", args=("y" * 1000,), batch_id="b")
    line = line_of(t.TaskSubmitted(task_id="t1", spec=spec))
    assert line is not None and len(line.message) < COMMAND_CHARS + 100
    assert "…" in line.message


def test_levels_say_what_went_wrong() -> None:
    finished = line_of(t.TaskFinished(task_id="t1", state="failed", exit_code=2, node="n1"))
    completed = line_of(t.TaskFinished(task_id="t1", state="completed", exit_code=0))
    offline = line_of(t.NodeOffline(node="n1"))
    assert finished is not None and completed is not None and offline is not None
    assert (finished.level, completed.level, offline.level) == (30, 20, 30)
    assert finished.context == {"event": "task.finished", "task": "t1", "node": "n1"}
    actor = t.Actor(user="bob", token="tok")
    killed = line_of(t.TaskKillRequested(task_id="t1", actor=actor, requested_by="bob"))
    assert killed is not None and killed.context["user"] == "bob"
    assert "tok" not in killed.message
