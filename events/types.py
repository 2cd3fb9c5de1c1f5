"""Every event HakuRiver records: frozen msgspec Structs with stable dotted tags.

Evolution rules (see docs/events.md): a tag is never renamed or reused; a new
field always has a default; a field's type never changes. A breaking change
bumps the kind's entry in ``SCHEMA_VERSIONS`` and adds an upcaster in
``events.codec``. Stored events never use ``forbid_unknown_fields`` or
``array_like``, so old readers skip fields they do not know.

Each event names the stream it belongs to (``task:<id>``, ``node:<name>``,
``env:<name>``, ``ssh:<session>``, ``job:<id>``, ``volume:<name>``) through its
``stream`` property.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

NonNegInt = Annotated[int, Meta(ge=0)]
NonEmptyStr = Annotated[str, Meta(min_length=1)]

TaskType = Literal["command", "vps"]
FinalState = Literal["completed", "failed", "killed", "killed_oom"]
# The states a task on a node that went silent can be in, and return to.
ReachableState = Literal["assigning", "running", "paused"]


class Mount(Struct, frozen=True, kw_only=True, gc=False):
    """A host path bound into a task's container (or its process sandbox)."""

    host_path: NonEmptyStr
    container_path: NonEmptyStr
    read_only: bool = False


class TaskSpec(Struct, frozen=True, kw_only=True, gc=False):
    """Everything a user asked for when submitting one task instance."""

    task_type: TaskType = "command"
    command: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = {}
    cores: NonNegInt = 1
    memory_bytes: NonNegInt | None = None
    gpu_ids: tuple[NonNegInt, ...] = ()
    numa_id: NonNegInt | None = None
    container: str | None = None  # None means: run as a plain process on the node
    privileged: bool = False
    mounts: tuple[Mount, ...] = ()
    target: str | None = None  # the user's target string, None for automatic placement
    batch_id: str
    owner: str = "anonymous"
    name: str | None = None
    ssh_public_key: str | None = None  # VPS tasks only
    # Where the host paths of ``mounts`` must lie once symlinks are resolved on the node
    # (None: anywhere, an admin's task). The host sets it for users who are not admins:
    # the shared storage, [auth] user_mount_dirs and the admin's additional_mounts.
    mount_roots: tuple[str, ...] | None = None
    # Any ``gpu_count`` free GPUs (their model's name containing ``gpu_model``, any model
    # when None): the placement picks them (``task.placed``'s gpu_ids). A job's ranks ask
    # for GPUs this way; ``gpu_ids`` names exact ones instead.
    gpu_count: NonNegInt = 0
    gpu_model: str | None = None
    # The folder (a path on the node) the task starts in: a job's copied workdir. In a
    # container it is mounted at ``events.jobs.CONTAINER_WORKDIR``. None: the default.
    workdir: str | None = None
    # A rank of a job (``job.submitted`` lists the job's rank tasks): the agent gives it
    # the setup/run barrier of ``events.jobs``.
    job_id: str | None = None
    rank: NonNegInt | None = None


class NumaNode(Struct, frozen=True, kw_only=True, gc=False):
    """One NUMA node of a machine: its CPUs and memory."""

    id: NonNegInt
    cpus: tuple[NonNegInt, ...]
    memory_bytes: NonNegInt = 0


class GpuInfo(Struct, frozen=True, kw_only=True, gc=False):
    """A GPU as the node agent found it."""

    id: NonNegInt
    name: str
    memory_bytes: NonNegInt = 0
    uuid: str | None = None


class GpuUsage(Struct, frozen=True, kw_only=True, gc=False):
    """A GPU's load at heartbeat time."""

    id: NonNegInt
    utilization_percent: float = 0.0
    memory_used_bytes: NonNegInt = 0
    temperature_c: float | None = None


class Rejection(Struct, frozen=True, kw_only=True, gc=False):
    """A node the scheduler considered for a task and why it said no."""

    node: str
    reason: str


class Actor(Struct, frozen=True, kw_only=True, gc=False):
    """Who made the request that caused an event: the user and the token they used."""

    user: str
    token: str = ""  # the token's public id (``events.credentials``)


