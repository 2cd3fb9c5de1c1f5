"""Time travel over the log: state at a seq or a time, and diffs between two points.

Offline functions take a database path (or an open ``LogFile``) and are synchronous:
callers on an event loop run them in a thread. The ``*_live`` variants read through a
running ``EventStore``. Both restore the newest valid snapshot at or before the point
(the control plane's ``cluster`` snapshots or the ``history`` ones written by
``write_history_snapshots``) and fold only the tail, so no query scans the whole log.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import msgspec

from events.codec import Codec, gc_paused
from events.envelope import Recorded
from events.store import SELECT_COLUMNS, EventStore, decode_table
from projections.cluster import ClusterState

SNAPSHOT_NAMES = ("cluster", "history")
HISTORY_EVERY = 50_000


class LogFile:
    """A database file opened read-only, with the snapshots stored beside it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no event log at {self.path}")
        self.con = duckdb.connect(str(self.path), read_only=True)
        self.codec = Codec()
        self.snapshot_dir = self.path.with_name(self.path.name + ".snapshots")

    def close(self) -> None:
        """Close the database connection."""
        self.con.close()

    def __enter__(self) -> LogFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def last_seq(self) -> int:
        """The highest seq stored (0 for an empty log)."""
        return int(self.con.execute("SELECT coalesce(max(seq), 0) FROM events").fetchall()[0][0])

    def seq_at(self, at_us: int) -> int:
        """The last seq recorded at or before ``at_us`` (0 if none)."""
        rows = self.con.execute(
            "SELECT coalesce(max(seq), 0) FROM events WHERE recorded_at <= make_timestamptz(?)",
            [at_us],
        ).fetchall()
        return int(rows[0][0])

    def read(
        self, *, after: int = 0, until: int | None = None, streams: Sequence[str] | None = None
    ) -> list[Recorded]:
        """Decoded events after seq ``after`` up to ``until``, optionally of some streams only."""
        where, params = ["seq > ?"], [after]
        if until is not None:
            where.append("seq <= ?")
            params.append(until)
        if streams is not None:
            where.append("stream IN (SELECT unnest(?::VARCHAR[]))")
            params.append(list(streams))  # type: ignore[arg-type]
        sql = f"SELECT {SELECT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq"
        table = self.con.sql(sql, params=params).to_arrow_table()
        with gc_paused():
            return decode_table(self.codec, table)

    def hash_at(self, seq: int) -> bytes | None:
        """The stored chain hash of ``seq``."""
        rows = self.con.execute("SELECT hash FROM events WHERE seq = ?", [seq]).fetchall()
        return bytes(rows[0][0]) if rows else None

    def latest_snapshot(self, at_or_before: int) -> tuple[int, bytes] | None:
        """The newest snapshot (any of ``SNAPSHOT_NAMES``) anchored to this log, as (seq, data)."""
        found: list[tuple[int, Path]] = []
        for name in SNAPSHOT_NAMES:
            for path in self.snapshot_dir.glob(f"{name}-*.snap"):
                try:
                    seq = int(path.stem.rsplit("-", 1)[1])
                except ValueError:
                    continue
                if seq <= at_or_before:
                    found.append((seq, path))
        for seq, path in sorted(found, reverse=True):
            blob = path.read_bytes()
            if self.hash_at(seq) == blob[:32]:
                return seq, blob[32:]
        return None


def as_log(source: str | Path | LogFile) -> tuple[LogFile, bool]:
    """The log to read, and whether the caller opened it (and so must close it)."""
    if isinstance(source, LogFile):
        return source, False
    return LogFile(source), True


def state_at(
    source: str | Path | LogFile, *, seq: int | None = None, at_us: int | None = None
) -> ClusterState:
    """The cluster exactly as it was after ``seq`` (or the last event at or before ``at_us``)."""
    log, owned = as_log(source)
    try:
        target = _target_seq(log.last_seq, seq, at_us, log.seq_at)
        snap = log.latest_snapshot(target)
        tail = log.read(after=snap[0] if snap else 0, until=target)
        return ClusterState.rebuild(snap[1] if snap else None, tail)
    finally:
        if owned:
            log.close()


async def state_at_live(
    store: EventStore, *, seq: int | None = None, at_us: int | None = None
) -> ClusterState:
    """``state_at`` through a running store (for the control plane's routes)."""
    at_seq: int | None = None
    if seq is None and at_us is not None:
        rows = await store.query(
            "SELECT coalesce(max(seq), 0) FROM events WHERE recorded_at <= make_timestamptz(?)",
            [at_us],
        )
        at_seq = int(rows[0][0])
    target = _target_seq(store.last_seq, seq, None, lambda _: 0) if at_seq is None else at_seq
    best: tuple[int, bytes] | None = None
    for name in SNAPSHOT_NAMES:
        found = await store.latest_snapshot(name, at_or_before=target)
        if found is not None and (best is None or found[0] > best[0]):
            best = found
    tail = await store.read(after=best[0] if best else 0, until_seq=target)
    return ClusterState.rebuild(best[1] if best else None, tail)


def _target_seq(last: int, seq: int | None, at_us: int | None, seq_at: Any) -> int:
    if seq is not None and at_us is not None:
        raise ValueError("give a seq or a time (at_us), not both")
    if seq is not None:
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        return min(seq, last)
    if at_us is not None:
        return int(seq_at(at_us))
    return last


