"""A node the test plays over the real agent link, to have VPS tasks with an sshd to reach.

``FakeVpsNode`` connects to a real host's agent websocket with an enrolled node's
credential, says hello, heartbeats, and answers the host's commands as an agent would:
a ``Run`` is kept for the test (which reports it started and ready, pointing at an sshd
it runs: ``ready``), ``Kill``/``Pause``/``Resume`` are reported done at once. It runs
its own event loop in a thread, so synchronous tests drive it with plain calls.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Coroutine
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect

from events import link
from events.envelope import new_event
from events.types import (
    NodeHeartbeat,
    TaskFinished,
    TaskPaused,
    TaskResumed,
    TaskStarted,
    VpsReady,
)
from support.waiting import wait_until


class FakeVpsNode:
    """An enrolled node played by the test: see the module docstring."""

    def __init__(self, url: str, credential: str, name: str, address: str = "127.0.0.1") -> None:
        self.url = url.replace("http", "ws", 1) + "/api/agents/ws"
        self.credential = credential
        self.name = name
        self.address = address
        self.runs: dict[str, link.Run] = {}
        self.acks: dict[int, link.Ack | link.Nack] = {}
        self._batches = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.welcomed = threading.Event()

    # -- from the test ---------------------------------------------------------------------

    def start(self) -> FakeVpsNode:
        """Connect and say hello; return once the host welcomed it."""
        self._thread.start()
        self._call(self._connect())
        return self

    def stop(self) -> None:
        """Close the link and the loop."""
        if self._thread.is_alive():
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def run_of(self, task_id: str, timeout: float = 20) -> link.Run:
        """The ``Run`` the host sent for ``task_id`` (waiting for it)."""
        wait_until(lambda: task_id in self.runs, timeout=timeout)
        return self.runs[task_id]

    def ready(
        self, task_id: str, port: int | None, *, sshd: bool = True, message: str = ""
    ) -> None:
        """Report the VPS started, and its sshd on ``port`` of this node's address."""
        self.run_of(task_id)
        self.report(
            TaskStarted(task_id=task_id, node=self.name, container_id=f"vps-{task_id[:12]}"),
            VpsReady(
                task_id=task_id,
                node=self.name,
                address=self.address,
                ssh_port=port,
                sshd=sshd,
                message=message,
            ),
        )

    def report(self, *events: Any) -> link.Ack:
        """Send events as one batch; the host's ack (a nack fails the test)."""
        batch = next(self._batches)
        self._call(self._send_batch(batch, list(events)))
        wait_until(lambda: batch in self.acks, timeout=20)
        answer = self.acks[batch]
        assert isinstance(answer, link.Ack), answer
        return answer

    # -- on its loop -----------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _connect(self) -> None:
        self._ws = await connect(
            self.url, additional_headers={"Authorization": f"Bearer {self.credential}"}
        )
        hello = link.Hello(
            node=self.name,
            address=self.address,
            cores=64,
            memory_bytes=16 << 30,
            executors=("docker",),
        )
        await self._ws.send(link.encode(hello))
        welcome = link.decode_host_message(await self._ws.recv())
        assert isinstance(welcome, link.Welcome), welcome
        self.welcomed.set()
        self._tasks.append(asyncio.create_task(self._read()))
        self._tasks.append(asyncio.create_task(self._beat(welcome.heartbeat_interval_s)))

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._ws is not None:
            await self._ws.close()

    async def _send(self, message: link.Message) -> None:
        assert self._ws is not None
        await self._ws.send(link.encode(message))

    async def _send_batch(self, batch: int, events: list[Any]) -> None:
        body = msgspec.json.encode([new_event(e, source=self.name) for e in events])
        await self._send(link.EventBatch(batch=batch, body=body))

    async def _beat(self, interval_s: float) -> None:
        while True:
            beat = NodeHeartbeat(node=self.name, running_task_ids=tuple(self.runs))
            await self._send(link.Heartbeat(event=new_event(beat, source=self.name)))
            await asyncio.sleep(interval_s)  # the heartbeat period, not synchronisation

    async def _read(self) -> None:
        assert self._ws is not None
        async for frame in self._ws:
            assert isinstance(frame, bytes)
            message = link.decode_host_message(frame)
            match message:
                case link.Ack() | link.Nack():
                    self.acks[message.batch] = message
                case link.Run():
                    self.runs[message.task_id] = message
                case link.Kill():
                    self.runs.pop(message.task_id, None)
                    done = TaskFinished(
                        task_id=message.task_id, state="killed", node=self.name, exit_code=None
                    )
                    await self._send_batch(next(self._batches), [done])
                case link.Pause():
                    paused = TaskPaused(task_id=message.task_id)
                    await self._send_batch(next(self._batches), [paused])
                case link.Resume():
                    resumed = TaskResumed(task_id=message.task_id)
                    await self._send_batch(next(self._batches), [resumed])
                case _:
                    pass
