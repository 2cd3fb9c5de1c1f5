"""The control plane's state on disk: ``cluster`` snapshots and the task archive.

A snapshot is taken in two writes (``events.archive_files`` says why this order loses
nothing to a crash): first the segment of the tasks that became final since the previous
snapshot, then the snapshot, which carries the other tasks and names every segment. A
restart restores the newest snapshot (its segments are read when first needed) and folds
the tail: it costs O(active tasks), whatever the history's length.
"""

from __future__ import annotations

import asyncio
import logging

from events.archive_files import ArchiveFiles, SegmentUnavailable, new_token
from events.envelope import Recorded
from events.snapshot_files import CLUSTER as SNAPSHOT_NAME
from events.store import EventStore
from projections.archive import ArchiveRef, ArchiveUnavailable
from projections.cluster import ClusterState, SnapshotFormatError

log = logging.getLogger(__name__)


class StateFiles:
    """Write and restore the control plane's snapshots of one log."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.archive = ArchiveFiles(store.snapshot_dir)

    def load(self, ref: ArchiveRef) -> bytes:
        """A segment's bytes (the loader a restored state reads its archive with)."""
        try:
            return self.archive.read(ref.seq, ref.token)
        except SegmentUnavailable as exc:
            raise ArchiveUnavailable(str(exc)) from exc

    async def snapshot(self, state: ClusterState) -> int:
        """Archive the newly final tasks, then snapshot the state at its seq."""
        seq = state.last_seq
        state.seal(new_token())
        data = state.archived_snapshot()  # taken now: the state and its seq match
        for segment in state.tasks.unwritten():
            assert segment.unwritten is not None
            ref, blob = segment.ref, segment.unwritten
            await asyncio.to_thread(self.archive.write, ref.seq, ref.token, blob)
            segment.unwritten = None
        await self.store.save_snapshot(SNAPSHOT_NAME, seq, data)
        named = [r.seq for r in state.tasks.refs()]
        await asyncio.to_thread(self.archive.prune, named, seq)
        return seq

    def _restore(self, data: bytes, tail: list[Recorded]) -> ClusterState:
        state = ClusterState.restore(data, self.load)
        self.archive.check((r.seq, r.token) for r in state.tasks.refs())
        state.apply_all(tail)
        return state

    async def rebuild(self) -> tuple[ClusterState, int, list[Recorded]]:
        """The state at the log's end: the newest snapshot and the tail, or the whole log
        folded when no snapshot is usable. Returns (state, seq restored from, tail)."""
        snapshot = await self.store.latest_snapshot(SNAPSHOT_NAME)
        if snapshot is not None:
            tail = await self.store.read(after=snapshot[0])
            try:
                state = await asyncio.to_thread(self._restore, snapshot[1], tail)
                return state, snapshot[0], tail
            except (SnapshotFormatError, ArchiveUnavailable, SegmentUnavailable) as exc:
                # Derived data from an older build, or a segment gone: folded anew.
                log.info("%s: folding the log from its start", exc)
        tail = await self.store.read(after=0)
        state = await asyncio.to_thread(ClusterState.rebuild, None, tail)
        return state, 0, tail
