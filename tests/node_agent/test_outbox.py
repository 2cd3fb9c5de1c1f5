"""The durable outbox: order, idempotent puts, acks, and surviving a SIGKILL."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.factories import heartbeat, started, submitted
from support.waiting import async_wait_until, wait_until

from events.codec import decode_new_events
from node_agent.outbox import AsyncOutbox, Outbox, storage_fault

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]


def test_pending_is_in_put_order_and_ack_removes(tmp_path: Path) -> None:
    # Given an outbox with five events put in two batches
    box = Outbox(tmp_path / "outbox.sqlite")
    first = [submitted(), heartbeat(), submitted()]
    second = [heartbeat("node2"), submitted()]
    box.put(first)
    box.put(second)
    # Then they are pending in the order they were put
    assert [e.id for e in box.pending()] == [e.id for e in first + second]
    assert box.pending() == first + second
    assert [e.id for e in box.pending(limit=2)] == [e.id for e in first[:2]]
    # When some are acknowledged (and an unknown id with them)
    box.ack([first[0].id, second[0].id, "no-such-id"])
    # Then only the others remain, still in order
    assert [e.id for e in box.pending()] == [first[1].id, first[2].id, second[1].id]
    assert box.count() == 3
    box.close()


def test_putting_the_same_id_again_is_a_no_op(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    original = submitted()
    other = heartbeat()
    box.put([original, other])
    # When an event with the same id is put again (alone, and inside a batch)
    box.put([original])
    box.put([started("t-9"), original])
    # Then it is pending once, at its first position
    ids = [e.id for e in box.pending()]
    assert ids.count(original.id) == 1
    assert ids[0] == original.id and ids[1] == other.id
    assert box.count() == 3
    box.close()


def test_pending_batch_is_the_wire_form_of_pending(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    events = [submitted(), heartbeat(), started("t-1")]
    box.put(events)
    batch = box.pending_batch(limit=2)
    assert batch.ids == (events[0].id, events[1].id)
    assert decode_new_events(batch.body) == events[:2]
    box.ack(batch.ids)
    assert decode_new_events(box.pending_batch().body) == events[2:]
    box.ack([events[2].id])
    assert decode_new_events(box.pending_batch().body) == []
    box.close()


def test_events_survive_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    events = [submitted(), heartbeat()]
    box.put(events)
    box.close()
    reopened = Outbox(path)
    assert reopened.pending() == events
    reopened.close()


async def test_the_async_outbox_keeps_call_order_off_the_loop(tmp_path: Path) -> None:
    # Given many puts issued concurrently from the loop
    async with await AsyncOutbox.open(tmp_path / "outbox.sqlite") as box:
        events = [heartbeat(f"n{i}") for i in range(50)]
        await asyncio.gather(*(box.put([event]) for event in events))
        # Then they are stored in the order the calls were made
        assert [e.id for e in await box.pending(limit=100)] == [e.id for e in events]
        await box.ack([e.id for e in events[:10]])
        assert await box.count() == 40
        batch = await box.pending_batch(limit=5)
        assert batch.ids == tuple(e.id for e in events[10:15])


CHILD = """
import sys
from events.envelope import new_event
from events.types import NodeHeartbeat
from node_agent.outbox import Outbox

box = Outbox(sys.argv[1])
i = 0
while True:
    event = new_event(NodeHeartbeat(node="n1", cpu_percent=float(i)), source="n1")
    box.put([event])
    print(event.id, flush=True)
    i += 1
"""


def test_every_event_put_before_a_sigkill_is_pending_after_it(tmp_path: Path) -> None:
    # Given a process that puts events one by one, printing each id once put returned
    path = tmp_path / "outbox.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    printed: list[str] = []
    reader = threading.Thread(target=lambda: printed.extend(line for line in child.stdout or ()))
    reader.start()
    # When it is SIGKILLed at a random moment, after some tens of events
    target = random.randint(20, 150)
    try:
        wait_until(lambda: len(printed) >= target, timeout=30)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        reader.join(timeout=10)
    # Then every id it printed is pending in the reopened outbox (a torn last line aside)
    ids = [line.strip() for line in printed if line.endswith("\n")]
    assert len(ids) >= target
    box = Outbox(path)
    pending = {event.id for event in box.pending(limit=len(ids) + 10)}
    assert set(ids) <= pending
    box.close()


def test_a_batch_stops_before_the_hosts_byte_limit(tmp_path: Path) -> None:
    """The host refuses a batch over events.link.MAX_BATCH_BYTES (a nack drops it): the
    outbox never builds one, however big its events (one event always goes)."""
    from events.envelope import new_event
    from events.link import MAX_BATCH_BYTES
    from events.types import TaskFinished

    box = Outbox(tmp_path / "outbox.sqlite")
    big = [
        new_event(
            TaskFinished(task_id=f"t{i}", state="failed", node="n1", message="x" * (1 << 20)),
            source="n1",
        )
        for i in range(6)
    ]
    box.put(big)
    batch = box.pending_batch(limit=1000)
    assert len(batch.body) <= MAX_BATCH_BYTES
    assert [e.id for e in decode_new_events(batch.body)] == [e.id for e in big[:3]]
    # The rest follows in the next batches
    rest = box.pending_batch(limit=1000, after_pos=batch.last_pos)
    assert [e.id for e in decode_new_events(rest.body)] == [e.id for e in big[3:]]
    box.close()


async def test_a_fault_that_cannot_pass_is_raised_not_retried_forever(tmp_path: Path) -> None:
    # Given an outbox whose table is gone (a fault no waiting mends, unlike a full disk)
    async with await AsyncOutbox.open(tmp_path / "outbox.sqlite") as box:
        await box._call(lambda: box.outbox._db.execute("DROP TABLE outbox"))
        # When events are put, the error reaches the caller at once (no endless retry)
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await asyncio.wait_for(box.put([heartbeat("n1")]), 10)
    # While a full disk is a fault that passes: retried
    assert storage_fault(OSError(errno.ENOSPC, "No space left on device"))
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13  # type: ignore[attr-defined]
    assert storage_fault(full)


class _FullOnce(Outbox):
    """An outbox whose disk is full for its first fsynced write (then has room again)."""

    full_writes = 1

    def put(self, events, *, durable=True):  # type: ignore[no-untyped-def]
        if durable and self.full_writes:
            self.full_writes -= 1
            raise sqlite3.OperationalError("database or disk is full")
        super().put(events, durable=durable)


async def test_a_put_waiting_out_a_full_disk_is_not_overtaken(tmp_path: Path) -> None:
    """A task's start (fsynced) meets a full disk and waits to be written again; its end,
    put a moment later without an fsync, must not be written before it: the host recorded
    a start after the task's end (tests/chaos/test_chaos_full_disk.py found it)."""
    box = AsyncOutbox(_FullOnce(tmp_path / "outbox.sqlite"))
    start, end = started("t1"), submitted()
    first = asyncio.create_task(box.put([start], durable=True))
    await async_wait_until(lambda: box.failed_writes == 1, 10)  # the full disk met
    second = asyncio.create_task(box.put([end], durable=False))
    await asyncio.wait_for(asyncio.gather(first, second), timeout=30)
    assert [e.id for e in await box.pending()] == [start.id, end.id]
    await box.close()
