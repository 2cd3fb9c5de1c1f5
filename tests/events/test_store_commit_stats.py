"""The store's commit observer (issue 18, item 7): one observation per group commit,
never per event, with what the host's metrics histograms need."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.factories import heartbeat, submitted

from events.store import CommitStats, EventStore

pytestmark = pytest.mark.timeout(60)


async def test_a_group_commit_is_observed_once_with_its_size_and_wait(tmp_path: Path) -> None:
    seen: list[CommitStats] = []
    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        store.add_commit_observer(seen.append)
        # When three callers append together (one group commit) and then one alone
        await asyncio.gather(
            store.append([submitted(), submitted()]),
            store.append([heartbeat()]),
            store.append([submitted(), heartbeat(), submitted()]),
        )
        lone = submitted()
        await store.append([lone])
        # and the lone event is sent again (a re-send stores nothing new)
        await store.append([lone])
    # Then each commit that stored something was observed once, with its new events
    assert [s.events for s in seen] == [6, 1]
    assert sum(s.events for s in seen) == store.last_seq
    for stats in seen:
        # the oldest caller waited at least as long as the commit took
        assert stats.append_s >= stats.commit_s > 0


async def test_an_observer_that_fails_does_not_stop_the_writer(tmp_path: Path) -> None:
    def broken(stats: CommitStats) -> None:
        raise RuntimeError("a broken metrics hook")

    async with await EventStore.open(tmp_path / "log.duckdb") as store:
        store.add_commit_observer(broken)
        assert await store.append([submitted()]) == [1]
        assert await store.append([submitted()]) == [2]
