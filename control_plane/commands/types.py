"""The command boundary's vocabulary: what can be asked of the control plane, and what
a decision about it is.

A *command* is a request from an adapter (a route, the agent link, a timer) that may
change the log. A *decision* is what a pure ``decide_*`` function makes of a command
against the folded state: the events to record and the link messages to send once
they are recorded. ``ControlPlane.execute`` is the only code that takes the gate,
calls the decision, records its events and then sends its messages, in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple

from msgspec import Struct, field

from control_plane.access import HOST, Principal
from control_plane.requests import SubmitTask
from control_plane.scheduler import Scheduler
from control_plane.settings import HostSettings
from events import link
from events.envelope import NewEvent
from events.types import AnyEvent, JobSpec, SshVia, TaskSubmitted

# -- commands --------------------------------------------------------------------------------


class SubmitTasks(Struct, frozen=True, kw_only=True):
    """Submit one batch: each request's task(s), numbered, placed where they fit now."""

    requests: tuple[SubmitTask, ...]
    batch_id: str
    actor: Principal = HOST


class PlaceQueued(Struct, frozen=True, kw_only=True):
    """Place the queued tasks that fit now (the scheduler's pass)."""


class KillTask(Struct, frozen=True, kw_only=True):
    """Kill a task: at once while queued or unreachable, through its node otherwise."""

    task_id: str
    actor: Principal
    reason: str = ""


class PauseTask(Struct, frozen=True, kw_only=True):
    """Freeze a running task (``resume=True``: continue a paused one)."""

    task_id: str
    actor: Principal
    resume: bool = False


class CheckLiveness(Struct, frozen=True, kw_only=True):
    """Declare offline the nodes silent too long; give up tasks unknown too long.

    ``heard_at`` is when each node's agent last said something, on the host's monotonic
    clock (a node missing from it counts from ``never_heard_at``, the host's start). The
    caller passes its live map: it is read when the decision is made, under the gate, so
    a node heard from while the check waited for the gate is not late.
    """

    heard_at: dict[str, float]
    never_heard_at: float


class NodeHello(Struct, frozen=True, kw_only=True):
    """A node agent (re)connected and said hello, with its credential (``actor``)."""

    hello: link.Hello
    actor: Principal | None = None


class ReportFacts(Struct, frozen=True, kw_only=True):
    """Events an agent reported (already checked as its to report), to be recorded as sent.

    ``place``: the resources the batch's ends free are placed again in the same commit,
    after them (the queue's next tasks, dispatched). A decision: only a holder of the
    exclusive gate sets it (``ControlPlane.execute``, when work is queued and the batch
    ends tasks); without it, the commit's ``task.finished`` wakes the scheduler loop.
    """

    node: str
    events: tuple[NewEvent, ...]
    place: bool = False


class ForgetNode(Struct, frozen=True, kw_only=True):
    """Remove a node that is offline and will not return (its held tasks are given up)."""

    node: str
    actor: Principal
    reason: str = ""


class RecordFacts(Struct, frozen=True, kw_only=True):
    """Events the host observed of work it did itself (an environment created, a shell
    opened): facts, recorded beside the agents' (shared gate)."""

    events: tuple[AnyEvent, ...]
    actor: Principal | None = None


class OpenSshSession(Struct, frozen=True, kw_only=True):
    """Let a user into a VPS task: through the SSH gateway (``via="gateway"``: the task's
    sshd must be ready) or as a shell through the agent link (``via="shell"``: its node
    must be connected). ``task`` is what the user named: a number, an id, a unique id
    prefix, or ``vps-<any of these>``. Refused unless ``may_act_on`` the task's owner.
    The decision records ``ssh.session_opened``, which says where to connect; a shell's
    decision also sends ``ShellOpen`` to the node."""

    task: str
    actor: Principal
    session_id: str
    via: SshVia = "gateway"
    client_address: str = ""
    key_fingerprint: str = ""
    rows: int = 24
    cols: int = 80
    term: str = "xterm"


class CloseSessionsLeftOpen(Struct, frozen=True, kw_only=True):
    """At the host's start: record the close of every SSH session the log shows open (the
    host that relayed them was killed before it could)."""

    reason: str = "host restarted: the session's end, duration and bytes are unknown"


# -- jobs (control_plane/commands/jobs.py) -------------------------------------------------


class SubmitJob(Struct, frozen=True, kw_only=True):
    """Submit a parsed job file (``control_plane.jobfile``): ``job.submitted`` and one
    ``task.submitted`` per rank, queued for the scheduler's gang placement.

    ``job_id`` is chosen by the adapter, which has already put the job's workdir copy
    in place (``workdir``: its path, as nodes see it; None when the file names none); the
    decision refuses an id already in the log. ``owner``: another user's name (admins).
    """

    job_id: str
    spec: JobSpec
    yaml: str
    actor: Principal
    owner: str | None = None
    workdir: str | None = None
    workdir_bytes: int = 0


