"""The agent link: the messages a node agent and the control plane exchange.

One websocket per agent carries everything (DESIGN §5), each message one
binary frame of msgpack, a tagged union on ``type``:

agent → host
  ``Hello``      first message: who the node is, what it has, what it runs.
  ``EventBatch`` events from the agent's durable outbox; the host appends the
                 batch (all or nothing) and answers ``Ack`` or ``Nack``.
  ``Heartbeat``  the node's usage sample. Recorded as ``node.heartbeat``; a sample
                 is not worth keeping across an outage, so it never enters the outbox.

host → agent
  ``Welcome``    answer to ``Hello``: the timing to use.
  ``Ack``        a batch is durably committed; the agent drops it from its outbox.
  ``Nack``       a batch was refused (the reason names the event); nothing was recorded.
                 With ``retry``, the host could not write its log (a full disk): the
                 agent keeps the events and sends them again later, from the oldest.
  ``Run`` / ``Kill`` / ``Pause`` / ``Resume`` / ``JobGo``
                 commands, each naming its task so the agent applies it idempotently.

A terminal in a VPS task's container (``hakuriver vps shell``), relayed by the host
between the user's websocket and the agent, each message naming its ``session``:

host → agent  ``ShellOpen`` (task, size, TERM), ``ShellInput`` (keystrokes),
              ``ShellResize``, ``ShellClose`` (hang up).
agent → host  ``ShellOutput`` (terminal bytes), ``ShellExit`` (the shell ended, or could
              not start: ``error`` says why). Exactly one ``ShellExit`` ends a session.

Reconciliation after a (re)connect: the agent's ``Hello`` lists the tasks it
runs and the tasks whose final report is still in its outbox; the host records
``task.reconnected`` for its ``unknown`` tasks among them, re-sends ``Run`` for tasks
placed there that the agent does not know, ``Kill`` for tasks the agent runs that the
host considers ended, and records ``task.lost`` for tasks the host thought were there
and the agent has no trace of (``control_plane.commands.nodes.decide_hello``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from events.config import MAX_ACCOUNTS, NODE_NAME_MAX, NODE_NAME_PATTERN, RunTasksAs
from events.envelope import NewEvent
from events.types import GpuInfo, NumaNode, TaskSpec

LINK_VERSION = 1

# A node's name (events/config.py has the rule).
NodeName = Annotated[str, Meta(min_length=1, max_length=NODE_NAME_MAX, pattern=NODE_NAME_PATTERN)]

# What one machine may register: more than any probe reports for a real one, so a
# registration past them is a forgery or a bug, refused with the field it names.
MAX_CORES = 4096
MAX_MEMORY_BYTES = 64 << 40  # 64 TiB
MAX_GPUS = 64
MAX_NUMA_NODES = 256
# How much one agent may send at once: a frame (the websocket's max_size on the agent
# route), a batch's bytes and events (``[runner] max_batch`` stays within it). The host
# records the batches of one agent that wait together as one (at most four batches:
# control_plane.agents.MAX_TOGETHER_EVENTS), one such group at a time, so a commit holds
# a bounded number per connected agent: bounded work for the writer and the event loop.
MAX_FRAME_BYTES = 8 << 20
MAX_BATCH_BYTES = 4 << 20
MAX_BATCH_EVENTS = 1000
# Tasks an agent may list in its hello as running, or as reported.
MAX_HELLO_TASKS = 50_000

_Text = Annotated[str, Meta(max_length=256)]
# A Unix account name (the user names HakuRiver accepts are at most 64 characters).
_Account = Annotated[str, Meta(min_length=1, max_length=64)]
_TaskId = Annotated[str, Meta(min_length=1, max_length=128)]


class Message(Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every link message."""


# -- agent → host --------------------------------------------------------------------------


class AgentTask(Struct, frozen=True, kw_only=True):
    """A task the agent is watching right now."""

    task_id: _TaskId
    pid: int | None = None
    container_id: _Text | None = None
    paused: bool = False


class Hello(Message, frozen=True, kw_only=True, tag="hello"):
    """Who the node is, what it has, what it runs; the host answers ``Welcome``."""

    link_version: int = LINK_VERSION
    node: NodeName
    address: _Text = ""
    cores: Annotated[int, Meta(ge=0, le=MAX_CORES)]
    memory_bytes: Annotated[int, Meta(ge=0, le=MAX_MEMORY_BYTES)]
    numa: Annotated[tuple[NumaNode, ...], Meta(max_length=MAX_NUMA_NODES)] = ()
    gpus: Annotated[tuple[GpuInfo, ...], Meta(max_length=MAX_GPUS)] = ()
    agent_version: _Text = ""
    executors: Annotated[tuple[_Text, ...], Meta(max_length=8)] = ("process",)
    running: Annotated[tuple[AgentTask, ...], Meta(max_length=MAX_HELLO_TASKS)] = ()
    # tasks whose final event waits in the outbox
    reported: Annotated[tuple[_TaskId, ...], Meta(max_length=MAX_HELLO_TASKS)] = ()
    outbox_pending: int = 0
    # ``[runner] run_tasks_as``; in ``owner`` mode, the node's account names (sorted), or
    # None when it has more than MAX_ACCOUNTS (then only a task's start checks its owner).
    run_tasks_as: RunTasksAs = "runner"
    accounts: Annotated[tuple[_Account, ...], Meta(max_length=MAX_ACCOUNTS)] | None = None
    # Whether its process tasks can have ``--mount`` binds (a mount namespace each:
    # the runner is root and may unshare one). An older agent says nothing: no.
    process_mounts: bool = False


