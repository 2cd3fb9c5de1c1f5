"""The host's side of the agent link: one ``AgentSession`` per connected node agent.

The protocol is in ``events/link.py``. A thin adapter: the agent's ``Hello`` becomes a
``NodeHello`` command (registration or return, reconciliation, then ``Welcome`` and the
commands reconciliation calls for), each event batch a ``ReportFacts`` (recorded whole
or not at all, and acknowledged after its commit; batches that wait together are one
``ReportFacts``, one commit: ``AgentSession._report_together``), a ``vps shell``'s
output and exit go to its session (control_plane/vps_shells.py). The decisions are in
control_plane/commands/nodes.py; ``ControlPlane.execute`` records and sends.

What an agent sends is checked before it reaches a decision: its hello's resources
are bounded (``events.link.MAX_CORES``...), a batch holds at most
``MAX_BATCH_EVENTS`` events (a frame at most ``MAX_FRAME_BYTES``, the websocket's
limit), every event must be one an agent may report, about itself, and its schema
version is the host's to set (the host encodes the payload it stores).

Receiving never waits for a commit: the receive loop notes each frame as the node's
liveness (``ControlPlane.heard_from``) and hands batches to the session's own worker,
in order, and heartbeats to a recorder that keeps at most one in flight (a sample is
not worth queuing). So a flood of other agents' batches delays this agent's
acknowledgements, never its liveness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Protocol

import msgspec

from control_plane.access import Principal
from control_plane.commands import NodeHello, NodeNotOnline, ReportFacts
from control_plane.errors import DomainError, StoreFailing
from control_plane.hub import ControlPlane, Outcome
from events import link
from events.codec import decode_new_events
from events.envelope import NewEvent
from events.store import Encoded, InvalidEvent, encode_checked
from events.types import SCHEMA_VERSIONS, NodeHeartbeat, kind_of

log = logging.getLogger("hakuriver.host.agents")

HELLO_TIMEOUT_S = 10.0
# Batches received and not yet taken for recording; a well-behaved agent keeps at most
# node_agent.session.MAX_IN_FLIGHT (8) unanswered, those being recorded included.
MAX_QUEUED_BATCHES = 8
# Batches waiting together are recorded as one (one decision, one commit): at most this
# many events at once, so a commit still holds a bounded number per agent.
MAX_TOGETHER_EVENTS = 4 * link.MAX_BATCH_EVENTS
# What an agent may report; everything else is the host's to decide.
AGENT_KINDS = frozenset(
    {
        "task.started",
        "task.paused",
        "task.resumed",
        "task.finished",
        "node.heartbeat",
        "env.synced",
        "vps.ready",
        "job.setup_done",
    }
)


class Socket(Protocol):
    """The part of a websocket a session uses (Sanic's, or a test double)."""

    async def send(self, data: bytes) -> None: ...

    async def recv(self, timeout: float | None = None) -> str | bytes | None: ...  # noqa: ASYNC109

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    async def ping(self, data: bytes | None = None) -> asyncio.Future[None]: ...


class LinkRefused(Exception):
    """The agent broke the protocol; the session ends with this reason."""


def check_agent_event(node: str, index: int, new: NewEvent) -> NewEvent:
    """The event as the host records it, or ``LinkRefused`` if an agent for ``node`` may
    not report it. Its schema version is set to this build's (the host stores the
    payload as it re-encodes it), whatever the agent claimed."""
    kind = kind_of(new.event)
    where = f"events[{index}] ({kind})"
    if new.source != node:
        raise LinkRefused(f"{where}: source {new.source!r} is not this node {node!r}")
    if kind not in AGENT_KINDS:
        raise LinkRefused(f"{where}: an agent may not report {kind}")
    if hasattr(new.event, "node"):
        # An agent names itself on every event that has a node: one left out is refused,
        # not taken as this node's (decide_report checks the task is placed here).
        reported_node = new.event.node
        if reported_node is None:
            raise LinkRefused(f"{where}: node is missing; an agent names itself ({node!r})")
        if reported_node != node:
            raise LinkRefused(f"{where}: names node {reported_node!r}, this link is {node!r}")
    if new.event.actor is not None:
        raise LinkRefused(f"{where}: an agent cannot name an actor (only the host does)")
    version = SCHEMA_VERSIONS[kind]
    return (
        new
        if new.schema_version == version
        else msgspec.structs.replace(new, schema_version=version)
    )


def check_hello(hello: link.Hello) -> None:
    """Refuse a hello whose machine cannot be (``LinkRefused``; the type bounds the rest)."""
    gpu_ids = [gpu.id for gpu in hello.gpus]
    if len(set(gpu_ids)) != len(gpu_ids):
        raise LinkRefused(f"gpus: ids {gpu_ids} are not unique")
    numa_ids = [numa.id for numa in hello.numa]
    if len(set(numa_ids)) != len(numa_ids):
        raise LinkRefused(f"numa: ids {numa_ids} are not unique")
    numa_cpus = sum(len(numa.cpus) for numa in hello.numa)
    if numa_cpus > link.MAX_CORES:
        raise LinkRefused(f"numa: {numa_cpus} CPUs in all, more than {link.MAX_CORES}")


class _Queued:
    """A batch waiting for the worker, with the outcome of its check once made
    (``AgentSession._check``): its events as the host records them, or the error that
    refuses it."""

    __slots__ = ("batch", "checked", "encoded", "error")

    def __init__(self, batch: link.EventBatch) -> None:
        self.batch = batch
        self.checked: tuple[NewEvent, ...] | None = None
        self.error: Exception | None = None
        # The checked events' payloads, made with the check (None: one does not encode;
        # it is then refused at the append, as it would be without this).
        self.encoded: Encoded | None = None


class AgentSession:
    """One connected agent."""

    def __init__(self, cp: ControlPlane, socket: Socket, node: str) -> None:
        self.cp = cp
        self.socket = socket
        self.node = node
        self._send_lock = asyncio.Lock()
        self.closed = False
        # The link is attached before its hello is decided, so another decision may send
        # first; the agent expects Welcome first: what comes earlier waits for it.
        self._before_welcome: list[bytes] | None = []
        # Batches received, waiting for the worker (in order); the heartbeat being recorded.
        # Each is checked (decoded, each event's right to be reported) as it arrives if the
        # log is writing the batches before it meanwhile (the loop is free then), else at
        # its turn: the check's outcome, the events or the error, waits with it.
        self._batches: deque[_Queued] = deque()
        self._batch_ready = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._beat: asyncio.Task[None] | None = None
        self.heartbeats_skipped = 0
        # After a batch the log could not take (a full disk): the id of its first event.
        # Later batches were sent before the agent knew, and are refused (retry) until
        # the agent sends again from that event, so its events keep their order.
        self._resend_from: str | None = None

    async def send(self, message: link.Message) -> bool:
        """Send a message (held until the Welcome went out); False if the link is gone."""
        if self.closed:
            return False
        frame = link.encode(message)
        try:
            async with self._send_lock:
                if self._before_welcome is not None and not isinstance(message, link.Welcome):
                    self._before_welcome.append(frame)
                    return True
                await self.socket.send(frame)
                held, self._before_welcome = self._before_welcome or [], None
                for earlier in held:
                    await self.socket.send(earlier)
        except Exception:
            self.closed = True
            return False
        return True

    async def close(self, reason: str, code: int = 1001) -> None:
        """Close the link (the agent will reconnect and say hello again)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            await self.socket.close(code, reason[:120])

    async def alive(self, within_s: float) -> bool:
        """Whether the agent behind this link still answers (a websocket ping's pong)."""
        if self.closed:
            return False
        try:
            async with asyncio.timeout(within_s):
                pong = await self.socket.ping()
                await pong
        except Exception:  # no answer in time, or the link is already gone
            return False
        return True

    # -- the conversation ------------------------------------------------------------------

    async def welcome(self, hello: link.Hello) -> None:
        """Record the registration or return, reconcile; ``Welcome`` and commands follow."""
        await self.cp.execute(NodeHello(hello=hello))

    async def serve(self) -> None:
        """Receive until the link closes: each frame is liveness; nothing here waits for a
        commit (batches go to the worker, heartbeats to the recorder)."""
        try:
            while not self.closed:
                frame = await self.socket.recv()
                if frame is None:
                    break
                self.cp.heard_from(self.node)
                if not isinstance(frame, bytes):
                    raise LinkRefused("text frames are not part of the protocol")
                self.take(link.decode_agent_message(frame))
        finally:
            for task in (self._worker, self._beat):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

    def take(self, message: link.AgentMessage) -> None:
        """One message after the hello, handed to whoever deals with it."""
        match message:
            case link.EventBatch():
                if len(self._batches) >= MAX_QUEUED_BATCHES:
                    raise LinkRefused(
                        f"more than {MAX_QUEUED_BATCHES} batches waiting for their"
                        " acknowledgement; wait for one before sending another"
                    )
                queued = _Queued(message)
                if self.cp.store.writing:
                    self._check(queued)
                self._batches.append(queued)
                self._batch_ready.set()
                if self._worker is None:
                    self._worker = asyncio.create_task(
                        self._work(), name=f"hakuriver-agent-{self.node}-batches"
                    )
            case link.Heartbeat(event=new):
                if not isinstance(new.event, NodeHeartbeat):
                    raise LinkRefused("a heartbeat frame must carry node.heartbeat")
                beat = check_agent_event(self.node, 0, new)
                if self._beat is not None and not self._beat.done():
                    # The previous sample is still being recorded (a busy log): this one
                    # is skipped; its arrival already counted as liveness.
                    self.heartbeats_skipped += 1
                    return
                self._beat = asyncio.create_task(
                    self._record_heartbeat(beat), name=f"hakuriver-agent-{self.node}-heartbeat"
                )
            case link.ShellOutput() | link.ShellExit():
                # A vps shell's bytes: queued for its client, never waited on here.
                self.cp.shells.deliver(self.node, message)
            case link.Hello():
                raise LinkRefused("hello sent twice")

    async def handle(self, message: link.AgentMessage) -> None:
        """Deal with one message to its end: a batch reported (answered), a heartbeat
        recorded. The single-step form of ``serve`` + ``take``, which tests drive."""
        if isinstance(message, link.EventBatch):
            await self.report(message)
            return
        self.take(message)
        if self._beat is not None:
            await self._beat

    async def _work(self) -> None:
        """Report the queued batches in the order they came: those waiting together as
        one record (``_report_together``), else one at a time."""
        while not self.closed:
            if not self._batches:
                self._batch_ready.clear()
                await self._batch_ready.wait()
                continue
            together = self._checked_run() if len(self._batches) > 1 else []
            # Taken off the queue before they are answered: the agent sends its next batch
            # as soon as an answer reaches it, and finds room for it here.
            taken = [self._batches.popleft() for _ in range(max(1, len(together)))]
            try:
                if len(together) > 1:
                    await self._report_together(together, taken)
                else:
                    await self.report(taken[0].batch, taken[0])
            except LinkRefused as exc:
                log.warning("closing the link to %s: %s", self.node, exc, extra={"node": self.node})
                await self.close(str(exc))
                return
            except Exception:
                log.exception("agent link to %s failed", self.node, extra={"node": self.node})
                await self.close("the host could not record a batch")
                return

    def _checked_run(self) -> list[tuple[int, tuple[NewEvent, ...]]]:
        """The queued batches, from the oldest, that can be recorded as one: each decoded
        and checked (``_checked``), at most ``MAX_TOGETHER_EVENTS`` in all. It stops before
        the first batch that fails a check (reported alone, and refused, next), and is
        empty while a resend is awaited (its batch is looked at alone)."""
        if self._resend_from is not None:
            return []
        run: list[tuple[int, tuple[NewEvent, ...]]] = []
        total = 0
        for queued in self._batches:
            self._check(queued)
            checked = queued.checked
            if checked is None:  # it failed its check: reported alone, and refused
                break
            if run and total + len(checked) > MAX_TOGETHER_EVENTS:
                break
            run.append((queued.batch.batch, checked))
            total += len(checked)
        return run

    def _check(self, queued: _Queued) -> None:
        """Check a queued batch (``_checked``), once: its events or its error are kept."""
        if queued.checked is not None or queued.error is not None:
            return
        try:
            queued.checked = self._checked(queued.batch)
        except Exception as exc:  # raised again at its turn, where it is dealt with
            queued.error = exc
            return
        with contextlib.suppress(InvalidEvent):
            queued.encoded = encode_checked(queued.checked)

    def _checked(self, batch: link.EventBatch) -> tuple[NewEvent, ...]:
        """A batch's events as the host records them, or why not (``LinkRefused``, a
        decode error): its size, its count, each event an agent of this node may report."""
        if len(batch.body) > link.MAX_BATCH_BYTES:
            raise LinkRefused(f"a batch of {len(batch.body)} bytes; at most {link.MAX_BATCH_BYTES}")
        events = decode_new_events(batch.body)
        if len(events) > link.MAX_BATCH_EVENTS:
            raise LinkRefused(f"{len(events)} events in one batch; at most {link.MAX_BATCH_EVENTS}")
        return tuple(check_agent_event(self.node, i, new) for i, new in enumerate(events))

    async def _report_together(
        self, run: list[tuple[int, tuple[NewEvent, ...]]], batches: list[_Queued]
    ) -> None:
        """Record several checked batches as one ``ReportFacts``: one decision, one append,
        one commit, then an ``Ack`` each, with its own events' seqs. All of them or none
        is recorded (so each batch still is whole or not at all, in order). If the log
        cannot write them, the first is refused for a retry and the others as sent before
        its resend (as one at a time would); if the decision or the store refuses them,
        nothing is recorded and each batch is reported alone, so only the one at fault
        is refused."""
        events = tuple(new for _, checked in run for new in checked)
        encoded: Encoded = {}
        for queued in batches:
            encoded.update(queued.encoded or {})
        try:
            outcome = await self.cp.execute(
                ReportFacts(node=self.node, events=events), encoded=encoded
            )
        except StoreFailing as exc:
            self._resend_from = events[0].id
            await self.send(link.Nack(batch=run[0][0], reason=exc.message, retry=True))
            for number, _ in run[1:]:
                await self.send(link.Nack(batch=number, reason="sent before a resend", retry=True))
            return
        except NodeNotOnline as exc:
            raise LinkRefused(exc.message) from None
        except (DomainError, InvalidEvent, msgspec.ValidationError):
            for queued in batches:
                await self.report(queued.batch, queued)
            return
        seq_of = _fact_seqs(outcome)
        for number, checked in run:
            seqs = [seq_of[new.id] for new in checked if new.id in seq_of]
            await self.send(link.Ack(batch=number, seqs=seqs))

    async def report(self, batch: link.EventBatch, queued: _Queued | None = None) -> None:
        """Record one batch whole (``Ack``) or nothing of it (``Nack`` with the reason).
        ``queued``: the batch's check, made as it arrived (else it is checked here)."""
        number = batch.batch
        try:
            if self._resend_from is not None:
                events = decode_new_events(batch.body)
                if not events or events[0].id != self._resend_from:
                    await self.send(
                        link.Nack(batch=number, reason="sent before a resend", retry=True)
                    )
                    return
                self._resend_from = None
            if queued is None:
                checked = self._checked(batch)
            else:
                self._check(queued)
                if queued.error is not None:
                    raise queued.error
                assert queued.checked is not None
                checked = queued.checked
            outcome = await self.cp.execute(
                ReportFacts(node=self.node, events=checked),
                encoded=None if queued is None else queued.encoded,
            )
        except StoreFailing as exc:
            # Nothing wrong with the batch: the agent keeps it and sends it again.
            self._resend_from = checked[0].id
            await self.send(link.Nack(batch=number, reason=exc.message, retry=True))
            return
        except (msgspec.ValidationError, msgspec.DecodeError, LinkRefused, InvalidEvent) as exc:
            await self.send(link.Nack(batch=number, reason=str(exc)))
            log.warning("refused a batch from %s: %s", self.node, exc, extra={"node": self.node})
            return
        except NodeNotOnline as exc:
            # Not acknowledged: the agent keeps the batch and sends it again after
            # the hello that brings its tasks back.
            raise LinkRefused(exc.message) from None
        except DomainError as exc:
            # A batch with a report this node may not make (another node's task):
            # refused whole, nothing of it recorded.
            await self.send(link.Nack(batch=number, reason=str(exc)))
            log.warning("refused a batch from %s: %s", self.node, exc, extra={"node": self.node})
            return
        seq_of = _fact_seqs(outcome)
        await self.send(
            link.Ack(batch=number, seqs=[seq_of[n.id] for n in checked if n.id in seq_of])
        )

    async def _record_heartbeat(self, beat: NewEvent) -> None:
        try:
            await self.cp.execute(ReportFacts(node=self.node, events=(beat,)))
        except (NodeNotOnline, StoreFailing):
            # A sample from a node declared offline is not worth a reconnection, nor one
            # the log cannot take now (the store logs that outage).
            pass
        except (InvalidEvent, DomainError) as exc:
            log.warning(
                "refused a heartbeat from %s: %s", self.node, exc, extra={"node": self.node}
            )
        except Exception as exc:
            # Liveness does not depend on it (the frame's arrival counted); the log's
            # own trouble is reported where it happens.
            log.warning(
                "could not record a heartbeat from %s: %s",
                self.node,
                exc,
                extra={"node": self.node},
            )


async def serve_agent(
    cp: ControlPlane, socket: Socket, principal: Principal, peer: str = ""
) -> None:
    """Run one agent's link until it closes; ``principal`` is its enrolled credential, and
    the hello must be for the node the credential was issued to. ``peer``: the IP the link
    comes from (the SSH gateway connects to that node there alone)."""
    try:
        frame = await socket.recv(timeout=HELLO_TIMEOUT_S)
        if not isinstance(frame, bytes):
            raise LinkRefused("expected a binary hello frame")
        hello = link.decode_agent_message(frame)
        if not isinstance(hello, link.Hello):
            raise LinkRefused("the first message must be hello")
        if hello.link_version != link.LINK_VERSION:
            raise LinkRefused(
                f"link version {hello.link_version}, this host speaks {link.LINK_VERSION}"
            )
        if hello.node != principal.node:
            raise LinkRefused(f"this credential is node {principal.node}'s, not {hello.node}'s")
        check_hello(hello)
    except (LinkRefused, msgspec.ValidationError, msgspec.DecodeError) as exc:
        log.warning(
            "refused a hello from %s: %s", principal.node, exc, extra={"node": principal.node}
        )
        with contextlib.suppress(Exception):
            await socket.close(1008, str(exc)[:120])
        return
    session = AgentSession(cp, socket, hello.node)
    refusal = await cp.attach(hello.node, session, peer)
    if refusal is not None:
        # Nothing is recorded, nothing is killed: the link that holds the name stays.
        log.warning("refused a hello from %s: %s", hello.node, refusal, extra={"node": hello.node})
        await session.close(refusal, code=1008)
        return
    log.info(
        "agent %s connected (%d running)",
        hello.node,
        len(hello.running),
        extra={"node": hello.node},
    )
    try:
        await session.welcome(hello)
        await session.serve()
    except (LinkRefused, msgspec.ValidationError, msgspec.DecodeError) as exc:
        log.warning("closing the link to %s: %s", hello.node, exc, extra={"node": hello.node})
        await session.close(str(exc))
    except StoreFailing as exc:
        # Its hello could not be recorded (the store logs the outage): it says hello again
        # after its back-off.
        log.info("closing the link to %s: %s", hello.node, exc.message, extra={"node": hello.node})
        await session.close(exc.message)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("agent link to %s failed", hello.node, extra={"node": hello.node})
    finally:
        session.closed = True
        cp.detach(hello.node, session)
        log.info("agent %s disconnected", hello.node, extra={"node": hello.node})


def _fact_seqs(outcome: Outcome) -> dict[str, int]:
    """Each recorded report's seq, by its id. The commit holds, in order, what the host
    adds before the reports (a node's own events, the decision's), the reports, then what
    they let it do (the placements an end makes room for): an ``Ack`` names the reports'
    positions only."""
    facts = outcome.decision.facts
    end = len(outcome.seqs) - len(outcome.decision.after_facts)
    return {
        new.id: seq for new, seq in zip(facts, outcome.seqs[end - len(facts) : end], strict=True)
    }