def write_history_snapshots(
    source: str | Path | LogFile, *, every: int = HISTORY_EVERY
) -> list[int]:
    """Fold the log once and keep a ``history`` snapshot every ``every`` seqs; return new seqs.

    The control plane keeps only its newest few ``cluster`` snapshots; these keep
    ``state_at`` fast at any point of a long history. Incremental: it starts at the
    newest history snapshot already there.
    """
    log, owned = as_log(source)
    try:
        last = log.last_seq
        folder = log.snapshot_dir
        done = sorted(
            int(p.stem.removeprefix("history-"))
            for p in folder.glob("history-*.snap")
            if p.stem.removeprefix("history-").isdigit()
        )
        start = done[-1] if done and log.hash_at(done[-1]) else 0
        snap = log.latest_snapshot(start) if start else None
        state = ClusterState.rebuild(snap[1] if snap else None, ())
        written: list[int] = []
        for mark in range(start + every, last + 1, every):
            state.apply_all(log.read(after=state.last_seq, until=mark))
            anchor = log.hash_at(mark)
            assert anchor is not None
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"history-{mark:015d}.snap"
            tmp = final.with_suffix(".tmp")
            tmp.write_bytes(anchor + state.snapshot())
            os.replace(tmp, final)
            written.append(mark)
        return written
    finally:
        if owned:
            log.close()


# -- diff --------------------------------------------------------------------------------------


class TaskChange(msgspec.Struct, frozen=True, kw_only=True):
    """One task's state and node at the two points (None where it did not exist)."""

    task_id: str
    state_from: str | None
    state_to: str | None
    node_from: str | None
    node_to: str | None


class NodeChange(msgspec.Struct, frozen=True, kw_only=True):
    """One node's liveness and allocations at the two points."""

    node: str
    online_from: bool | None
    online_to: bool | None
    allocated_cores_from: int
    allocated_cores_to: int
    allocated_memory_bytes_from: int
    allocated_memory_bytes_to: int
    allocated_gpus_from: list[int]
    allocated_gpus_to: list[int]


class StateDiff(msgspec.Struct, frozen=True, kw_only=True):
    """What changed between two states (``from_seq`` -> ``to_seq``)."""

    from_seq: int
    to_seq: int
    tasks_added: list[TaskChange]
    tasks_changed: list[TaskChange]
    tasks_removed: list[TaskChange]
    nodes_added: list[NodeChange]
    nodes_changed: list[NodeChange]
    nodes_removed: list[NodeChange]

    @property
    def empty(self) -> bool:
        """True when nothing changed."""
        changes = (self.tasks_added, self.tasks_changed, self.tasks_removed)
        return not any(changes) and not (
            self.nodes_added or self.nodes_changed or self.nodes_removed
        )

    def to_dict(self) -> dict[str, Any]:
        """The diff as JSON-able builtins."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


def diff(a: ClusterState, b: ClusterState) -> StateDiff:
    """Tasks and nodes that appeared, disappeared or changed from ``a`` to ``b``."""
    t_added, t_changed, t_removed = [], [], []
    for task_id in a.tasks.keys() | b.tasks.keys():
        old, new = a.tasks.get(task_id), b.tasks.get(task_id)
        change = TaskChange(
            task_id=task_id,
            state_from=old.state if old else None,
            state_to=new.state if new else None,
            node_from=old.node if old else None,
            node_to=new.node if new else None,
        )
        if old is None:
            t_added.append(change)
        elif new is None:
            t_removed.append(change)
        elif (old.state, old.node) != (new.state, new.node):
            t_changed.append(change)
    n_added, n_changed, n_removed = [], [], []
    for name in sorted(a.nodes.keys() | b.nodes.keys()):
        was, now = a.nodes.get(name), b.nodes.get(name)
        nchange = NodeChange(
            node=name,
            online_from=was.online if was else None,
            online_to=now.online if now else None,
            allocated_cores_from=was.allocated_cores if was else 0,
            allocated_cores_to=now.allocated_cores if now else 0,
            allocated_memory_bytes_from=was.allocated_memory_bytes if was else 0,
            allocated_memory_bytes_to=now.allocated_memory_bytes if now else 0,
            allocated_gpus_from=sorted(was.allocated_gpus) if was else [],
            allocated_gpus_to=sorted(now.allocated_gpus) if now else [],
        )
        if was is None:
            n_added.append(nchange)
        elif now is None:
            n_removed.append(nchange)
        elif (
            nchange.online_from != nchange.online_to
            or nchange.allocated_cores_from != nchange.allocated_cores_to
            or nchange.allocated_memory_bytes_from != nchange.allocated_memory_bytes_to
            or nchange.allocated_gpus_from != nchange.allocated_gpus_to
        ):
            n_changed.append(nchange)
    order = {tid: i for i, tid in enumerate([*a.tasks, *b.tasks])}

    def by_submission(changes: list[TaskChange]) -> list[TaskChange]:
        return sorted(changes, key=lambda c: order[c.task_id])

    return StateDiff(
        from_seq=a.last_seq,
        to_seq=b.last_seq,
        tasks_added=by_submission(t_added),
        tasks_changed=by_submission(t_changed),
        tasks_removed=by_submission(t_removed),
        nodes_added=n_added,
        nodes_changed=n_changed,
        nodes_removed=n_removed,
    )
