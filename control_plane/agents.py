"""The host's side of the agent link: one ``AgentSession`` per connected node agent.

The protocol is in ``events/link.py``. A thin adapter: the agent's ``Hello`` becomes a
``NodeHello`` command (registration or return, reconciliation, then ``Welcome`` and the
commands reconciliation calls for), each event batch a ``ReportFacts`` (recorded whole
or not at all, and acknowledged after its commit). The decisions are in
control_plane/commands/nodes.py; ``ControlPlane.execute`` records and sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import msgspec

from control_plane.access import Principal
from control_plane.commands import NodeHello, NodeNotOnline, ReportFacts
from control_plane.errors import DomainError, StoreFailing
from control_plane.hub import ControlPlane
from events import link
from events.codec import decode_new_events
from events.envelope import NewEvent
from events.store import InvalidEvent
from events.types import NodeHeartbeat, kind_of

log = logging.getLogger("hakuriver.host.agents")

HELLO_TIMEOUT_S = 10.0
# What an agent may report; everything else is the host's to decide.
AGENT_KINDS = frozenset(
    {"task.started", "task.paused", "task.resumed", "task.finished", "node.heartbeat", "env.synced"}
)


class Socket(Protocol):
    """The part of a websocket a session uses (Sanic's, or a test double)."""

    async def send(self, data: bytes) -> None: ...

    async def recv(self, timeout: float | None = None) -> str | bytes | None: ...  # noqa: ASYNC109

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class LinkRefused(Exception):
    """The agent broke the protocol; the session ends with this reason."""


def check_agent_event(node: str, index: int, new: NewEvent) -> None:
    """Refuse an event an agent for ``node`` may not report (raises ``LinkRefused``)."""
    kind = kind_of(new.event)
    where = f"events[{index}] ({kind})"
    if new.source != node:
        raise LinkRefused(f"{where}: source {new.source!r} is not this node {node!r}")
    if kind not in AGENT_KINDS:
        raise LinkRefused(f"{where}: an agent may not report {kind}")
    reported_node = getattr(new.event, "node", node)
    if reported_node not in (node, None):
        raise LinkRefused(f"{where}: names node {reported_node!r}, this link is {node!r}")
    if new.event.actor is not None:
        raise LinkRefused(f"{where}: an agent cannot name an actor (only the host does)")


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

    async def close(self, reason: str) -> None:
        """Close the link (the agent will reconnect and say hello again)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            await self.socket.close(1001, reason[:120])

    # -- the conversation ------------------------------------------------------------------

    async def welcome(self, hello: link.Hello) -> None:
        """Record the registration or return, reconcile; ``Welcome`` and commands follow."""
        await self.cp.execute(NodeHello(hello=hello))

    async def handle(self, message: link.AgentMessage) -> None:
        """One message after the hello."""
        match message:
            case link.EventBatch(batch=number, body=body):
                try:
                    events = decode_new_events(body)
                    if self._resend_from is not None:
                        if not events or events[0].id != self._resend_from:
                            await self.send(
                                link.Nack(batch=number, reason="sent before a resend", retry=True)
                            )
                            return
                        self._resend_from = None
                    for i, new in enumerate(events):
                        check_agent_event(self.node, i, new)
                    outcome = await self.cp.execute(
                        ReportFacts(node=self.node, events=tuple(events))
                    )
                except StoreFailing as exc:
                    # Nothing wrong with the batch: the agent keeps it and sends it again.
                    self._resend_from = events[0].id
                    await self.send(link.Nack(batch=number, reason=exc.message, retry=True))
                    return
                except (msgspec.ValidationError, msgspec.DecodeError, LinkRefused) as exc:
                    await self.send(link.Nack(batch=number, reason=str(exc)))
                    log.warning("refused a batch from %s: %s", self.node, exc)
                    return
                except InvalidEvent as exc:
                    await self.send(link.Nack(batch=number, reason=str(exc)))
                    return
                except NodeNotOnline as exc:
                    # Not acknowledged: the agent keeps the batch and sends it again after
                    # the hello that brings its tasks back.
                    raise LinkRefused(exc.message) from None
                except DomainError as exc:
                    # A batch with a report this node may not make (another node's task):
                    # refused whole, nothing of it recorded.
                    await self.send(link.Nack(batch=number, reason=str(exc)))
                    log.warning("refused a batch from %s: %s", self.node, exc)
                    return
                await self.send(link.Ack(batch=number, seqs=outcome.seqs))
            case link.Heartbeat(event=new):
                if not isinstance(new.event, NodeHeartbeat):
                    raise LinkRefused("a heartbeat frame must carry node.heartbeat")
                check_agent_event(self.node, 0, new)
                # A sample from a node declared offline is not worth a reconnection, nor
                # one the log cannot take now (the store logs that outage).
                with contextlib.suppress(NodeNotOnline, StoreFailing):
                    await self.cp.execute(ReportFacts(node=self.node, events=(new,)))
            case link.Hello():
                raise LinkRefused("hello sent twice")


async def serve_agent(cp: ControlPlane, socket: Socket, principal: Principal) -> None:
    """Run one agent's link until it closes; ``principal`` is its enrolled credential, and
    the hello must be for the node the credential was issued to."""
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
    except (LinkRefused, msgspec.ValidationError, msgspec.DecodeError) as exc:
        with contextlib.suppress(Exception):
            await socket.close(1008, str(exc)[:120])
        return
    session = AgentSession(cp, socket, hello.node)
    await cp.attach(hello.node, session)
    log.info("agent %s connected (%d running)", hello.node, len(hello.running))
    try:
        await session.welcome(hello)
        while not session.closed:
            frame = await socket.recv()
            if frame is None:
                break
            cp.heard_from(hello.node)
            if not isinstance(frame, bytes):
                raise LinkRefused("text frames are not part of the protocol")
            await session.handle(link.decode_agent_message(frame))
    except (LinkRefused, msgspec.ValidationError, msgspec.DecodeError) as exc:
        log.warning("closing the link to %s: %s", hello.node, exc)
        await session.close(str(exc))
    except StoreFailing as exc:
        # Its hello could not be recorded (the store logs the outage): it says hello again
        # after its back-off.
        log.info("closing the link to %s: %s", hello.node, exc.message)
        await session.close(exc.message)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("agent link to %s failed", hello.node)
    finally:
        session.closed = True
        cp.detach(hello.node, session)
        log.info("agent %s disconnected", hello.node)
