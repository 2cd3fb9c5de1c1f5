"""The agent's side of the link to the host: connect, hello, then three loops.

Connect (through a ``Connector``: node_agent/transport.py), send ``Hello`` (machine,
running tasks, tasks whose final report is still in the outbox), wait for ``Welcome``,
then run three loops until the link drops: send outbox batches (a few in flight, each
acknowledged), send heartbeats, apply what the host sends. A lost link is reconnected
with capped exponential backoff, and the agent says hello again; events the host had
not acknowledged are sent again from the outbox (the host's store is idempotent).

The backoff starts over only after a link that stayed up (``STABLE_LINK_S``): a host
that accepts the connection and then drops it at once (it cannot record the hello, a
full disk) sees the agent back off, not reconnect many times a second. A failing link
is logged once per outage, with its traceback at most once.

A batch the host could not write (``Nack`` with ``retry``: its log is on a full disk)
stays in the outbox: the sender waits for the answers to the batches still in flight,
pauses (doubling, with jitter, up to ``[timing] reconnect_max_delay``), then sends again
from the oldest unacknowledged event, until the host takes it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from typing import TYPE_CHECKING

import msgspec
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from events import link
from events.envelope import new_event
from events.pinning import refusal
from node_agent.probes import probe_usage
from node_agent.transport import Connector, Transport

if TYPE_CHECKING:
    from node_agent.agent import Agent

log = logging.getLogger("hakuriver.agent")

AGENT_VERSION = "0.1.0"
# Batches sent and not yet answered: the host records those waiting together as one
# commit (control_plane/agents.py), so while it records some, the next ones wait there
# (issue 19). At most the host's control_plane.agents.MAX_QUEUED_BATCHES.
MAX_IN_FLIGHT = 8
WELCOME_TIMEOUT_S = 10
FIRST_RETRY_S = 0.05
# A link up this long was a working link: the next reconnection starts its backoff over.
STABLE_LINK_S = 10.0
# The first pause before sending again what the host could not write.
FIRST_RESEND_S = 0.25


class HostLink:
    """Keeps one agent connected to the host and carries its frames both ways."""

    def __init__(self, agent: Agent, connect: Connector) -> None:
        self.agent = agent
        self.connect = connect
        self.transport: Transport | None = None  # the open link, if any
        self.connected = asyncio.Event()
        self.connections = 0
        # Set when the outbox has new events or an ack made room for another batch.
        self.wake_sender = asyncio.Event()
        # The host could not write a batch (Nack with retry): the reason, until it takes
        # the events again; and the pause before the next resend.
        self.host_cannot_write: str | None = None
        self.resend_due = False
        self.resend_delay = FIRST_RESEND_S
        self.resends = 0

    async def stay_connected(self) -> None:
        """Connect, serve the link until it drops, retry with backoff; for ever."""
        delay = FIRST_RETRY_S
        url = self.agent.settings.ws_url
        failing = False  # an outage of the link is under way (logged once)
        while True:
            began = asyncio.get_running_loop().time()
            try:
                async with self.connect() as transport:
                    await self._session(transport)
            except asyncio.CancelledError:
                raise
            except InvalidStatus as exc:
                status = exc.response.status_code
                body = bytes(exc.response.body or b"")[:300].decode(errors="replace")
                if status in (401, 403):
                    log.error(
                        "the host refused this runner's credential (HTTP %d: %s); enrol it"
                        " with: hakuriver runner --join TOKEN (an admin makes one with"
                        " hakuriver token create --join); retrying in %.1fs",
                        status,
                        body,
                        delay,
                    )
                else:
                    log.info("link to %s refused (HTTP %d); retrying in %.1fs", url, status, delay)
            except ssl.SSLCertVerificationError as exc:
                pin = self.agent.settings.network.ca_fingerprint or None
                log.warning(
                    "link to %s refused: %s; retrying in %.1fs", url, refusal(exc, pin), delay
                )
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidURI, TimeoutError) as exc:
                log.log(
                    logging.DEBUG if failing else logging.INFO,
                    "link to %s down (%s); retrying in %.1fs",
                    url,
                    exc,
                    delay,
                )
            except Exception:
                if failing:
                    log.debug("link failed again; retrying in %.1fs", delay, exc_info=True)
                else:
                    log.exception("link failed; retrying in %.1fs", delay)
            finally:
                self.transport = None
            self.connected.clear()
            if asyncio.get_running_loop().time() - began >= STABLE_LINK_S:
                # It worked for a while: this is a new outage, retried quickly at first.
                delay, failing = FIRST_RETRY_S, False
            else:
                failing = True
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.agent.settings.timing.reconnect_max_delay)

    def hello(self) -> link.Hello:
        """What the agent tells the host on (re)connecting: its machine and its tasks."""
        agent = self.agent
        machine = agent.machine
        assert machine is not None
        return link.Hello(
            node=agent.node,
            address=agent.settings.network.runner_address,
            cores=machine.cores,
            memory_bytes=machine.memory_bytes,
            numa=machine.numa,
            gpus=machine.gpus,
            agent_version=AGENT_VERSION,
            executors=tuple(agent.executors),
            running=tuple(
                link.AgentTask(task_id=t, pid=pid, paused=t in agent.paused)
                for t, pid in agent.running.items()
            ),
            reported=tuple(set(agent.unacked_final.values())),
            run_tasks_as=agent.settings.runner.run_tasks_as,
            accounts=agent.accounts,
            process_mounts=agent.process_mounts,
        )

    async def _session(self, transport: Transport) -> None:
        agent = self.agent
        self.transport = transport
        await agent.list_accounts()
        await transport.send(link.encode(self.hello()))
        async with asyncio.timeout(WELCOME_TIMEOUT_S):
            frame = await agent.activity.outside(transport.receive())
        if not isinstance(frame, bytes):
            raise ConnectionError("expected a binary welcome frame")
        welcome = link.decode_host_message(frame)
        if not isinstance(welcome, link.Welcome):
            raise ConnectionError(f"expected welcome, got {type(welcome).__name__}")
        agent.heartbeat_interval = welcome.heartbeat_interval_s
        agent.kill_grace = welcome.kill_grace_s
        self.connections += 1
        self.connected.set()
        log.info("connected to %s as %s", agent.settings.ws_url, agent.node)
        in_flight: dict[int, tuple[str, ...]] = {}
        self.resend_due = False  # a new link sends from the oldest event anyway
        start = agent.activity.start
        loops = [
            start(self._send_outbox(transport, in_flight), name="link-outbox"),
            start(self._send_heartbeats(transport), name="link-heartbeats"),
            start(self._receive(transport, in_flight), name="link-receive"),
        ]
        try:
            done, _ = await agent.activity.outside(
                asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            )
            for task in done:
                task.result()
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            # The users of the shells on this link are gone with it.
            await agent.shells.link_dropped(transport)

    async def _send_outbox(
        self, transport: Transport, in_flight: dict[int, tuple[str, ...]]
    ) -> None:
        outbox = self.agent.outbox
        assert outbox is not None
        after = 0
        number = 0
        while True:
            self.wake_sender.clear()
            if self.host_cannot_write is not None and self.resend_due:
                if not in_flight:
                    # Every batch sent before the refusal is answered: pause, then send
                    # again from the oldest event the host has not taken.
                    self.resend_due = False
                    pause = self.resend_delay * (0.5 + random.random())
                    self.resend_delay = min(
                        self.resend_delay * 2, self.agent.settings.timing.reconnect_max_delay
                    )
                    await self.agent.activity.outside(asyncio.sleep(pause))
                    self.resends += 1
                    after = 0
                    continue
            elif len(in_flight) < MAX_IN_FLIGHT:
                batch = await outbox.pending_batch(self.agent.settings.runner.max_batch, after)
                if batch.ids:
                    number += 1
                    in_flight[number] = batch.ids
                    after = batch.last_pos
                    await transport.send(
                        link.encode(link.EventBatch(batch=number, body=batch.body))
                    )
                    continue
            await self.agent.activity.outside(self.wake_sender.wait())

    def _host_refused_for_now(self, ids: tuple[str, ...], reason: str) -> None:
        """The host could not write a batch: keep its events, send them again later."""
        if self.host_cannot_write is None:
            log.warning(
                "the host cannot record events now (%s); keeping %d in the outbox and"
                " sending them again until it can",
                reason,
                len(ids),
            )
            self.host_cannot_write = reason
        self.resend_due = True
        self.wake_sender.set()

    def _host_took(self) -> None:
        """A batch was acknowledged: an outage of the host's log, if any, is over."""
        if self.host_cannot_write is not None:
            log.warning("the host records events again (after %d resends)", self.resends)
        self.host_cannot_write = None
        self.resend_due = False
        self.resend_delay = FIRST_RESEND_S
        self.resends = 0

    async def _send_heartbeats(self, transport: Transport) -> None:
        agent = self.agent
        while True:
            usage = await asyncio.to_thread(probe_usage, tuple(agent.running))
            # The outbox's own count (no query: a heartbeat never waits on its disk).
            depth = agent.outbox.outbox.depth if agent.outbox is not None else None
            beat = new_event(usage.heartbeat(agent.node, depth), source=agent.node)
            await transport.send(link.encode(link.Heartbeat(event=beat)))
            await agent.activity.outside(asyncio.sleep(agent.heartbeat_interval))

    async def _receive(self, transport: Transport, in_flight: dict[int, tuple[str, ...]]) -> None:
        agent = self.agent
        while True:
            frame = await agent.activity.outside(transport.receive())
            if not isinstance(frame, bytes):
                continue
            try:
                message = link.decode_host_message(frame)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                log.warning("ignoring a frame from the host: %s", exc)
                continue
            match message:
                case link.Ack(batch=number):
                    self._host_took()
                    await agent.acked(in_flight.pop(number, ()))
                case link.Nack(batch=number, reason=reason, retry=True):
                    self._host_refused_for_now(in_flight.pop(number, ()), reason)
                case link.Nack(batch=number, reason=reason):
                    # The host will never take these events; keeping them would block
                    # the outbox forever. They are logged, then dropped.
                    ids = in_flight.pop(number, ())
                    log.error("host refused %d events: %s", len(ids), reason)
                    await agent.acked(ids)
                case link.Run() | link.Kill() | link.Pause() | link.Resume() | link.JobGo():
                    agent.handle(message)
                case link.ShellOpen() | link.ShellInput() | link.ShellResize() | link.ShellClose():
                    # Terminal frames, not events: answered straight on this link.
                    agent.shells.receive(message, transport)
                case link.Welcome():
                    pass