class StopJobs(Struct, frozen=True, kw_only=True):
    """Stop jobs: those named, or with ``all`` every active job of the actor's (of every
    user's with ``all_users``, admins only). Each gets ``job.stop_requested`` and a kill
    of each rank still active (queued ranks are killed on the spot)."""

    actor: Principal
    job_ids: tuple[str, ...] = ()
    all: bool = False
    all_users: bool = False
    reason: str = ""


class AdvanceJobs(Struct, frozen=True, kw_only=True):
    """Move active jobs along (the scheduler loop's pass): ``job.phase`` ``run`` and a
    ``JobGo`` to every rank once all setups succeeded; the other ranks stopped once one
    failed; ``job.finished`` once every rank ended."""


class CreateVolume(Struct, frozen=True, kw_only=True):
    """Record a volume the adapter made (``<shared_dir>/volumes/<name>``)."""

    name: str
    actor: Principal


# -- identity (control_plane/commands/identity.py) ---------------------------------------


class CreateUser(Struct, frozen=True, kw_only=True):
    """Make a user account."""

    name: str
    role: str
    actor: Principal


class ChangeRole(Struct, frozen=True, kw_only=True):
    """Change a user's role."""

    name: str
    role: str
    actor: Principal


class DisableUser(Struct, frozen=True, kw_only=True):
    """Disable a user: their tokens stop working."""

    name: str
    actor: Principal


class IssueToken(Struct, frozen=True, kw_only=True):
    """Record a token the adapter made (``token_id`` and the secret's ``sha256``)."""

    user: str
    kind: str  # user | join (agent credentials come from EnrollNode)
    token_id: str
    sha256: str
    actor: Principal
    name: str = ""
    expires_at_us: int | None = None
    uses: int | None = None


class RevokeToken(Struct, frozen=True, kw_only=True):
    """Stop a token from working."""

    token_id: str
    actor: Principal


class EnrollNode(Struct, frozen=True, kw_only=True):
    """Exchange a join token (``actor``) for node ``node``'s agent credential."""

    node: str
    token_id: str
    sha256: str
    actor: Principal


class RevokeNode(Struct, frozen=True, kw_only=True):
    """Refuse a node's credential and name from now on, and disconnect it."""

    node: str
    actor: Principal


class AddKey(Struct, frozen=True, kw_only=True):
    """Register an SSH public key for ``user``."""

    user: str
    key_id: str
    key_type: str
    public_key: str
    fingerprint: str
    comment: str
    actor: Principal


class RemoveKey(Struct, frozen=True, kw_only=True):
    """Remove a registered SSH public key."""

    key_id: str
    actor: Principal


Command = (
    SubmitTasks
    | PlaceQueued
    | KillTask
    | PauseTask
    | CheckLiveness
    | NodeHello
    | ForgetNode
    | ReportFacts
    | RecordFacts
    | OpenSshSession
    | CloseSessionsLeftOpen
    | CreateUser
    | ChangeRole
    | DisableUser
    | IssueToken
    | RevokeToken
    | EnrollNode
    | RevokeNode
    | AddKey
    | RemoveKey
    | SubmitJob
    | StopJobs
    | AdvanceJobs
    | CreateVolume
)
# Commands that record facts: they conflict with no decision, so they share the gate.
FACTS = (ReportFacts, RecordFacts)

# -- decisions -------------------------------------------------------------------------------


class Send(NamedTuple):
    """A link message for a node's agent, sent after the decision's commit."""

    node: str
    message: link.Message


class Decision(Struct, kw_only=True):
    """What a command leads to. Everything in it happens, in this order, or nothing does:

    ``node_events`` (recorded as from ``node``: a registration), ``events`` (the host's),
    ``facts`` (enveloped by whoever reported them) and ``after_facts`` (the host's,
    decided on the state with the facts applied: placements into what a reported end
    freed) in one commit, in that order; then ``sends``;
    then the links of ``disconnect`` are closed (their agents reconnect and say hello).
    ``submitted`` is the answer to a submission: its tasks as recorded (with numbers).
    """

    events: list[AnyEvent] = field(default_factory=list)
    node: str = ""
    node_events: list[AnyEvent] = field(default_factory=list)
    facts: list[NewEvent] = field(default_factory=list)
    after_facts: list[AnyEvent] = field(default_factory=list)
    sends: list[Send] = field(default_factory=list)
    disconnect: list[tuple[str, str]] = field(default_factory=list)
    submitted: list[TaskSubmitted] = field(default_factory=list)


class Context(NamedTuple):
    """What a decision may know besides the state: settings, links, clocks, the scheduler."""

    settings: HostSettings
    connected: frozenset[str]
    now_us: int
    scheduler: Scheduler
    new_id: Callable[[], str]
    # When this host started (store clock): an unknown task's time counts from then at most.
    started_us: int = 0
    # The host's monotonic clock, for silences (``CheckLiveness``).
    now_mono: float = 0.0
    # Node -> the IP its agent's (latest) link comes from: the only address the SSH
    # gateway connects to for that node (commands/vps.py, ``gateway_address``).
    link_peers: Mapping[str, str] = MappingProxyType({})