class Event(Struct, frozen=True, kw_only=True, tag_field="kind", gc=False):
    """Base of every event; subclasses set ``tag`` to their stable dotted kind.

    ``actor`` is set by the host on every event a user's request causes (the
    authenticated user and token id), and is None on what agents and the host's own
    loops record.
    """

    actor: Actor | None = None

    @property
    def stream(self) -> str:
        """The stream this event belongs to."""
        raise NotImplementedError


class _NodeEvent(Event, frozen=True, kw_only=True):
    node: NonEmptyStr

    @property
    def stream(self) -> str:
        return f"node:{self.node}"


class _TaskEvent(Event, frozen=True, kw_only=True):
    task_id: NonEmptyStr

    @property
    def stream(self) -> str:
        return f"task:{self.task_id}"


class _EnvEvent(Event, frozen=True, kw_only=True):
    name: NonEmptyStr

    @property
    def stream(self) -> str:
        return f"env:{self.name}"


# -- nodes ---------------------------------------------------------------------------------


class NodeRegistered(_NodeEvent, frozen=True, kw_only=True, tag="node.registered"):
    """A node agent said hello: what the machine has and where to reach it."""

    address: str
    cores: NonNegInt
    memory_bytes: NonNegInt
    numa: tuple[NumaNode, ...] = ()
    gpus: tuple[GpuInfo, ...] = ()
    agent_version: str = ""
    executors: tuple[str, ...] = ("process",)
    # Who its tasks run as (``[runner] run_tasks_as``: "runner" or "owner"); in owner
    # mode the Unix accounts it has, or None when it has too many to list.
    run_tasks_as: str = "runner"
    accounts: tuple[str, ...] | None = None
    # Whether its process tasks (``--container NULL``) can have ``--mount`` binds, each
    # in a mount namespace of its own; False for events recorded before it was said.
    process_mounts: bool = False


class NodeHeartbeat(_NodeEvent, frozen=True, kw_only=True, tag="node.heartbeat"):
    """Periodic usage report from a node agent."""

    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    memory_used_bytes: NonNegInt = 0
    memory_total_bytes: NonNegInt = 0
    gpus: tuple[GpuUsage, ...] = ()
    temperatures: dict[str, float] = {}
    running_task_ids: tuple[str, ...] = ()
    # Events waiting in the agent's outbox for the host's acknowledgement when this sample
    # was taken (None: an agent from before issue 18, which did not say).
    outbox_depth: NonNegInt | None = None


class NodeOffline(_NodeEvent, frozen=True, kw_only=True, tag="node.offline"):
    """The host stopped hearing from a node (missed heartbeat deadline or link closed)."""

    reason: str = "heartbeat timeout"
    last_seen_us: NonNegInt | None = None


class NodeOnline(_NodeEvent, frozen=True, kw_only=True, tag="node.online"):
    """A node that was offline is heard from again."""


# -- tasks ---------------------------------------------------------------------------------


class TaskSubmitted(_TaskEvent, frozen=True, kw_only=True, tag="task.submitted"):
    """A user asked for a task; one event per target, tied by ``spec.batch_id``.

    ``number`` is the task's number in the cluster (1, 2, 3, ... in submission order),
    the short id people type; 0 in events recorded before numbers existed, which the
    fold numbers on after the highest so far.
    """

    spec: TaskSpec
    number: NonNegInt = 0


class TaskPlaced(_TaskEvent, frozen=True, kw_only=True, tag="task.placed"):
    """The scheduler reserved resources on a node for a task, and said why."""

    node: NonEmptyStr
    cores: NonNegInt
    memory_bytes: NonNegInt | None = None
    gpu_ids: tuple[NonNegInt, ...] = ()
    numa_id: NonNegInt | None = None
    policy: str = ""
    reason: str = ""
    rejected: tuple[Rejection, ...] = ()
    # Variables the placement adds to the task's environment (a job's rank: the node
    # addresses of every rank, known only now). The run command carries spec.env and these.
    env: dict[str, str] = {}


class TaskDispatched(_TaskEvent, frozen=True, kw_only=True, tag="task.dispatched"):
    """The host sent the run command to the node's agent."""

    node: NonEmptyStr