class EventBatch(Message, frozen=True, kw_only=True, tag="events"):
    """Events from the outbox, in order; ``batch`` numbers the frame for its ack.

    ``body`` is a JSON array of ``NewEvent`` exactly as the outbox stores them, so
    the agent sends them without decoding and re-encoding.
    """

    batch: int
    body: bytes


class Heartbeat(Message, frozen=True, kw_only=True, tag="heartbeat"):
    """A usage sample, recorded as a ``node.heartbeat`` event (``event`` is one)."""

    event: NewEvent


# -- host → agent --------------------------------------------------------------------------


class Welcome(Message, frozen=True, kw_only=True, tag="welcome"):
    """The host accepted the agent; the timing it expects."""

    heartbeat_interval_s: float
    kill_grace_s: float
    last_seq: int = 0


class Ack(Message, frozen=True, kw_only=True, tag="ack"):
    """Batch ``batch`` is committed; ``seqs`` are its events' positions in the log."""

    batch: int
    seqs: list[int]


class Nack(Message, frozen=True, kw_only=True, tag="nack"):
    """Batch ``batch`` was refused whole; ``reason`` names the offending event.

    ``retry``: nothing is wrong with the batch, the host could not write it now (its log
    is on a full disk). The agent keeps its events and, after a pause, sends again from
    its oldest unacknowledged event; the host refuses (``retry``) every batch after the
    failed one until that resend comes, so the log keeps the order they were sent in.
    """

    batch: int
    reason: str
    retry: bool = False


class Run(Message, frozen=True, kw_only=True, tag="run"):
    """Start a task with the resources it was placed on."""

    task_id: str
    spec: TaskSpec
    cores: int
    memory_bytes: int | None = None
    gpu_ids: tuple[int, ...] = ()
    numa_id: int | None = None


class Kill(Message, frozen=True, kw_only=True, tag="kill"):
    """Stop a task: SIGTERM (or docker stop), forced after ``grace_s``."""

    task_id: str
    grace_s: float = 5.0
    reason: str = ""


class Pause(Message, frozen=True, kw_only=True, tag="pause"):
    """Freeze a task."""

    task_id: str


class Resume(Message, frozen=True, kw_only=True, tag="resume"):
    """Continue a paused task."""

    task_id: str


class JobGo(Message, frozen=True, kw_only=True, tag="job_go"):
    """A job's rank may run: every rank's setup succeeded (``events.jobs``). Idempotent:
    the host sends it again after a reconnection, for ranks of a job in its run phase."""

    task_id: str


# -- a shell in a VPS task (both ways) -----------------------------------------------------

# Terminal bytes per message, either way (a sender splits larger writes).
MAX_SHELL_CHUNK = 64 << 10
# Shells one agent serves at once (the host refuses more with a clear error).
MAX_SHELLS = 32
_Session = Annotated[str, Meta(min_length=1, max_length=64)]
_Rows = Annotated[int, Meta(ge=1, le=1000)]
_Term = Annotated[str, Meta(max_length=64, pattern=r"^[A-Za-z0-9._+-]*$")]
_Chunk = Annotated[bytes, Meta(max_length=MAX_SHELL_CHUNK)]


class ShellOpen(Message, frozen=True, kw_only=True, tag="shell_open"):
    """Open an interactive shell (a TTY, ``/bin/sh`` or better) in a VPS task's container."""

    session: _Session
    task_id: _TaskId
    rows: _Rows = 24
    cols: _Rows = 80
    term: _Term = "xterm"


class ShellInput(Message, frozen=True, kw_only=True, tag="shell_input"):
    """Bytes typed into a shell."""

    session: _Session
    data: _Chunk


class ShellResize(Message, frozen=True, kw_only=True, tag="shell_resize"):
    """The user's terminal changed size."""

    session: _Session
    rows: _Rows
    cols: _Rows


class ShellClose(Message, frozen=True, kw_only=True, tag="shell_close"):
    """Hang the shell up (the user left); the agent answers ``ShellExit``."""

    session: _Session


class ShellOutput(Message, frozen=True, kw_only=True, tag="shell_output"):
    """Bytes the shell wrote to its terminal."""

    session: _Session
    data: _Chunk


class ShellExit(Message, frozen=True, kw_only=True, tag="shell_exit"):
    """The shell ended (``code``), or never started (``error`` says why)."""

    session: _Session
    code: int | None = None
    error: Annotated[str, Meta(max_length=1024)] = ""


AgentMessage = Hello | EventBatch | Heartbeat | ShellOutput | ShellExit
HostMessage = (
    Welcome
    | Ack
    | Nack
    | Run
    | Kill
    | Pause
    | Resume
    | JobGo
    | ShellOpen
    | ShellInput
    | ShellResize
    | ShellClose
)

_encoder = msgspec.msgpack.Encoder()
_agent_decoder = msgspec.msgpack.Decoder(AgentMessage)
_host_decoder = msgspec.msgpack.Decoder(HostMessage)


def encode(message: Message) -> bytes:
    """One frame's bytes."""
    return _encoder.encode(message)


def decode_agent_message(frame: bytes) -> AgentMessage:
    """A frame from an agent (raises ``msgspec.ValidationError`` / ``DecodeError``)."""
    message: AgentMessage = _agent_decoder.decode(frame)
    return message


def decode_host_message(frame: bytes) -> HostMessage:
    """A frame from the host (raises ``msgspec.ValidationError`` / ``DecodeError``)."""
    message: HostMessage = _host_decoder.decode(frame)
    return message
