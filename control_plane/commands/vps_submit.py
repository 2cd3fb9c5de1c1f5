"""What a VPS submission must be, beyond the rules every task follows (issue 15).

A VPS task is a long-running container whose sshd lets its owner in: it needs a
container (``NULL`` is no VPS), at most one target, a node that can run one
(``scheduler.vps_refusal``), no command of its own (the host records ``sshd``, what
the VPS runs), and the public keys to let in. The keys are the request's
``ssh_public_key`` (every line an OpenSSH public key, its comment kept as written:
the runner mounts them as a file, it never reads them as shell), else every key the
owner registered (``hakuriver key add``). Pure: a refusal is an ``InvalidRequest``
naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence

from control_plane.errors import InvalidRequest
from control_plane.requests import SubmitTask, Target
from control_plane.scheduler import vps_refusal
from projections.cluster import ClusterState

# What the host records as a VPS task's command: the VPS runs sshd (or a shell waits).
VPS_COMMAND = "sshd"


def check_vps_request(
    state: ClusterState,
    request: SubmitTask,
    targets: Sequence[Target],
    container: str | None,
    owner: str,
) -> str:
    """Refuse what no VPS can be (naming the field); the keys to let in, one a line."""
    if len(targets) > 1:
        raise InvalidRequest("targets", "a VPS task takes at most one target")
    if container is None:
        raise InvalidRequest(
            "container",
            "a VPS task runs in a container: NULL (no container) cannot be a VPS; give"
            " --container NAME (an environment or an image with sshd)",
        )
    if request.command:
        raise InvalidRequest(
            "command", "a VPS task takes no command: it runs sshd (connect with hakuriver ssh)"
        )
    if request.args:
        raise InvalidRequest("args", "a VPS task takes no arguments: it runs sshd")
    for i, target in enumerate(targets):
        node = state.nodes.get(target.node)
        refusal = vps_refusal(node) if node is not None else None
        if refusal is not None:
            raise InvalidRequest(f"targets[{i}]", f"{target} cannot run a VPS: {refusal}")
    if not targets and state.nodes:
        refusals = [vps_refusal(state.nodes[name]) for name in sorted(state.nodes)]
        if all(refusals):
            shown = "; ".join(r for r in refusals[:5] if r)
            more = f"; and {len(refusals) - 5} more" if len(refusals) > 5 else ""
            raise InvalidRequest(
                "task_type", f"no registered node can run a VPS task: {shown}{more}"
            )
    return vps_public_key(state, request.ssh_public_key, owner)


def vps_public_key(state: ClusterState, given: str | None, owner: str) -> str:
    """The authorized_keys lines for ``owner``'s VPS: ``given`` checked line by line (blank
    lines dropped, each other line kept exactly as written), else the owner's registered
    keys; ``InvalidRequest`` on ``ssh_public_key`` when neither gives one."""
    if given is None or not given.strip():
        registered = sorted(
            (k for k in state.identity.keys.values() if k.user == owner),
            key=lambda k: (k.added_at_us, k.id),
        )
        if not registered:
            raise InvalidRequest(
                "ssh_public_key",
                f"no public key given, and {owner} has registered none: register one with"
                " `hakuriver key add` (or give --public-key-file)",
            )
        return "\n".join(f"{k.public_key} {k.comment}".rstrip() for k in registered)
    import asyncssh  # lazily: the host's start-up does not pay for it

    lines = [line for line in given.split("\n") if line.strip()]
    for number, line in enumerate(lines, 1):
        try:
            asyncssh.import_public_key(line)
        except (asyncssh.KeyImportError, ValueError) as exc:
            where = f"line {number}" if len(lines) > 1 else "the key"
            raise InvalidRequest(
                "ssh_public_key",
                f"{where} is not an OpenSSH public key ({exc}): give the .pub file's line,"
                " as in 'ssh-ed25519 AAAA... you@laptop'",
            ) from None
    return "\n".join(lines)