class TaskStarted(_TaskEvent, frozen=True, kw_only=True, tag="task.started"):
    """The agent started the task's process or container."""

    node: NonEmptyStr
    pid: int | None = None
    container_id: str | None = None
    ssh_port: int | None = None


class TaskPaused(_TaskEvent, frozen=True, kw_only=True, tag="task.paused"):
    """The agent stopped the task's processes (SIGSTOP / docker pause)."""


class TaskResumed(_TaskEvent, frozen=True, kw_only=True, tag="task.resumed"):
    """The agent continued a paused task."""


class TaskKillRequested(_TaskEvent, frozen=True, kw_only=True, tag="task.kill_requested"):
    """Someone asked for a task to be killed."""

    requested_by: str = "anonymous"
    reason: str = ""


class TaskPauseRequested(_TaskEvent, frozen=True, kw_only=True, tag="task.pause_requested"):
    """Someone asked for a running task to be frozen."""

    requested_by: str = "anonymous"


class TaskResumeRequested(_TaskEvent, frozen=True, kw_only=True, tag="task.resume_requested"):
    """Someone asked for a paused task to continue."""

    requested_by: str = "anonymous"


class TaskFinished(_TaskEvent, frozen=True, kw_only=True, tag="task.finished"):
    """The task ended; ``state`` says how."""

    state: FinalState
    exit_code: int | None = None
    message: str = ""
    node: str | None = None


class TaskLost(_TaskEvent, frozen=True, kw_only=True, tag="task.lost"):
    """The task is given up: its node came back without it, or stayed unreachable too long."""

    node: str | None = None
    reason: str = "node offline"


class TaskUnreachable(_TaskEvent, frozen=True, kw_only=True, tag="task.unreachable"):
    """The task's node went silent: the task may still run there, so it is ``unknown``.

    It keeps its resources on the node until the node comes back (``task.reconnected``,
    or ``task.lost`` if the node no longer has it) or ``[timing] lost_after`` passes.
    ``was`` is the state it had, to which a reconnection returns it.
    """

    node: NonEmptyStr
    was: ReachableState
    reason: str = ""


class TaskReconnected(_TaskEvent, frozen=True, kw_only=True, tag="task.reconnected"):
    """The task's node came back and still has the task: it returns to ``state``."""

    node: NonEmptyStr
    state: ReachableState
    unreachable_s: float = 0.0  # how long the host could not reach it


# -- jobs (SkyPilot-style YAML, control_plane/jobfile.py; docs/jobs.md) ---------------------

JobPhaseName = Literal["setup", "run"]
JobFinalState = Literal["completed", "failed", "stopped"]


class JobResources(Struct, frozen=True, kw_only=True, gc=False):
    """A job file's ``resources`` as written (each value normalised to text)."""

    cpus: str | None = None  # "4", "4+", "500m"
    memory: str | None = None  # "32", "32+", "64GB", "4Gi"
    accelerators: str | None = None  # "V100:2", "2" (any model); a mapping is written "V100:2"
    image_id: str | None = None
    # Fields HakuRiver accepts and ignores (instance_type, use_spot, disk_size, ports), as text.
    ignored: dict[str, str] = {}


class JobSpec(Struct, frozen=True, kw_only=True, gc=False):
    """A job file, parsed (``control_plane.jobfile``), and what it means on HakuRiver.

    The first fields are the file's (``envs`` with ``--env`` applied, so no value is
    missing); the last ones are what each rank asks for: cores, memory, GPUs, container.
    """

    name: str | None = None
    num_nodes: Annotated[int, Meta(ge=1)] = 1
    workdir: str | None = None  # as written in the file (a folder on the submitter's machine)
    resources: JobResources = JobResources()
    envs: dict[str, str] = {}
    volumes: dict[str, str] = {}  # container path -> volume name (<shared_dir>/volumes/<name>)
    setup: str | None = None
    run: str
    # Per rank, on HakuRiver:
    cores: NonNegInt = 1
    memory_bytes: NonNegInt | None = None
    gpu_count: NonNegInt = 0
    gpu_model: str | None = None  # None: any model
    container: str | None = None  # None: a plain process on the node


