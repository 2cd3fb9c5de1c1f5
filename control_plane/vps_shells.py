"""``hakuriver vps shell``: a terminal in a VPS task's container, relayed through the host.

The user's websocket (``WS /api/tasks/<id>/shell``, routes/tasks.py) speaks the
environment shells' frame protocol: binary terminal bytes both ways, JSON text for
control (the client's ``resize``; the host's ``exit`` and ``error``), so one client
(cli/hakuriver/shell.py) serves both. The node's agent runs the shell; between the two,
the host relays over the agent link (events/link.py): the client's bytes become
``ShellInput`` (split to ``MAX_SHELL_CHUNK``), a resize ``ShellResize``, the client
leaving ``ShellClose``; the agent's ``ShellOutput`` and ``ShellExit`` come back
through ``AgentSession.take`` to ``VpsShells.deliver``.

Who may open one is decided once, by the ``OpenSshSession`` command with
``via="shell"`` (control_plane/commands/vps.py): it records ``ssh.session_opened``
and sends ``ShellOpen``. How the session ended (bytes each way, duration, reason) is
recorded here as a fact, ``ssh.session_closed``.

Nothing the agent sends waits for a user: output is queued per session, at most
``MAX_BUFFERED`` bytes; a client that stops reading past that has its session ended
(the agent is told ``ShellClose``) instead of holding up the link every other shell,
report and heartbeat of its node share. An agent can only write into sessions opened
on its own node; its link dropping ends them with an error. What the user types is
bounded by the agent (node_agent/shells.py), which ends a session whose shell reads
nothing, saying why.

A session also ends when the log says its user may no longer be in it (a commit
listener, ``VpsShells.on_commit``, as the SSH gateway's): the user disabled, the token it
was opened with revoked, an admin in another's VPS no longer an admin, or the task
ended. A host asked to stop ends every session and waits (bounded) until each close is
recorded, before the log closes (``VpsShells.stop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from control_plane.access import ADMIN
from control_plane.commands import OpenSshSession, RecordFacts
from control_plane.commands.vps import vps_task
from control_plane.errors import Conflict, DomainError, TooMany, Unavailable
from events import link
from events.envelope import Recorded
from events.types import (
    SshSessionClosed,
    TaskFinished,
    TaskLost,
    TokenRevoked,
    UserDisabled,
    UserRoleChanged,
)

if TYPE_CHECKING:
    from control_plane.hub import ControlPlane

log = logging.getLogger("hakuriver.host.vps_shells")

# Output queued for one session's client, in bytes, before the session is ended for not
# reading (a terminal reads far faster; a screenful is a few KiB).
MAX_BUFFERED = 1 << 20
# How long closing a client's websocket may take (a client that stopped reading).
CLOSE_S = 2.0
# Shells one user may have open at once, over every node (an admin too).
MAX_SHELLS_PER_USER = 8
# How long a stopping host waits for its shells' closes to be recorded.
STOP_WITHIN_S = 5.0


class Socket(Protocol):
    """The part of the user's websocket the relay uses (Sanic's)."""

    async def send(self, data: str | bytes) -> None: ...

    async def recv(self, timeout: float | None = None) -> str | bytes | None: ...  # noqa: ASYNC109

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class ShellSession:
    """One shell between a client and a node's agent, and what crossed it."""

    def __init__(
        self, command: OpenSshSession, task_id: str, node: str, via: object, owner: str = ""
    ) -> None:
        self.id = command.session_id
        self.actor = command.actor
        self.user = command.actor.user
        self.task_id = task_id
        self.owner = owner or self.user  # the task's owner (another's: the actor is an admin)
        self.node = node
        # The agent link its ShellOpen went out on (set once sent): only its loss ends it.
        self.link = via
        self.started = time.monotonic()
        self.bytes_in = 0  # client -> VPS
        self.bytes_out = 0  # VPS -> client
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._more = asyncio.Event()
        self.exited = False  # the agent said ShellExit
        self.code: int | None = None
        self.error = ""
        self.reason = ""
        # Set when the session must stop now, whatever is still queued (not an exit).
        self.cut = asyncio.Event()
        # Set once its end is recorded (or nothing was: it never opened).
        self.ended = asyncio.Event()

    def output(self, data: bytes) -> bool:
        """Queue the agent's bytes for the client; False (and the session cut) past the cap."""
        if self.exited or self.cut.is_set():
            return True
        if self._queued + len(data) > MAX_BUFFERED:
            self.stop(f"the client stopped reading ({self._queued} bytes waiting for it)")
            return False
        self._queue.append(data)
        self._queued += len(data)
        self._more.set()
        return True

    def exit(self, code: int | None, error: str) -> None:
        """The agent's ``ShellExit``: the shell ended (``code``) or never started (``error``)."""
        if self.exited:
            return
        self.exited = True
        self.code, self.error = code, error
        self.reason = self.reason or (error or "vps closed")
        self._more.set()

    def stop(self, reason: str) -> None:
        """End the session now (queued output dropped): the client, link or host is gone."""
        if not self.reason:
            self.reason = reason
        self.cut.set()
        self._more.set()

    async def drain_to(self, ws: Socket) -> None:
        """Send the queued output to the client until the shell exits (all of it sent)."""
        while True:
            while self._queue:
                data = self._queue.popleft()
                self._queued -= len(data)
                await ws.send(data)
                self.bytes_out += len(data)
            if self.exited or self.cut.is_set():
                return
            self._more.clear()
            await self._more.wait()


