"""A forgotten node leaves the fold and the SQL view alike, and comes back as a new node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.factories import heartbeat

from events.envelope import new_event
from events.log_reader import read_only
from events.store import EventStore
from events.types import (
    NodeForgotten,
    NodeOffline,
    NodeRegistered,
    TaskLost,
    TaskPlaced,
    TaskSpec,
    TaskSubmitted,
)
from projections.cluster import ClusterState
from projections.sql import nodes_sql

pytestmark = pytest.mark.timeout(60)

FIELDS = ("online", "cores", "registered_at_us", "last_seen_us", "heartbeats", "allocated_cores")


async def _both(store: EventStore) -> tuple[dict[str, Any], dict[str, Any]]:
    state = ClusterState()
    state.apply_all(await store.read())
    fold = {n.name: {f: getattr(n, f) for f in FIELDS} for n in state.nodes.values()}
    cur = store.reader_cursor()
    try:
        with read_only(cur):
            result = cur.execute(nodes_sql())
            names = [d[0] for d in result.description]
            rows = [dict(zip(names, r, strict=True)) for r in result.fetchall()]
    finally:
        cur.close()
    return fold, {r["name"]: {f: r[f] for f in FIELDS} for r in rows}


async def test_the_fold_and_the_sql_view_forget_a_node_alike(tmp_path: Path) -> None:
    async with await EventStore.open(tmp_path / "log.duckdb") as store:

        async def record(*events: Any, source: str = "host") -> None:
            await store.append([new_event(e, source=source) for e in events])

        spec = TaskSpec(command="sleep", batch_id="b")
        await record(NodeRegistered(node="n1", address="a", cores=4, memory_bytes=0), source="n1")
        await record(NodeRegistered(node="n2", address="b", cores=2, memory_bytes=0), source="n2")
        await store.append([heartbeat("n1"), heartbeat("n1"), heartbeat("n2")])
        await record(
            TaskSubmitted(task_id="t1", spec=spec), TaskPlaced(task_id="t1", node="n1", cores=3)
        )
        # Given n1 offline and forgotten, its task given up
        await record(
            NodeOffline(node="n1"),
            TaskLost(task_id="t1", node="n1"),
            NodeForgotten(node="n1", reason="retired"),
        )
        fold, sql = await _both(store)
        assert sorted(fold) == sorted(sql) == ["n2"]
        assert fold == sql
        # When it registers again, it starts over: no old heartbeats, nothing allocated
        await record(NodeRegistered(node="n1", address="a", cores=8, memory_bytes=0), source="n1")
        await store.append([heartbeat("n1")])
        fold, sql = await _both(store)
        assert fold == sql
        assert fold["n1"]["heartbeats"] == 1 and fold["n1"]["cores"] == 8
        assert fold["n1"]["allocated_cores"] == 0 and fold["n1"]["online"] is True