class _JobEvent(Event, frozen=True, kw_only=True):
    job_id: NonEmptyStr

    @property
    def stream(self) -> str:
        return f"job:{self.job_id}"


class JobSubmitted(_JobEvent, frozen=True, kw_only=True, tag="job.submitted"):
    """A user submitted a job file. Its ranks are ordinary tasks, submitted in the same
    commit (``task.submitted`` with ``spec.job_id``): rank ``i`` is ``rank_task_ids[i]``.
    ``yaml`` is the file as sent; ``workdir_bytes`` what its workdir copy holds."""

    spec: JobSpec
    owner: NonEmptyStr
    rank_task_ids: tuple[NonEmptyStr, ...]
    yaml: str = ""
    workdir_bytes: NonNegInt = 0


class JobPlaced(_JobEvent, frozen=True, kw_only=True, tag="job.placed"):
    """Every rank was placed at once, in this commit (one ``task.placed`` each): rank
    ``i`` on ``nodes[i]``, reachable at ``addresses[i]`` (``SKYPILOT_NODE_IPS``)."""

    nodes: tuple[NonEmptyStr, ...]
    addresses: tuple[str, ...] = ()
    policy: str = ""
    reason: str = ""
    rejected: tuple[Rejection, ...] = ()


class JobPhase(_JobEvent, frozen=True, kw_only=True, tag="job.phase"):
    """The job entered a phase: ``setup`` (placed: every rank runs its setup, then waits)
    or ``run`` (every rank's setup succeeded: the host told each to run)."""

    phase: JobPhaseName


class JobSetupDone(_TaskEvent, frozen=True, kw_only=True, tag="job.setup_done"):
    """A rank's setup succeeded (or it had none) and it waits for the job's ``run``
    phase. Reported by the rank's node; changes no task state."""

    job_id: NonEmptyStr
    rank: NonNegInt
    node: NonEmptyStr


class JobStopRequested(_JobEvent, frozen=True, kw_only=True, tag="job.stop_requested"):
    """Someone stopped the job: its ranks are killed (``task.kill_requested`` each)."""

    requested_by: str = "anonymous"
    reason: str = ""


class JobFinished(_JobEvent, frozen=True, kw_only=True, tag="job.finished"):
    """Every rank ended; ``state`` aggregates them: ``completed`` when all completed,
    ``stopped`` after a stop, else ``failed`` (``failed_rank`` is the first that did not
    complete, ``message`` says how)."""

    state: JobFinalState
    message: str = ""
    failed_rank: NonNegInt | None = None


class VolumeCreated(Event, frozen=True, kw_only=True, tag="volume.created"):
    """A named folder of the shared storage (``<shared_dir>/volumes/<name>``) was made,
    for jobs to mount (``volumes:`` in a job file)."""

    name: NonEmptyStr
    created_by: str = "anonymous"

    @property
    def stream(self) -> str:
        return f"volume:{self.name}"


# -- identity ----------------------------------------------------------------------------------

Role = Literal["admin", "user"]


class _UserEvent(Event, frozen=True, kw_only=True):
    name: NonEmptyStr

    @property
    def stream(self) -> str:
        return f"user:{self.name}"


class UserCreated(_UserEvent, frozen=True, kw_only=True, tag="user.created"):
    """A user account was made (the first admin by the host itself, at first start)."""

    role: Role = "user"


class UserRoleChanged(_UserEvent, frozen=True, kw_only=True, tag="user.role_changed"):
    """A user's role changed."""

    role: Role


class UserDisabled(_UserEvent, frozen=True, kw_only=True, tag="user.disabled"):
    """A user can no longer authenticate (their tokens stop working; tasks stay)."""

    reason: str = ""


class _TokenEvent(Event, frozen=True, kw_only=True):
    token_id: NonEmptyStr

    @property
    def stream(self) -> str:
        return f"token:{self.token_id}"


