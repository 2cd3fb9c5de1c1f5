"""Writing a real event log for the replay tests (a module of its own: test directories
share one ``conftest`` module name, so tests must not import from theirs)."""

from __future__ import annotations

from pathlib import Path

from events.envelope import NewEvent
from events.store import EventStore
from projections.cluster import ClusterState


async def write_log(path: Path, events: list[NewEvent], snapshot_at: tuple[int, ...] = ()) -> None:
    """Append ``events`` in batches of 20, saving a cluster snapshot at each seq given."""
    state = ClusterState()
    async with await EventStore.open(path, keep_snapshots=100) as store:
        store.add_listener(state.apply_all)
        for start in range(0, len(events), 20):
            await store.append(events[start : start + 20])
            if any(start < s <= start + 20 for s in snapshot_at):
                await store.save_snapshot("cluster", state.last_seq, state.snapshot())
