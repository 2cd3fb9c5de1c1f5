"""From ``task submit``'s option values to the ``POST /api/tasks`` body.

The options are checked here as far as the client can (target, size, cores and
mount syntax, ``KEY=VALUE`` pairs) so a typo fails before anything is sent, with
the same field names the API uses (``targets[1]``). The server checks everything
again. Standard library only: the quick path of ``task submit`` (quick.py) builds
its request here too, so both paths send the same body.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cli.hakuriver.output import print_json, say
from control_plane.errors import InvalidRequest
from control_plane.notation import (
    parse_cores,
    parse_mount,
    parse_size,
    parse_target,
)

Request = dict[str, Any]

EXAMPLE = "hakuriver task submit --target node1 -- echo hello"


def build_request(
    command: Sequence[str],
    *,
    target: Sequence[str] = (),
    cores: str | None = None,
    memory: str | None = None,
    env: Sequence[str] = (),
    container: str | None = None,
    mount: Sequence[str] = (),
    privileged: bool | None = None,
    owner: str | None = None,
    name: str | None = None,
) -> Request:
    """The request body running ``command`` with these option values; ``InvalidRequest``."""
    if not command or not command[0]:
        raise InvalidRequest(
            "command", f"nothing to run: put the command after --, as in `{EXAMPLE}`"
        )
    request: Request = {"command": command[0], "args": list(command[1:])}
    if target:
        request["targets"] = check_targets(target)
    if cores is not None:
        request["cores"] = parse_cores(cores)
    if memory is not None:
        parse_size(memory, "memory")
        request["memory"] = memory.strip()
    if env:
        request["env"] = parse_env(env)
    if container is not None:
        request["container"] = container
    if mount:
        for index, each in enumerate(mount):
            parse_mount(each, f"mounts[{index}]")
        request["mounts"] = list(mount)
    if privileged is not None:
        request["privileged"] = privileged
    if owner:
        request["owner"] = owner
    if name is not None:
        request["name"] = name
    return request


def check_targets(targets: Sequence[str]) -> list[str]:
    """The targets, stripped, each checked against ``HOST[:NUMA][::GPU,...]``."""
    checked = []
    for index, target in enumerate(targets):
        parse_target(target, f"targets[{index}]")
        checked.append(target.strip())
    return checked


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` words as a dict (a later KEY wins); raises ``InvalidRequest``."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise InvalidRequest("env", f"{pair!r} is not KEY=VALUE (as in --env DEBUG=1)")
        env[key.strip()] = value
    return env


def print_submitted(answer: Request, *, as_json: bool, header: str | None = None) -> None:
    """What ``task submit`` prints: the answer as JSON, or the task numbers one a line.

    A server too old to number tasks is answered with the ids instead.
    """
    if as_json:
        print_json(answer)
        return
    if header is not None:
        say(header)
    for shown in answer.get("numbers") or answer.get("task_ids") or []:
        say(str(shown))