class TokenIssued(_TokenEvent, frozen=True, kw_only=True, tag="token.issued"):
    """An API token was made; only its secret's SHA-256 is kept (events.credentials).

    ``kind``: ``user`` (acts as ``user``), ``agent`` (an enrolled node's credential,
    ``node`` names it), ``join`` (exchanged for an agent credential, ``uses`` times).
    """

    user: NonEmptyStr
    token_kind: Literal["user", "agent", "join"]
    sha256: NonEmptyStr
    name: str = ""
    expires_at_us: NonNegInt | None = None
    issued_by: str = ""
    uses: NonNegInt | None = None
    node: str | None = None


class TokenRevoked(_TokenEvent, frozen=True, kw_only=True, tag="token.revoked"):
    """A token stops working from now on."""

    reason: str = ""


class AuthFailed(Event, frozen=True, kw_only=True, tag="auth.failed"):
    """Requests were refused for a missing, invalid, expired or revoked credential.

    Rate-limited: one event per client address and window, counting the refusals
    since the last one recorded, so a flood cannot flood the log.
    """

    client_address: str = ""
    route: str = ""
    reason: str = ""
    count: NonNegInt = 1

    @property
    def stream(self) -> str:
        return "auth:failures"


class NodeEnrolled(_NodeEvent, frozen=True, kw_only=True, tag="node.enrolled"):
    """A node exchanged a join token for its own agent credential: the name is its."""

    token_id: NonEmptyStr  # the agent credential's id
    join_token_id: str = ""


class NodeRevoked(_NodeEvent, frozen=True, kw_only=True, tag="node.revoked"):
    """A node's credential no longer works, and its name stays refused."""

    reason: str = ""


class NodeForgotten(_NodeEvent, frozen=True, kw_only=True, tag="node.forgotten"):
    """An admin removed a node that is offline and will not return; its tasks still
    holding resources there were given up in the same commit. If its agent ever says
    hello again, it registers as a new node."""

    reason: str = ""


class _KeyEvent(Event, frozen=True, kw_only=True):
    key_id: NonEmptyStr
    user: NonEmptyStr

    @property
    def stream(self) -> str:
        return f"user:{self.user}"


class SshKeyAdded(_KeyEvent, frozen=True, kw_only=True, tag="ssh_key.added"):
    """A user registered an SSH public key (for the VPS SSH gateway)."""

    key_type: NonEmptyStr
    public_key: NonEmptyStr
    fingerprint: NonEmptyStr
    comment: str = ""


class SshKeyRemoved(_KeyEvent, frozen=True, kw_only=True, tag="ssh_key.removed"):
    """A user's SSH public key was removed."""


# -- environments and SSH ------------------------------------------------------------------


class EnvPackaged(_EnvEvent, frozen=True, kw_only=True, tag="env.packaged"):
    """The host committed an environment container and saved it as a tarball."""

    image: str
    tarball: str
    timestamp: NonNegInt
    size_bytes: NonNegInt
    sha256: str
    requested_by: str = "anonymous"


class EnvSynced(_EnvEvent, frozen=True, kw_only=True, tag="env.synced"):
    """A node loaded an environment tarball into its Docker engine."""

    node: NonEmptyStr
    timestamp: NonNegInt
    sha256: str = ""
    duration_s: float = 0.0


class EnvContainerCreated(_EnvEvent, frozen=True, kw_only=True, tag="env.container_created"):
    """The host created an environment's persistent container from a local image."""

    image: NonEmptyStr
    container_id: str = ""
    requested_by: str = "anonymous"


class EnvContainerStarted(_EnvEvent, frozen=True, kw_only=True, tag="env.container_started"):
    """An environment's container was started."""

    requested_by: str = "anonymous"


class EnvContainerStopped(_EnvEvent, frozen=True, kw_only=True, tag="env.container_stopped"):
    """An environment's container was stopped."""

    requested_by: str = "anonymous"


class EnvContainerDeleted(_EnvEvent, frozen=True, kw_only=True, tag="env.container_deleted"):
    """An environment's container was removed (its tarballs stay)."""

    requested_by: str = "anonymous"


class EnvShellOpened(_EnvEvent, frozen=True, kw_only=True, tag="env.shell_opened"):
    """Someone opened an interactive shell in an environment's container."""

    session_id: NonEmptyStr
    requested_by: str = "anonymous"
    client_address: str = ""


