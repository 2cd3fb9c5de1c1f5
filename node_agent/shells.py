"""The agent's half of ``hakuriver vps shell``: terminals in VPS containers, over the link.

The host relays a user's terminal as link messages (events/link.py): ``ShellOpen``
starts a ``docker exec`` with a TTY in a running VPS task's container (``/bin/bash`` when
the image has it, else ``/bin/sh``; ``TERM`` and the size from the message),
``ShellInput`` is written to it, ``ShellResize`` resizes it, ``ShellClose`` hangs it up.
What the shell writes goes back as ``ShellOutput`` frames of at most
``link.MAX_SHELL_CHUNK`` bytes, and exactly one ``ShellExit`` ends each session: the
shell's exit code, or ``error`` when it could not start (unknown task, not a VPS, not
running, too many shells).

These frames are not events: they never enter the outbox, and go straight on the link
the session was opened on; when that link drops, every shell on it is hung up.

Hanging up: the engine has no call to end an exec, and closing its stream leaves the
shell running. So the exec starts with a fixed script that prints its process id first
(read by the agent, never shown) and then ``exec``s the shell; a hang-up is ``kill -HUP``
of that id inside the container, then ``kill -KILL`` if it is still there.

Engine calls block: the short ones (create, resize, inspect, the hang-up's ``kill``) run
in a pool of the relay's own; what lasts as long as a shell has threads of its own, one
reading its output and one writing its input, so a shell that reads nothing (its writes
block) holds only its own thread, never the pool every other shell of the node needs.
What the user typed waits for the shell in a bounded buffer (``MAX_INPUT_BUFFERED``);
past it the session is ended, saying why, as the host ends one whose client stops
reading its output.

A shell runs on inside the VPS if its agent is killed (nothing hangs it up): each is
written down while it runs, and the next agent ends those it finds still running
(node_agent/shell_orphans.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from events import link
from node_agent.executors.base import ExecutorError, NotWatched, RunsVps
from node_agent.executors.docker_follow import hold
from node_agent.shell_orphans import ShellRecord, ShellRecords
from node_agent.transport import LinkClosed, Transport

if TYPE_CHECKING:
    from node_agent.agent import Agent

log = logging.getLogger("hakuriver.agent")

# The exec's command: print its pid, then become the best shell the image has. A
# constant: the user's data (TERM) reaches it as an environment variable only.
SHELL_SCRIPT = (
    'printf "HAKURIVER-SHELL-PID %s\\n" "$$";'
    " if [ -x /bin/bash ]; then exec /bin/bash -l; fi;"
    " exec /bin/sh -l"
)
_PID_LINE = re.compile(rb"^HAKURIVER-SHELL-PID (\d+)\r?\n")
# Short engine calls of the shells in flight at once.
SHELL_CALLS = 8
# How long a hung-up shell has to end before it is killed.
HANGUP_GRACE_S = 2.0
# What the user typed that a shell has not taken yet, in bytes, before the session is
# ended (a shell that reads nothing: the terminal and the engine's socket buffer a few
# hundred KiB more; a paste into a reading shell never waits this long).
MAX_INPUT_BUFFERED = 1 << 20


class Keys:
    """What the user typed, on its way to the shell: bounded, taken by the shell's own
    writer thread (``take`` blocks) once the shell is ready for it."""

    def __init__(self, bound: int = MAX_INPUT_BUFFERED) -> None:
        self.bound = bound
        self.waiting = 0  # bytes put and not taken yet
        self._chunks: deque[bytes] = deque()
        self._ready = False
        self._closed = False
        self._cond = threading.Condition()

    def put(self, data: bytes) -> bool:
        """Queue ``data``; False (nothing queued) when it would pass the bound."""
        with self._cond:
            if self._closed:
                return True
            if self.waiting + len(data) > self.bound:
                return False
            self._chunks.append(data)
            self.waiting += len(data)
            self._cond.notify()
            return True

    def ready(self) -> None:
        """The shell has started: ``take`` may hand it what was typed."""
        with self._cond:
            self._ready = True
            self._cond.notify_all()

    def close(self) -> None:
        """The shell is ending: ``take`` returns None from now on (what waits is dropped)."""
        with self._cond:
            self._closed = True
            self._chunks.clear()
            self.waiting = 0
            self._cond.notify_all()

    def take(self) -> bytes | None:
        """The next chunk, once the shell is ready; None once closed (blocks meanwhile)."""
        with self._cond:
            while not self._closed and not (self._ready and self._chunks):
                self._cond.wait()
            if self._closed:
                return None
            data = self._chunks.popleft()
            self.waiting -= len(data)
            return data


@dataclass(eq=False)
class _Shell:
    session: str
    task_id: str
    transport: Transport
    keys: Keys = field(default_factory=Keys)
    container: Any = None
    exec_id: str | None = None
    sock: Any = None  # the raw socket of the exec's stream
    pid: int | None = None  # the shell's process id inside the container
    closing: bool = False
    exited: bool = False
    started: asyncio.Event = field(default_factory=asyncio.Event)
    # Why the agent itself ended the session (its input backed up), told in ShellExit.
    problem: str = ""


class ShellRelay:
    """The shells this agent serves; see the module docstring."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.shells: dict[str, _Shell] = {}
        self._calls = ThreadPoolExecutor(SHELL_CALLS, thread_name_prefix="hakuriver-shell")
        self.records = ShellRecords(agent.state_dir / "shells")

    async def _call(self, function: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._calls, function)

    # -- messages from the host ----------------------------------------------------------

    def receive(self, message: link.Message, transport: Transport) -> None:
        """Apply a shell message from the host (never blocks the link)."""
        match message:
            case link.ShellOpen():
                self._open(message, transport)
            case link.ShellInput(session=session, data=data):
                shell = self.shells.get(session)
                if shell is not None and not shell.closing and not shell.keys.put(data):
                    shell.problem = (
                        f"the shell read none of its input ({shell.keys.waiting} bytes were"
                        " waiting for it): the session was ended"
                    )
                    log.info("shell %s in %s: %s", session, shell.task_id, shell.problem)
                    self.agent.spawn(self._hang_up(shell), "shell-backed-up")
            case link.ShellResize(session=session, rows=rows, cols=cols):
                shell = self.shells.get(session)
                if shell is not None:
                    self.agent.spawn(self._resize(shell, rows, cols), "shell-resize")
            case link.ShellClose(session=session):
                shell = self.shells.get(session)
                if shell is not None:
                    self.agent.spawn(self._hang_up(shell), "shell-close")

    def _open(self, message: link.ShellOpen, transport: Transport) -> None:
        if message.session in self.shells:
            log.warning("shell session %s is already open; ignoring a second open", message.session)
            return
        shell = _Shell(session=message.session, task_id=message.task_id, transport=transport)
        self.shells[message.session] = shell
        problem = self._refusal(message.task_id)
        if problem is not None:
            self.agent.spawn(self._end(shell, error=problem), "shell-refused")
            return
        self.agent.spawn(self._run(shell, message), "shell")

    def _refusal(self, task_id: str) -> str | None:
        """Why no shell can be opened in ``task_id`` now; None when one can."""
        agent = self.agent
        if len(self.shells) > link.MAX_SHELLS:
            return f"too many shells on node {agent.node} (at most {link.MAX_SHELLS} at once)"
        executor = agent.by_task.get(task_id)
        if task_id not in agent.running or executor is None:
            return f"no running task {task_id} on node {agent.node}"
        if not isinstance(executor, RunsVps):
            return f"task {task_id} is not a VPS: a shell opens only in a VPS task"
        try:
            executor.vps_container(task_id)
        except NotWatched:
            return f"task {task_id} is still starting on node {agent.node}: try again"
        except ExecutorError:
            return f"task {task_id} is not a VPS: a shell opens only in a VPS task"
        if task_id in agent.paused:
            return f"task {task_id} is paused: resume it first"
        return None

    # -- one shell -----------------------------------------------------------------------

    async def _run(self, shell: _Shell, message: link.ShellOpen) -> None:
        executor = self.agent.by_task.get(shell.task_id)
        assert isinstance(executor, RunsVps)
        try:
            shell.container = executor.vps_container(shell.task_id)
            await self._start(shell, message)
        except Exception as exc:
            log.info("shell %s in %s could not start: %s", shell.session, shell.task_id, exc)
            await self._end(shell, error=f"the shell could not start: {_explain(exc)}")
            return
        if shell.closing:  # hung up while it started
            self.agent.spawn(self._kill(shell), "shell-close")
        writer = threading.Thread(
            target=self._write, args=(shell,), name=f"hakuriver-keys-{shell.session[-8:]}"
        )
        writer.daemon = True
        writer.start()
        try:
            await self.agent.activity.outside(self._read(shell))
        finally:
            shell.started.set()
            shell.keys.close()  # the writer ends (its socket is shut down by ``_end``)
        code = await self._exit_code(shell)
        await self._end(shell, code=code)

    async def _start(self, shell: _Shell, message: link.ShellOpen) -> None:
        api = shell.container.client.api
        created = await self._call(
            lambda: api.exec_create(
                shell.container.id,
                ["/bin/sh", "-c", SHELL_SCRIPT],
                stdin=True,
                tty=True,
                environment={"TERM": message.term or "xterm"},
                user="0",
            )
        )
        shell.exec_id = created["Id"]
        stream = await self._call(lambda: api.exec_start(shell.exec_id, socket=True, tty=True))
        shell.sock = getattr(stream, "_sock", stream)
        await self._resize(shell, message.rows, message.cols)

    async def _read(self, shell: _Shell) -> None:
        """Send what the shell writes until its stream ends (the shell exited)."""
        loop = asyncio.get_running_loop()

        def pump() -> None:
            pending = b""
            while True:
                try:
                    chunk = shell.sock.recv(link.MAX_SHELL_CHUNK)
                except OSError:
                    return
                if not chunk:
                    if pending:
                        self._hand_over(loop, shell, pending)
                    return
                if shell.pid is None:
                    pending += chunk
                    found = _PID_LINE.match(pending)
                    if found is None and len(pending) < 64 and b"\n" not in pending:
                        continue  # the pid line is not complete yet
                    if found is not None:
                        shell.pid = int(found.group(1))
                        pending = pending[found.end() :]
                        self._remember(shell)
                    else:
                        shell.pid = 0  # not the script's first line: nothing to take out
                    shell.keys.ready()
                    loop.call_soon_threadsafe(shell.started.set)
                    chunk, pending = pending, b""
                    if not chunk:
                        continue
                self._hand_over(loop, shell, chunk)

        await hold(pump, f"hakuriver-shell-{shell.session[-8:]}")

    def _hand_over(self, loop: asyncio.AbstractEventLoop, shell: _Shell, data: bytes) -> None:
        """Send ``data`` as ``ShellOutput`` frames, from the reading thread; it waits for
        each send (what the link cannot take slows the shell down, never the agent)."""
        for start in range(0, len(data), link.MAX_SHELL_CHUNK):
            piece = data[start : start + link.MAX_SHELL_CHUNK]
            frame = link.ShellOutput(session=shell.session, data=piece)
            try:
                asyncio.run_coroutine_threadsafe(self._send(shell, frame), loop).result()
            except Exception:  # the loop has closed: nobody listens
                return

    def _remember(self, shell: _Shell) -> None:
        """Write the running shell down for the next agent (from the reading thread)."""
        assert shell.exec_id is not None and shell.pid
        record = ShellRecord(
            session=shell.session,
            task_id=shell.task_id,
            container_id=shell.container.id,
            exec_id=shell.exec_id,
            pid=shell.pid,
        )
        try:
            self.records.remember(record)
        except OSError as exc:  # a full disk: the shell works, a killed agent leaves it
            log.warning("could not write down shell %s: %s", shell.session, exc)

    @staticmethod
    def _write(shell: _Shell) -> None:
        """Write what the user types, in order, once the shell has started: in the shell's
        own thread, as a shell that reads nothing blocks its writes."""
        while True:
            data = shell.keys.take()
            if data is None:
                return
            try:
                shell.sock.sendall(data)
            except OSError:
                return

    async def _resize(self, shell: _Shell, rows: int, cols: int) -> None:
        if shell.exec_id is None:
            return
        api = shell.container.client.api
        with contextlib.suppress(Exception):  # the shell may just have ended
            await self._call(lambda: api.exec_resize(shell.exec_id, height=rows, width=cols))

    async def _exit_code(self, shell: _Shell) -> int | None:
        """The exec's exit code (the engine records it a moment after its stream ends)."""
        api = shell.container.client.api
        pause = 0.01
        for _ in range(50):
            try:
                found = await self._call(lambda: api.exec_inspect(shell.exec_id))
            except Exception:
                return None
            if not found.get("Running"):
                code = found.get("ExitCode")
                return int(code) if code is not None else None
            await asyncio.sleep(pause)  # the engine's own bookkeeping: nothing to wait on
            pause = min(pause * 2, 0.2)
        return None

    async def _hang_up(self, shell: _Shell) -> None:
        """End a shell: SIGHUP to it, SIGKILL after ``HANGUP_GRACE_S``; its stream then ends
        and its ``ShellExit`` is sent."""
        if shell.closing:
            return
        shell.closing = True
        shell.keys.close()
        if shell.exec_id is not None:  # else ``_run`` sees ``closing`` once it has started
            await self._kill(shell)

    async def _kill(self, shell: _Shell) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HANGUP_GRACE_S):
                await self.agent.activity.outside(shell.started.wait())
        if shell.pid:
            assert shell.exec_id is not None
            await self._end_process(shell.container, shell.exec_id, shell.pid)
        if shell.sock is not None:
            with contextlib.suppress(OSError):
                shell.sock.shutdown(socket.SHUT_RDWR)

    async def _end_process(self, container: Any, exec_id: str, pid: int) -> None:
        """HUP the exec's process ``pid`` (inside ``container``), KILL it if it is still
        there after ``HANGUP_GRACE_S``."""
        for signal in ("HUP", "KILL"):
            await self._signal(container, pid, signal)
            if await self._ended_within(container, exec_id, HANGUP_GRACE_S):
                return

    async def _signal(self, container: Any, pid: int, signal: str) -> None:
        with contextlib.suppress(Exception):
            await self._call(
                lambda: container.exec_run(
                    ["/bin/sh", "-c", f'kill -{signal} "$1"', "hangup", str(pid)], user="0"
                )
            )

    async def _ended_within(self, container: Any, exec_id: str, seconds: float) -> bool:
        api = container.client.api
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            try:
                found = await self._call(lambda: api.exec_inspect(exec_id))
            except Exception:
                return True
            if not found.get("Running"):
                return True
            await asyncio.sleep(0.05)  # the engine's record of the exec: nothing to wait on
        return False

    async def _end(self, shell: _Shell, *, code: int | None = None, error: str = "") -> None:
        """Send the session's one ``ShellExit`` and forget it."""
        if shell.exited:
            return
        shell.exited = True
        self.shells.pop(shell.session, None)
        shell.keys.close()
        if shell.sock is not None:
            with contextlib.suppress(OSError):
                shell.sock.shutdown(socket.SHUT_RDWR)  # unblocks a write in its thread
            with contextlib.suppress(OSError):
                shell.sock.close()
        if shell.pid:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.records.forget, shell.session)
        error = error or shell.problem
        await self._send(
            shell, link.ShellExit(session=shell.session, code=code, error=error[:1024])
        )

    async def _send(self, shell: _Shell, message: link.Message) -> None:
        """Send on the link the session was opened on, unless that link has dropped."""
        if shell.transport is not self.agent.link.transport:
            return
        with contextlib.suppress(LinkClosed, ConnectionError):
            await shell.transport.send(link.encode(message))

    # -- shells a killed agent left running (node_agent/shell_orphans.py) -----------------

    def reap_orphans(self, task_id: str | None = None) -> None:
        """End, in the background, the shells an earlier agent left running: in every VPS
        (once adopted) or in ``task_id`` only (just resumed)."""
        self.agent.spawn(self._reap(task_id), "shell-reap")

    async def _reap(self, task_id: str | None) -> None:
        agent = self.agent
        for record in await asyncio.to_thread(self.records.all):
            if task_id is not None and record.task_id != task_id:
                continue
            if record.session in self.shells:  # this agent's own
                continue
            if record.task_id in agent.paused:  # nothing runs in it until it is resumed
                continue
            executor = agent.by_task.get(record.task_id)
            container = None
            if record.task_id in agent.running and isinstance(executor, RunsVps):
                with contextlib.suppress(ExecutorError):
                    container = executor.vps_container(record.task_id)
            if container is not None and container.id == record.container_id:
                await self._reap_one(container, record)
            await asyncio.to_thread(self.records.forget, record.session)

    async def _reap_one(self, container: Any, record: ShellRecord) -> None:
        """End the recorded shell if its exec still runs the shell script."""
        api = container.client.api
        try:
            found = await self._call(lambda: api.exec_inspect(record.exec_id))
        except Exception:  # gone with a restart of its container
            return
        config = found.get("ProcessConfig") or {}
        ours = config.get("entrypoint") == "/bin/sh" and config.get("arguments") == [
            "-c",
            SHELL_SCRIPT,
        ]
        if found.get("Running") and ours and found.get("ContainerID") == container.id:
            log.info(
                "ending shell %s left running in %s by an earlier agent",
                record.session,
                record.task_id,
            )
            await self._end_process(container, record.exec_id, record.pid)

    # -- the link ------------------------------------------------------------------------

    async def link_dropped(self, transport: Transport) -> None:
        """Hang up every shell opened on ``transport`` (its user is gone with the link)."""
        dropped = [s for s in self.shells.values() if s.transport is transport]
        await asyncio.gather(*(self._hang_up(s) for s in dropped), return_exceptions=True)

    async def close(self) -> None:
        """Hang up every shell (the agent stops) and stop the relay's threads."""
        await asyncio.gather(
            *(self._hang_up(s) for s in list(self.shells.values())), return_exceptions=True
        )
        self._calls.shutdown(wait=False, cancel_futures=True)


def _explain(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)