class VpsShells:
    """The open shells, by session id; at most ``link.MAX_SHELLS`` per node and
    ``MAX_SHELLS_PER_USER`` per user."""

    def __init__(
        self, per_node: int = link.MAX_SHELLS, per_user: int = MAX_SHELLS_PER_USER
    ) -> None:
        self.per_node = per_node
        self.per_user = per_user
        self._sessions: dict[str, ShellSession] = {}
        # Sessions whose end is not recorded yet (``stop`` waits for them).
        self._unrecorded: set[ShellSession] = set()
        self.stopping = False

    def register(self, session: ShellSession) -> None:
        """Take a session in before its ``ShellOpen`` leaves (its first output may follow
        at once); ``TooMany`` when its node, or its user, has as many as they may."""
        if self.stopping:
            raise Unavailable("", "the host is stopping; try again once it is back")
        on_node = sum(1 for s in self._sessions.values() if s.node == session.node)
        if on_node >= self.per_node:
            raise TooMany(
                "task",
                f"node {session.node} serves {on_node} shells already, the most it may;"
                " close one (or use hakuriver ssh) and try again",
            )
        mine = sum(1 for s in self._sessions.values() if s.user == session.user)
        if mine >= self.per_user:
            raise TooMany(
                "task",
                f"{session.user} has {mine} shells open already, the most one user may;"
                " close one and try again",
            )
        self._sessions[session.id] = session
        self._unrecorded.add(session)

    def discard(self, session: ShellSession) -> None:
        """Forget a session that ended (no more output reaches it)."""
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    def recorded(self, session: ShellSession) -> None:
        """The session's end is recorded (or it never opened): nothing waits for it."""
        self.discard(session)
        self._unrecorded.discard(session)
        session.ended.set()

    def deliver(self, node: str, message: link.ShellOutput | link.ShellExit) -> None:
        """An agent's shell message, to the session it names if that session is on
        ``node`` (an agent cannot write into another node's shells); never waits."""
        session = self._sessions.get(message.session)
        if session is None or session.node != node:
            if session is not None:
                log.warning("node %s wrote to shell %s of node %s", node, session.id, session.node)
            return
        if isinstance(message, link.ShellOutput):
            session.output(message.data)
        else:
            session.exit(message.code, message.error)

    def link_lost(self, node: str, via: object) -> None:
        """The agent link ``via`` of ``node`` dropped: end every shell opened on it."""
        for session in list(self._sessions.values()):
            if session.node == node and session.link is via:
                session.stop(f"node {node}'s link dropped: the shell is gone")

    def stop_all(self, reason: str) -> None:
        """End every shell (the host is stopping)."""
        for session in list(self._sessions.values()):
            session.stop(reason)

    async def stop(self, reason: str = "host stopping", within_s: float = STOP_WITHIN_S) -> None:
        """Refuse new shells, end every open one and wait (``within_s`` at most) until
        each end is recorded: for a host stopping, before its log closes."""
        self.stopping = True
        self.stop_all(reason)
        waits = [asyncio.ensure_future(s.ended.wait()) for s in self._unrecorded]
        if not waits:
            return
        _, late = await asyncio.wait(waits, timeout=within_s)
        for wait in late:
            wait.cancel()
        if late:
            log.warning("%d shell closes still unrecorded after %.0fs", len(late), within_s)

    def on_commit(self, recorded: Sequence[Recorded]) -> None:
        """End the sessions the log says must end (a store listener; see the module
        docstring)."""
        if not self._sessions:
            return
        for r in recorded:
            match r.event:
                case TaskFinished() | TaskLost() as e:
                    self._end_where(lambda s, e=e: s.task_id == e.task_id, "task ended")
                case UserDisabled() as e:
                    self._end_where(lambda s, e=e: s.user == e.name, "user disabled")
                case TokenRevoked() as e:
                    self._end_where(lambda s, e=e: s.actor.token_id == e.token_id, "token revoked")
                case UserRoleChanged() as e if e.role != ADMIN:
                    # An admin in another's VPS is there as an admin only.
                    self._end_where(
                        lambda s, e=e: s.user == e.name and s.owner != s.user,
                        "no longer an admin",
                    )
                case _:
                    pass

    def _end_where(self, condition: Any, reason: str) -> None:
        for session in list(self._sessions.values()):
            if condition(session):
                session.stop(reason)

    def __len__(self) -> int:
        return len(self._sessions)