class EnvShellClosed(_EnvEvent, frozen=True, kw_only=True, tag="env.shell_closed"):
    """An interactive shell in an environment's container ended."""

    session_id: NonEmptyStr
    exit_code: int | None = None


class VpsReady(_TaskEvent, frozen=True, kw_only=True, tag="vps.ready"):
    """A VPS task's container is up, and where its SSH daemon listens (or why none does).

    The runner reports it once the published port answers with an SSH banner, or once it
    knows the image has no ``sshd`` (then ``sshd`` is false and ``message`` says so: the
    VPS is reached with ``hakuriver vps shell``). A runner that restarts and re-adopts
    the container reports it again, with the port the engine has now. Changes no state.
    """

    node: NonEmptyStr
    address: str = ""  # the runner's address the port is published on
    ssh_port: Annotated[int, Meta(ge=1, le=65535)] | None = None
    sshd: bool = True
    message: str = ""


SshVia = Literal["gateway", "shell"]


class _SshEvent(Event, frozen=True, kw_only=True):
    session_id: NonEmptyStr
    task_id: NonEmptyStr

    @property
    def stream(self) -> str:
        return f"ssh:{self.session_id}"


class SshSessionOpened(_SshEvent, frozen=True, kw_only=True, tag="ssh.session_opened"):
    """A user was tunnelled through the SSH gateway to a VPS task (``via="gateway"``),
    or opened ``hakuriver vps shell`` in it through the agent link (``via="shell"``)."""

    user: str = "anonymous"
    client_address: str = ""
    via: SshVia = "gateway"
    node: str = ""
    address: str = ""  # where the gateway connected: the runner's address ...
    port: NonNegInt = 0  # ... and the VPS port there
    key_fingerprint: str = ""  # the key the user authenticated with at the gateway


class SshSessionClosed(_SshEvent, frozen=True, kw_only=True, tag="ssh.session_closed"):
    """An SSH tunnel (or a ``vps shell``) to a VPS task ended.

    ``bytes_in``: from the user towards the VPS; ``bytes_out``: from the VPS to the user.
    ``reason``: who ended it (``client closed``, ``vps closed``, ``task ended``,
    ``gateway stopped``, an error).
    """

    bytes_in: NonNegInt = 0
    bytes_out: NonNegInt = 0
    duration_s: Annotated[float, Meta(ge=0)] = 0.0
    reason: str = ""
    user: str = ""
    via: SshVia = "gateway"


AnyEvent = (
    NodeRegistered
    | NodeHeartbeat
    | NodeOffline
    | NodeOnline
    | TaskSubmitted
    | TaskPlaced
    | TaskDispatched
    | TaskStarted
    | TaskPaused
    | TaskResumed
    | TaskKillRequested
    | TaskPauseRequested
    | TaskResumeRequested
    | TaskFinished
    | TaskLost
    | TaskUnreachable
    | TaskReconnected
    | EnvPackaged
    | EnvSynced
    | EnvContainerCreated
    | EnvContainerStarted
    | EnvContainerStopped
    | EnvContainerDeleted
    | EnvShellOpened
    | EnvShellClosed
    | VpsReady
    | SshSessionOpened
    | SshSessionClosed
    | UserCreated
    | UserRoleChanged
    | UserDisabled
    | TokenIssued
    | TokenRevoked
    | AuthFailed
    | NodeEnrolled
    | NodeRevoked
    | NodeForgotten
    | SshKeyAdded
    | SshKeyRemoved
    | JobSubmitted
    | JobPlaced
    | JobPhase
    | JobSetupDone
    | JobStopRequested
    | JobFinished
    | VolumeCreated
)

EVENT_TYPES: dict[str, type[Event]] = {
    msgspec.inspect.type_info(cls).tag: cls  # type: ignore[attr-defined]
    for cls in AnyEvent.__args__
}

# The current schema version of each kind. Bump one (and add an upcaster in
# events.codec) only for a change old readers cannot absorb.
SCHEMA_VERSIONS: dict[str, int] = dict.fromkeys(EVENT_TYPES, 1)


def kind_of(event: Event) -> str:
    """The stable tag of an event instance."""
    return event.__struct_config__.tag  # type: ignore[return-value]
