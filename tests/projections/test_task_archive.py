"""The task archive (projections/archive.py): a state restored from archived snapshots,
its final tasks read lazily from segments, is the full fold's, in every reader's view."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.factories import record_in_memory
from support.histories import ClusterSimulation

from projections.archive import ArchiveRef
from projections.cluster import ClusterState
from projections.tasks import FINAL_STATES

histories = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "nodes": st.integers(1, 5),
        "tasks": st.integers(0, 60),
        "offline": st.sampled_from([0.0, 0.02, 0.1]),
        "numbered_after": st.sampled_from([None, 0, 5]),
    }
)


class Disk:
    """Segments written, by (seq, token), and which were read."""

    def __init__(self) -> None:
        self.files: dict[tuple[int, bytes], bytes] = {}
        self.reads: list[int] = []

    def load(self, ref: ArchiveRef) -> bytes:
        self.reads.append(ref.seq)
        return self.files[ref.seq, ref.token]

    def snapshot(self, state: ClusterState) -> bytes:
        """What the control plane writes: the segment first, then the snapshot."""
        state.seal(random.randbytes(32))
        for segment in state.tasks.unwritten():
            assert segment.unwritten is not None
            self.files[segment.ref.seq, segment.ref.token] = segment.unwritten
            segment.unwritten = None
        return state.archived_snapshot()


def assert_same(rebuilt: ClusterState, full: ClusterState) -> None:
    assert rebuilt.snapshot() == full.snapshot()  # every task, in submission order
    assert list(rebuilt.tasks) == list(full.tasks)
    assert len(rebuilt.tasks) == len(full.tasks)
    assert list(rebuilt.pending) == list(full.pending)
    assert rebuilt.last_seq == full.last_seq
    assert (rebuilt.numbers, rebuilt.last_number) == (full.numbers, full.last_number)
    for task_id, task in full.tasks.items():
        assert task_id in rebuilt.tasks
        assert rebuilt.tasks.get(task_id) == task == rebuilt.tasks[task_id]
        assert rebuilt.numbers.get(task.number) == full.numbers.get(task.number)
    assert "no-such-task" not in rebuilt.tasks
    assert rebuilt.vps_holding == full.vps_holding
    assert rebuilt.tasks.state_counts() == Counter(t.state for t in full.tasks.values())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=histories, cuts=st.lists(st.floats(0, 1), min_size=1, max_size=4))
def test_a_chain_of_archived_snapshots_plus_tail_equals_the_full_fold(
    params: dict[str, Any], cuts: list[float]
) -> None:
    # Given a log snapshotted several times, each time restored from the previous
    # snapshot (as restarts do) and its final tasks archived
    sim = ClusterSimulation(
        random.Random(params["seed"]),
        nodes=int(params["nodes"]),
        offline_chance=float(params["offline"]),
        numbered_after=params["numbered_after"],
    )
    records = record_in_memory(list(sim.events(int(params["tasks"]))))
    full = ClusterState()
    full.apply_all(records)
    disk = Disk()
    state, done = ClusterState(), 0
    for cut in sorted(int(len(records) * c) for c in cuts):
        state.apply_all(records[done:cut])
        done = cut
        data = disk.snapshot(state)
        state = ClusterState.restore(data, disk.load)
    # When the tail is folded on the last restore
    state.apply_all(records[done:])
    # Then it is the full fold, in every view
    assert_same(state, full)


def test_a_restore_reads_no_segment_until_an_archived_task_is_asked_for() -> None:
    sim = ClusterSimulation(random.Random(3), nodes=3)
    records = record_in_memory(list(sim.events(200)))
    k = len(records) * 2 // 3
    disk = Disk()
    early = ClusterState()
    early.apply_all(records[:k])
    final = [t.task_id for t in early.tasks.values() if t.state in FINAL_STATES]
    assert final
    data = disk.snapshot(early)
    assert len(data) < len(early.snapshot()) / 2  # the archived tasks are not in it
    # Restoring and folding the rest (new tasks submitted, numbered) reads no segment
    state = ClusterState.restore(data, disk.load)
    state.apply_all(records[k:])
    assert disk.reads == []
    assert len(state.tasks) == len({*final, *(t for t in state.tasks.live_ids())})
    # An archived task is read when asked for, by id or by number
    assert state.tasks[final[0]].state in FINAL_STATES
    assert disk.reads == [disk_seq := next(iter(disk.files))[0]]
    full = ClusterState()
    full.apply_all(records)
    assert_same(state, full)
    assert disk_seq == k


def test_a_snapshot_of_the_previous_format_still_restores() -> None:
    sim = ClusterSimulation(random.Random(5), nodes=2)
    records = record_in_memory(list(sim.events(50)))
    k = len(records) // 2
    old = ClusterState()
    old.apply_all(records[:k])
    data = old.snapshot()  # format 3: every task in it, no archive
    rebuilt = ClusterState.rebuild(data, records[k:])
    full = ClusterState()
    full.apply_all(records)
    assert_same(rebuilt, full)


def test_replacing_an_archived_task_keeps_its_place_and_is_what_is_read_back() -> None:
    # (replay_tools replaces views in its own copy of a state: stubs, numbers)
    sim = ClusterSimulation(random.Random(9), nodes=2)
    records = record_in_memory(list(sim.events(40)))
    disk = Disk()
    early = ClusterState()
    early.apply_all(records)
    order = list(early.tasks)
    state = ClusterState.restore(disk.snapshot(early), disk.load)
    archived = [t for t in order if t not in state.tasks.live_ids()]
    assert archived
    target = archived[len(archived) // 2]
    replaced = msgspec.structs.replace(early.tasks[target], message="replaced")  # unread here
    state.tasks[target] = replaced
    assert list(state.tasks.values())[order.index(target)] is replaced
    assert state.tasks[target] is replaced
    assert list(state.tasks) == order and len(state.tasks) == len(order)


def _restored(seed: int, nodes: int, tasks: int) -> tuple[ClusterState, ClusterState, Disk]:
    """A simulated history folded whole, and the state restored from its archived
    snapshot (every final task in one segment), with the disk it reads."""
    sim = ClusterSimulation(random.Random(seed), nodes=nodes)
    full = ClusterState()
    full.apply_all(record_in_memory(list(sim.events(tasks))))
    disk = Disk()
    return full, ClusterState.restore(disk.snapshot(full), disk.load), disk


def test_counting_tasks_by_state_reads_no_segment() -> None:
    # (/api/summary and the metrics count the tasks by state: after a restart of a long
    # history that must not decode every task ever run, on the event loop)
    full, state, disk = _restored(11, 3, 150)
    expected = Counter(t.state for t in full.tasks.values())
    assert state.tasks.unread_segments() == 1
    assert state.tasks.state_counts() == expected
    assert disk.reads == []


def test_a_segment_sealed_without_counts_is_read_to_count_it() -> None:
    # A snapshot written by the build before the counts: its references have none.
    full, state, disk = _restored(12, 2, 60)
    (segment,) = state.tasks.segments
    segment.ref = msgspec.structs.replace(segment.ref, states=())
    assert state.tasks.state_counts() == Counter(t.state for t in full.tasks.values())
    assert disk.reads == [segment.ref.seq]


def test_an_archived_view_replaced_by_an_active_one_is_counted_as_it_is_now() -> None:
    full, state, _ = _restored(13, 2, 40)
    archived = [t for t in full.tasks if t not in state.tasks.live_ids()]
    target = archived[0]
    was = full.tasks[target].state
    state.tasks[target] = msgspec.structs.replace(full.tasks[target], state="running")
    counts = state.tasks.state_counts()
    expected = Counter(t.state for t in full.tasks.values())
    expected[was] -= 1
    expected["running"] += 1
    assert counts == +expected


def test_an_unread_archived_view_replaced_by_another_final_state_is_counted_so() -> None:
    # (the view replaced is still undecoded in its segment: its state is not at hand)
    full, state, _ = _restored(14, 2, 40)
    archived = [t for t in full.tasks if t not in state.tasks.live_ids()]
    target = archived[0]
    was = full.tasks[target].state
    now = next(s for s in sorted(FINAL_STATES) if s != was)
    state.tasks[target] = msgspec.structs.replace(full.tasks[target], state=now)
    expected = Counter(t.state for t in full.tasks.values())
    expected[was] -= 1
    expected[now] += 1
    assert state.tasks.state_counts() == +expected