async def relay(cp: ControlPlane, ws: Socket, command: OpenSshSession) -> None:
    """Run one ``vps shell`` session over ``ws`` to its end (see the module docstring).

    A refusal (the task is not the user's VPS, not running, its node not connected, too
    many shells) is sent as an ``error`` frame and nothing is recorded. Once opened, the
    session's end is recorded whatever ends it, the handler's cancellation included.
    """
    try:
        session = await _open(cp, command)
    except DomainError as exc:
        await _send_control(ws, _error_frame(exc.status, exc.field, exc.message))
        await _close(ws)
        return
    keyboard = asyncio.create_task(_keyboard(cp, ws, session), name=f"shell-{session.id}-in")
    screen = asyncio.create_task(session.drain_to(ws), name=f"shell-{session.id}-out")
    cut = asyncio.create_task(session.cut.wait(), name=f"shell-{session.id}-cut")
    pumps = {keyboard, screen, cut}
    try:
        done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        if keyboard in done and not session.exited:
            session.stop("client closed")
        if screen in done and screen.exception() is not None:
            session.stop("client closed")
    finally:
        for task in pumps:
            task.cancel()
        for task in pumps:
            with contextlib.suppress(BaseException):
                await task
        # Shielded: a handler cancelled because its client dropped still hangs the shell
        # up and records how the session ended.
        await asyncio.shield(_end(cp, session))
    if session.exited and not session.cut.is_set():
        if session.error:
            frame = _error_frame(409, "task", session.error)
        else:
            frame = {"type": "exit", "code": session.code}
        await _send_control(ws, frame)
    elif session.reason != "client closed":
        await _send_control(ws, _error_frame(503, None, session.reason))
    await _close(ws)


async def _open(cp: ControlPlane, command: OpenSshSession) -> ShellSession:
    """Register the session, then decide and record its opening (which sends ShellOpen)."""
    task = vps_task(cp.state, command)  # the decision says it again; the node is needed first
    node = task.node or ""
    session = ShellSession(command, task.task_id, node, None, owner=task.spec.owner)
    cp.shells.register(session)
    try:
        outcome = await cp.execute(command)
    except BaseException:
        cp.shells.recorded(session)  # nothing was
        raise
    # The link the ShellOpen went out on, not the one seen before the decision: one
    # replaced meanwhile must still end the session when it drops.
    session.link = outcome.links[0] if outcome.links else None
    if not all(outcome.delivered):
        session.stop(f"node {node} is not connected")
    elif cp.link_of(node) is not session.link:
        # That link dropped while the message went out: its drop may have passed already.
        session.stop(f"node {node}'s link dropped: the shell is gone")
    if session.cut.is_set():
        reason = session.reason
        await asyncio.shield(_end(cp, session))
        raise Conflict("task", f"VPS task {task.number}: {reason}")
    return session


async def _keyboard(cp: ControlPlane, ws: Socket, session: ShellSession) -> None:
    """The client's keys and resizes to the agent, until the client leaves."""
    while True:
        message = await ws.recv()
        if message is None:
            return
        if isinstance(message, bytes):
            for at in range(0, len(message), link.MAX_SHELL_CHUNK):
                piece = message[at : at + link.MAX_SHELL_CHUNK]
                if not await cp.send_to(
                    session.node, link.ShellInput(session=session.id, data=piece)
                ):
                    session.stop(f"node {session.node}'s link dropped: the shell is gone")
                    return
                session.bytes_in += len(piece)
            continue
        resize = _resize_of(session.id, message)
        if resize is not None:
            await cp.send_to(session.node, resize)


def _resize_of(session: str, text: str) -> link.ShellResize | None:
    """A ``{"type": "resize", "rows", "cols"}`` control, if that is what ``text`` is."""
    try:
        control = json.loads(text)
        if control.get("type") != "resize":
            return None
        rows, cols = int(control["rows"]), int(control["cols"])
    except (ValueError, AttributeError, KeyError, TypeError):
        return None
    if not (1 <= rows <= 1000 and 1 <= cols <= 1000):
        return None
    return link.ShellResize(session=session, rows=rows, cols=cols)


async def _end(cp: ControlPlane, session: ShellSession) -> None:
    """Hang the shell up unless it ended by itself, forget it, record how it ended."""
    cp.shells.discard(session)
    try:
        await _hang_up_and_record(cp, session)
    finally:
        cp.shells.recorded(session)


async def _hang_up_and_record(cp: ControlPlane, session: ShellSession) -> None:
    if not session.exited:
        await cp.send_to(session.node, link.ShellClose(session=session.id))
    closed = SshSessionClosed(
        session_id=session.id,
        task_id=session.task_id,
        bytes_in=session.bytes_in,
        bytes_out=session.bytes_out,
        duration_s=round(time.monotonic() - session.started, 6),
        reason=session.reason[:500],
        user=session.user,
        via="shell",
    )
    try:
        await cp.execute(RecordFacts(events=(closed,), actor=session.actor))
    except Exception as exc:  # a full disk: the session is over all the same
        log.warning("could not record the end of shell %s: %s", session.id, exc)


def _error_frame(status: int, field: str | None, message: str) -> dict[str, Any]:
    return {"type": "error", "status": status, "field": field, "message": message}


async def _send_control(ws: Socket, frame: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_S):
            await ws.send(json.dumps(frame))


async def _close(ws: Socket) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_S):
            await ws.close()
