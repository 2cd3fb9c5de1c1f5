"""The task table: active tasks in memory, final ones archived and decoded on access.

A task in a final state (``FINAL_STATES``: completed, failed, killed, killed_oom) changes
no more: every later event of it is illegal and leaves it as it is. So a restart need not
decode them. When the control plane snapshots, the final tasks not yet archived are
*sealed* into a segment (encoded once, written once beside the log by
``events.archive_files``), and the snapshot then carries only the other tasks plus a
reference (``ArchiveRef``) to each segment. A restore keeps the references and reads a
segment only when one of its tasks is asked for (``get``, ``in``, ``[]``) or the whole table
is walked (``values``): restart costs O(active tasks + segments), not O(every task).

``TaskTable`` is a ``MutableMapping[str, TaskView]`` with the plain dict's behaviour the
readers rely on: iteration in submission order (each task keeps an *ordinal*, its rank
among all tasks ever inserted), ``len`` of all tasks, lookups of archived tasks. A lost
task is not final (its node may report it late) and stays active. Each reference keeps
the range of its task ids and numbers, so checking a new submission's id or number
against the archive reads no segment unless it falls inside a range (task ids are
UUIDv7s, increasing with time, and numbers increase: a new one is above every range).

This module does no I/O: a segment's bytes come from a loader the caller passes in.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, MutableMapping
from operator import itemgetter

import msgspec
from msgspec import Struct

from events.codec import gc_paused
from projections.tasks import FINAL_STATES, TaskView


class ArchiveRef(Struct, kw_only=True, frozen=True):
    """One archive segment, as a snapshot names it."""

    seq: int  # the state's seq when it was sealed (the file's name)
    token: bytes  # random, written at the file's start: the file is this segment
    count: int
    min_id: str
    max_id: str
    min_number: int  # the numbers the segment's tasks own (min > max: none)
    max_number: int
    # How many of its tasks end in each state: a summary counts the archive without
    # reading it (empty in a segment sealed before they were kept: it is read then).
    states: tuple[tuple[str, int], ...] = ()


class _SegmentData(Struct, array_like=True):
    ids: list[str]
    ordinals: list[int]
    numbers: list[tuple[int, str]]
    views: list[msgspec.Raw]


class ArchiveUnavailable(LookupError):
    """A segment a snapshot names cannot be read (removed, or another log's)."""


Loader = Callable[[ArchiveRef], bytes]

_segment_encoder = msgspec.msgpack.Encoder()
_segment_decoder = msgspec.msgpack.Decoder(_SegmentData)
_view_decoder = msgspec.msgpack.Decoder(TaskView)
_ord = itemgetter(0)


class Segment:
    """One sealed segment: its reference, and its index and views once read."""

    __slots__ = (
        "_ids",
        "_loader",
        "_raw",
        "_recount",
        "_views",
        "numbers",
        "ref",
        "unwritten",
    )

    def __init__(self, ref: ArchiveRef, loader: Loader | None) -> None:
        self.ref = ref
        self._loader = loader
        # A sealed segment's bytes until they are written (a snapshot may name it then).
        self.unwritten: bytes | None = None
        self._ids: dict[str, int] | None = None  # id -> ordinal
        self._raw: dict[str, msgspec.Raw] = {}  # not yet decoded
        self._views: dict[str, TaskView] = {}
        self.numbers: dict[int, str] | None = None
        # A view replaced by one not in a final state: the ref's counts no longer hold.
        self._recount = False

    @classmethod
    def seal(
        cls,
        ref_seq: int,
        token: bytes,
        entries: list[tuple[int, TaskView]],
        numbers: dict[int, str],
    ) -> tuple[Segment, bytes]:
        """A new segment of ``entries`` (ordinal, view), and its bytes to write."""
        ids = [v.task_id for _, v in entries]
        data = _segment_encoder.encode(
            _SegmentData(
                ids=ids,
                ordinals=[o for o, _ in entries],
                numbers=sorted(numbers.items()),
                views=[msgspec.Raw(_segment_encoder.encode(v)) for _, v in entries],
            )
        )
        ref = ArchiveRef(
            seq=ref_seq,
            token=token,
            count=len(entries),
            min_id=min(ids),
            max_id=max(ids),
            min_number=min(numbers, default=1),
            max_number=max(numbers, default=0),
            states=tuple(sorted(Counter(v.state for _, v in entries).items())),
        )
        segment = cls(ref, None)
        segment._ids = {v.task_id: o for o, v in entries}
        segment._views = {v.task_id: v for _, v in entries}
        segment.numbers = dict(numbers)
        segment.unwritten = data
        return segment, data

    def index(self) -> dict[str, int]:
        """Task id -> ordinal, of every task of the segment (reads it once)."""
        return self._index()

    def _index(self) -> dict[str, int]:
        if self._ids is None:
            assert self._loader is not None
            with gc_paused():
                data = _segment_decoder.decode(self._loader(self.ref))
            self._ids = dict(zip(data.ids, data.ordinals, strict=True))
            self._raw = dict(zip(data.ids, data.views, strict=True))
            self.numbers = dict(data.numbers)
        return self._ids

    def may_hold(self, task_id: str) -> bool:
        return self.ref.min_id <= task_id <= self.ref.max_id

    def __contains__(self, task_id: str) -> bool:
        return self.may_hold(task_id) and task_id in self._index()

    def get(self, task_id: str) -> TaskView | None:
        if not self.may_hold(task_id) or task_id not in self._index():
            return None
        view = self._views.get(task_id)
        if view is None:
            view = self._views[task_id] = _view_decoder.decode(self._raw.pop(task_id))
        return view

    def put(self, view: TaskView) -> None:
        """Replace an archived task's view (a reader's own copy of the state only)."""
        self._index()
        raw = self._raw.pop(view.task_id, None)  # never decoded over the new view
        old = self._views.get(view.task_id)
        self._views[view.task_id] = view
        # Readers replace final views with final ones of the same state (history's stubs);
        # anything else is counted from the views from now on.
        if self._recount or view.state not in FINAL_STATES:
            self._recount = True
            return
        if old is None and raw is not None:  # still undecoded: its state read for this
            old = _view_decoder.decode(raw)
        self._recount = old is not None and old.state != view.state

    def state_counts(self) -> Mapping[str, int]:
        """How many of its tasks are in each state (reads the segment only when its
        reference does not say: sealed by an older build, or a view replaced)."""
        if self.ref.states and not self._recount:
            return dict(self.ref.states)
        return Counter(v.state for _, v in self.entries())

    def entries(self) -> list[tuple[int, TaskView]]:
        """(ordinal, view) of every task, in ordinal order (decodes them all once)."""
        ids = self._index()
        if self._raw:
            with gc_paused():
                for task_id, raw in self._raw.items():
                    self._views[task_id] = _view_decoder.decode(raw)
            self._raw = {}
        return sorted(((ids[t], v) for t, v in self._views.items()), key=_ord)

    def owner_of(self, number: int) -> str | None:
        if not self.ref.min_number <= number <= self.ref.max_number:
            return None
        self._index()
        assert self.numbers is not None
        return self.numbers.get(number)


class TaskTable(MutableMapping[str, TaskView]):
    """Every task: the active ones in a dict, the final ones sealed into segments."""

    def __init__(self, tasks: Iterable[TaskView] = ()) -> None:
        self._live: dict[str, TaskView] = {}
        self._ordinal: dict[str, int] = {}  # of the live tasks
        self.segments: list[Segment] = []
        # Above these, nothing is archived: a new submission's id or number is looked up
        # in no segment at all (one comparison, however many segments).
        self.max_archived_id = ""
        self.max_archived_number = 0
        self.next_ordinal = 0
        self._archived = 0
        self._merged: list[tuple[int, TaskView]] | None = None  # all archived, by ordinal
        self._all: list[TaskView] | None = None  # every task, until the next change
        for task in tasks:
            self[task.task_id] = task

    # -- the mapping -------------------------------------------------------------------

    def __getitem__(self, task_id: str) -> TaskView:
        view = self._live.get(task_id)
        if view is None:
            view = self._archived_view(task_id)
            if view is None:
                raise KeyError(task_id)
        return view

    def get(self, task_id: str, default: TaskView | None = None) -> TaskView | None:  # type: ignore[override]
        view = self._live.get(task_id)
        if view is None:
            view = self._archived_view(task_id)
        return default if view is None else view

    def __contains__(self, task_id: object) -> bool:
        if task_id in self._live:
            return True
        if not isinstance(task_id, str) or task_id > self.max_archived_id:
            return False
        return any(task_id in s for s in self.segments)

    def __setitem__(self, task_id: str, view: TaskView) -> None:
        self._all = None
        if task_id in self._live:
            self._live[task_id] = view
            return
        for segment in self.segments if task_id <= self.max_archived_id else ():
            if task_id in segment:
                segment.put(view)
                self._merged = None
                return
        self._live[task_id] = view
        self._ordinal[task_id] = self.next_ordinal
        self.next_ordinal += 1

    def __delitem__(self, task_id: str) -> None:
        self._all = None
        del self._live[task_id]  # archived tasks are never removed
        del self._ordinal[task_id]

    def __len__(self) -> int:
        return len(self._live) + self._archived

    def __iter__(self) -> Iterator[str]:
        """Every task id in submission order (reads the segments' indexes, decodes no view)."""
        if not self.segments:
            return iter(self._live)
        keyed = [(o, t) for s in self.segments for t, o in s.index().items()]
        keyed += ((self._ordinal[t], t) for t in self._live)
        keyed.sort(key=_ord)
        return (t for _, t in keyed)

    def values(self) -> Collection[TaskView]:  # type: ignore[override]
        """Every task in submission order (reads every segment once)."""
        if not self.segments:
            return self._live.values()
        if self._all is None:
            if self._merged is None:
                merged = list(itertools.chain.from_iterable(s.entries() for s in self.segments))
                merged.sort(key=_ord)  # sorted runs: a merge
                self._merged = merged
            ordinal = self._ordinal
            both = [*self._merged, *((ordinal[t], v) for t, v in self._live.items())]
            both.sort(key=_ord)
            self._all = [v for _, v in both]
        return self._all

    def items(self) -> Collection[tuple[str, TaskView]]:  # type: ignore[override]
        if not self.segments:
            return self._live.items()
        return [(v.task_id, v) for v in self.values()]

    def state_counts(self) -> Counter[str]:
        """How many tasks are in each state: the live ones counted, the archived ones
        from their segments' references (none read: a summary after a restart of a long
        history must not decode every task ever run on the event loop)."""
        counts = Counter(v.state for v in self._live.values())
        for segment in self.segments:
            counts.update(segment.state_counts())
        return counts

    def _archived_view(self, task_id: str) -> TaskView | None:
        if task_id > self.max_archived_id:
            return None
        for segment in self.segments:
            view = segment.get(task_id)
            if view is not None:
                return view
        return None

    # -- the archive -------------------------------------------------------------------

    def max_id(self) -> str:
        """The greatest task id ("" when none), reading no segment."""
        return max([*self._live, *(s.ref.max_id for s in self.segments)], default="")

    def unread_segments(self) -> int:
        """How many segments have not been read (none of their tasks asked for)."""
        return sum(1 for s in self.segments if s._ids is None)

    def live_ids(self) -> list[str]:
        """The ids of the tasks not archived."""
        return list(self._live)

    def live(self) -> list[tuple[int, TaskView]]:
        """(ordinal, view) of the tasks not archived, in submission order."""
        return [(self._ordinal[t], v) for t, v in self._live.items()]

    def adopt(self, entries: Iterable[tuple[int, TaskView]], next_ordinal: int) -> None:
        """Take restored live tasks with their ordinals (a snapshot's)."""
        self._all = None
        for ordinal, view in entries:
            self._live[view.task_id] = view
            self._ordinal[view.task_id] = ordinal
        self.next_ordinal = next_ordinal

    def attach(self, refs: Iterable[ArchiveRef], loader: Loader) -> None:
        """Name the segments a snapshot refers to; none is read until needed."""
        for ref in refs:
            self.segments.append(Segment(ref, loader))
            self._archived += ref.count
            self._bound(ref)
        self._merged = self._all = None

    def seal(self, seq: int, token: bytes, numbers: NumberTable) -> tuple[Segment, bytes] | None:
        """Move the final live tasks into a new segment; return it and its bytes to write
        (None when no task is final). Its ``unwritten`` bytes stay until the writer clears them."""
        entries = [(self._ordinal[t], v) for t, v in self._live.items() if v.state in FINAL_STATES]
        if not entries:
            return None
        owned = {v.number: v.task_id for _, v in entries if numbers.live.get(v.number) == v.task_id}
        segment, data = Segment.seal(seq, token, entries, owned)
        for _, view in entries:
            del self._live[view.task_id]
            del self._ordinal[view.task_id]
        for number in owned:
            del numbers.live[number]
        self.segments.append(segment)
        self._bound(segment.ref)
        self._archived += len(entries)
        self._merged = self._all = None
        return segment, data

    def _bound(self, ref: ArchiveRef) -> None:
        self.max_archived_id = max(self.max_archived_id, ref.max_id)
        self.max_archived_number = max(self.max_archived_number, ref.max_number)

    def refs(self) -> list[ArchiveRef]:
        return [s.ref for s in self.segments]

    def unwritten(self) -> list[Segment]:
        """The sealed segments whose bytes are not yet written (oldest first)."""
        return [s for s in self.segments if s.unwritten is not None]


class NumberTable(MutableMapping[int, str]):
    """Task number -> task id: the live tasks' in a dict, the archived ones' in segments."""

    def __init__(self, tasks: TaskTable | None = None) -> None:
        self.live: dict[int, str] = {}
        self._tasks = tasks if tasks is not None else TaskTable()

    @property
    def segments(self) -> list[Segment]:
        return self._tasks.segments

    def __getitem__(self, number: int) -> str:
        found = self.get(number)
        if found is None:
            raise KeyError(number)
        return found

    def get(self, number: int, default: str | None = None) -> str | None:  # type: ignore[override]
        found = self.live.get(number)
        if found is not None or number > self._tasks.max_archived_number:
            return found if found is not None else default
        for segment in self.segments:
            found = segment.owner_of(number)
            if found is not None:
                return found
        return default

    def __contains__(self, number: object) -> bool:
        return isinstance(number, int) and self.get(number) is not None

    def __setitem__(self, number: int, task_id: str) -> None:
        self.live[number] = task_id

    def __delitem__(self, number: int) -> None:
        del self.live[number]

    def _all(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for segment in self.segments:
            segment._index()
            assert segment.numbers is not None
            out.update(segment.numbers)
        out.update(self.live)
        return dict(sorted(out.items()))

    def __iter__(self) -> Iterator[int]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def items(self) -> list[tuple[int, str]]:  # type: ignore[override]
        return list(self._all().items())


def state_counts(tasks: Mapping[str, TaskView]) -> Counter[str]:
    """How many of ``tasks`` are in each state (a ``TaskTable`` reads no segment)."""
    if isinstance(tasks, TaskTable):
        return tasks.state_counts()
    return Counter(v.state for v in tasks.values())


def as_table(tasks: Mapping[str, TaskView]) -> TaskTable:
    """A table of ``tasks`` (in their order), or ``tasks`` itself if it is one."""
    return tasks if isinstance(tasks, TaskTable) else TaskTable(tasks.values())
