"""Batches that arrive while the log is writing are checked (and encoded) at once, ahead
of their turn (control_plane/agents.py, issue 19): what each is answered, and in which
order, must be what checking it at its turn gives.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.waiting import async_wait_until
from test_link_together import answers_to, open_plane, welcomed
from test_store_failing_link import batch, beats

from events import link
from events.codec import encode_event
from events.envelope import new_event
from events.types import NodeHeartbeat

pytestmark = pytest.mark.timeout(60)


async def test_batches_checked_while_the_log_writes_are_answered_in_order(
    tmp_path: Path,
) -> None:
    cp = await open_plane(tmp_path)
    try:
        session, socket = await welcomed(cp)
        # Given the log busy writing a large group
        filler = [new_event(NodeHeartbeat(node="n1"), source="host") for _ in range(20_000)]
        writing = asyncio.ensure_future(cp.store.append(filler))
        await async_wait_until(lambda: cp.store.writing, 10)

        # When three batches arrive meanwhile, the second one malformed
        first, third = beats(5), beats(7)
        session.take(batch(1, first))
        session.take(link.EventBatch(batch=2, body=b'[{"id": 1}]'))
        session.take(batch(3, third))
        queued = list(session._batches)
        # Then each was checked on arrival: the good ones with their payloads made
        assert cp.store.writing, "the group finished before the batches arrived"
        assert [q.checked is not None for q in queued] == [True, False, True]
        assert queued[1].error is not None
        assert queued[0].encoded is not None and len(queued[0].encoded) == 5

        # And at their turn the good ones are recorded and the malformed one refused alone
        await writing
        one, two, three = await answers_to(socket, 3)
        assert isinstance(one, link.Ack) and one.batch == 1 and len(one.seqs) == 5
        assert isinstance(two, link.Nack) and two.batch == 2 and not two.retry
        assert isinstance(three, link.Ack) and three.batch == 3 and len(three.seqs) == 7
        rows = await cp.store.query(
            "SELECT id::VARCHAR FROM events WHERE source = 'n1' AND kind = 'node.heartbeat'"
            " ORDER BY seq"
        )
        assert [r[0] for r in rows] == [e.id for e in first + third]
        # each stored as the event encodes, and the chain over them whole
        stored = await cp.store.query("SELECT payload FROM events WHERE source = 'n1' ORDER BY seq")
        assert [p.encode() for (p,) in stored] == [encode_event(e.event) for e in first + third]
        assert (await cp.store.verify()).ok
    finally:
        await cp.close()


async def test_a_batch_arriving_while_the_log_is_idle_is_checked_at_its_turn(
    tmp_path: Path,
) -> None:
    cp = await open_plane(tmp_path)
    try:
        session, socket = await welcomed(cp)
        assert not cp.store.writing
        sent = beats(4)
        session.take(batch(1, sent))
        (queued,) = session._batches
        assert queued.checked is None  # not yet: the loop would delay the worker for it
        (answer,) = await answers_to(socket, 1)
        assert isinstance(answer, link.Ack) and len(answer.seqs) == 4
    finally:
        await cp.close()
