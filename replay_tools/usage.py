"""The cluster's allocated and offered resources over a window of time, from the log.

``GET /api/usage`` (the dashboard's overview chart) answers with this. Any user may ask,
so it holds aggregates only: counts of cores, bytes and GPUs, never a task, owner or
command.

What is allocated is what the scheduler reserved: a task holds its cores, memory and
GPUs from its ``task.placed`` to its first ``task.finished`` or ``task.lost`` after it
(``projections.tasks.HOLDING_STATES``: unreachable tasks keep holding). What is offered
is what the online nodes registered (``node.registered``; ``node.offline``,
``node.online`` and ``node.forgotten`` switch a node's share off and on), the same rule
as the ``nodes`` view. Heartbeats are not read: they are half the log and change
neither.

The window is cut into ``points`` equal buckets. Each bucket gives the time-weighted
average allocation (the honest utilisation), its peak (so a task shorter than a bucket
still shows), and what was offered at the bucket's end (the last bucket ends now, so its
totals are the ones ``GET /api/nodes`` sums).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import duckdb
import msgspec

from replay_tools.points import iso
from replay_tools.queries import HistoryError

MAX_HOURS = 24 * 31
MIN_HOURS = 1 / 60
MAX_POINTS = 1000
DEFAULT_HOURS = 6.0
DEFAULT_POINTS = 120

# (start_us, end_us or None, cores, memory_bytes, gpus) of every reservation that
# overlaps [lo, hi].
_HELD_SQL = """
WITH p AS (
    SELECT seq, payload->>'$.task_id' AS task_id, epoch_us(recorded_at) AS ts,
        coalesce((payload->>'$.cores')::BIGINT, 0) AS cores,
        coalesce((payload->>'$.memory_bytes')::BIGINT, 0) AS memory_bytes,
        coalesce(json_array_length(payload->'$.gpu_ids'), 0)::BIGINT AS gpus
    FROM events
    WHERE kind = 'task.placed' AND epoch_us(recorded_at) <= $hi
),
e AS (
    SELECT seq, payload->>'$.task_id' AS task_id, epoch_us(recorded_at) AS ts
    FROM events WHERE kind IN ('task.finished', 'task.lost')
)
SELECT p.ts, min(e.ts) AS ended, p.cores, p.memory_bytes, p.gpus
FROM p LEFT JOIN e ON e.task_id = p.task_id AND e.seq > p.seq
GROUP BY p.seq, p.ts, p.cores, p.memory_bytes, p.gpus
HAVING min(e.ts) IS NULL OR min(e.ts) > $lo
"""

_NODE_SQL = """
SELECT epoch_us(recorded_at) AS ts, kind, payload->>'$.node' AS node,
    coalesce((payload->>'$.cores')::BIGINT, 0) AS cores,
    coalesce((payload->>'$.memory_bytes')::BIGINT, 0) AS memory_bytes,
    coalesce(json_array_length(payload->'$.gpus'), 0)::BIGINT AS gpus
FROM events
WHERE kind IN ('node.registered', 'node.online', 'node.offline', 'node.forgotten')
    AND epoch_us(recorded_at) <= $hi
ORDER BY seq
"""

Vector = tuple[int, int, int]  # cores, memory bytes, GPUs


class Resource(msgspec.Struct, kw_only=True):
    """One resource over the buckets."""

    allocated: list[float]  # time-weighted average over the bucket
    allocated_peak: list[int]  # the most held at any moment of the bucket
    total: list[int]  # offered by the online nodes at the bucket's end


class Usage(msgspec.Struct, kw_only=True):
    """``GET /api/usage``: the window, the buckets' end times, and each resource."""

    start: str | None
    end: str | None
    start_us: int
    end_us: int
    step_s: float
    points: int
    t: list[float]  # each bucket's end, Unix seconds (what a chart's x axis wants)
    nodes_online: list[int]  # at each bucket's end
    cores: Resource
    memory_bytes: Resource
    gpus: Resource


def usage_window(hours: str | None, points: str | None) -> tuple[float, int]:
    """The query's ``hours`` (0 < h ≤ 744) and ``points`` (2 to 1000), checked."""
    span = DEFAULT_HOURS
    if hours is not None and hours != "":
        try:
            span = float(hours) if len(hours) <= 20 else math.nan
        except ValueError:
            span = math.nan
        if not math.isfinite(span):
            raise HistoryError("hours", f"must be a number of hours, got {hours[:40]!r}")
        # At least a minute: a bucket must be a microsecond or more (0.000001 h is none).
        if not MIN_HOURS <= span <= MAX_HOURS:
            raise HistoryError(
                "hours", f"must be from {MIN_HOURS:g} to {MAX_HOURS} hours, got {span:g}"
            )
    count = DEFAULT_POINTS
    if points is not None and points != "":
        # ASCII digits only: str.isdigit() takes "²", which int() refuses.
        if not re.fullmatch(r"[0-9]{1,6}", points):
            raise HistoryError("points", f"must be a whole number, got {points[:40]!r}")
        count = int(points)
        if not 2 <= count <= MAX_POINTS:
            raise HistoryError("points", f"must be from 2 to {MAX_POINTS}, got {count}")
    return span, count


def usage_series(
    con: duckdb.DuckDBPyConnection, *, end_us: int, hours: float, points: int
) -> Usage:
    """The usage over the ``hours`` before ``end_us``, in ``points`` buckets (``con`` has
    the ``events`` view)."""
    start_us = end_us - round(hours * 3600e6)
    step = (end_us - start_us) / points
    params = {"lo": start_us, "hi": end_us}
    held = con.execute(_HELD_SQL, params).fetchall()
    changes: list[tuple[int, Vector]] = []
    initial = [0, 0, 0]
    for started, ended, cores, memory, gpus in held:
        vector = (int(cores), int(memory), int(gpus))
        if started <= start_us:
            initial = [a + b for a, b in zip(initial, vector, strict=True)]
        else:
            changes.append((started, vector))
        if ended is not None and ended <= end_us:
            changes.append((ended, (-vector[0], -vector[1], -vector[2])))
    alloc = _buckets(tuple(initial), changes, start_us, step, points)  # type: ignore[arg-type]
    offered_initial, offered_changes, online_initial, online_changes = _offered(
        con.execute(_NODE_SQL, {"hi": end_us}).fetchall(), start_us
    )
    offered = _buckets(offered_initial, offered_changes, start_us, step, points)
    online = _buckets((online_initial, 0, 0), online_changes, start_us, step, points)

    def resource(i: int) -> Resource:
        return Resource(
            allocated=[round(a[i], 3) for a in alloc.average],
            allocated_peak=[p[i] for p in alloc.peak],
            total=[e[i] for e in offered.end],
        )

    return Usage(
        start=iso(start_us),
        end=iso(end_us),
        start_us=start_us,
        end_us=end_us,
        step_s=step / 1e6,
        points=points,
        t=[(start_us + step * (i + 1)) / 1e6 for i in range(points)],
        nodes_online=[e[0] for e in online.end],
        cores=resource(0),
        memory_bytes=resource(1),
        gpus=resource(2),
    )


def _offered(
    rows: Iterable[Sequence[object]], start_us: int
) -> tuple[Vector, list[tuple[int, Vector]], int, list[tuple[int, Vector]]]:
    """What the online nodes offer: the value at ``start_us`` and the changes after it,
    and the same for the count of online nodes."""
    nodes: dict[str, tuple[bool, Vector]] = {}
    total = [0, 0, 0]
    count = 0
    initial: Vector | None = None
    initial_count = 0
    changes: list[tuple[int, Vector]] = []
    count_changes: list[tuple[int, Vector]] = []
    for ts, kind, node, cores, memory, gpus in rows:
        assert isinstance(ts, int) and isinstance(node, str)
        if ts > start_us and initial is None:
            initial, initial_count = (total[0], total[1], total[2]), count
        was_online, size = nodes.get(node, (False, (0, 0, 0)))
        if kind == "node.registered":
            size = (int(cores), int(memory), int(gpus))  # type: ignore[call-overload]
            online = True
        elif kind == "node.forgotten":
            online = False
        else:
            online = kind == "node.online"
        if node not in nodes and kind != "node.registered":
            continue  # an event for a node never registered (or forgotten): nothing offered
        old = size_of(nodes.get(node))
        new = size if online else (0, 0, 0)
        if kind == "node.forgotten":
            nodes.pop(node, None)
        else:
            nodes[node] = (online, size)
        delta = (new[0] - old[0], new[1] - old[1], new[2] - old[2])
        count_delta = int(online) - int(was_online)
        total = [a + b for a, b in zip(total, delta, strict=True)]
        count += count_delta
        if initial is not None:
            if delta != (0, 0, 0):
                changes.append((ts, delta))
            if count_delta:
                count_changes.append((ts, (count_delta, 0, 0)))
    if initial is None:
        initial, initial_count = (total[0], total[1], total[2]), count
    return initial, changes, initial_count, count_changes


def size_of(entry: tuple[bool, Vector] | None) -> Vector:
    """What a node offers now: its size while online, nothing otherwise."""
    if entry is None or not entry[0]:
        return (0, 0, 0)
    return entry[1]


class _Series(msgspec.Struct):
    average: list[tuple[float, float, float]]
    peak: list[Vector]
    end: list[Vector]


def _buckets(
    initial: Vector, changes: list[tuple[int, Vector]], start_us: int, step: float, points: int
) -> _Series:
    """A step function (``initial`` at ``start_us``, then ``changes``) cut into buckets:
    each one's time-weighted average, its peak and its value at the end."""
    changes.sort(key=lambda c: c[0])
    value = list(initial)
    average: list[tuple[float, float, float]] = []
    peak: list[Vector] = []
    end: list[Vector] = []
    k = 0
    for i in range(points):
        lo = start_us + step * i
        hi = start_us + step * (i + 1)
        area = [0.0, 0.0, 0.0]
        top = list(value)
        at = lo
        # A change exactly at a bucket's end belongs to it (the last bucket ends now).
        while k < len(changes) and (
            changes[k][0] < hi or (i == points - 1 and changes[k][0] <= hi)
        ):
            ts, delta = changes[k]
            span = max(0.0, ts - at)
            area = [a + v * span for a, v in zip(area, value, strict=True)]
            at = max(at, ts)
            value = [v + d for v, d in zip(value, delta, strict=True)]
            top = [max(t, v) for t, v in zip(top, value, strict=True)]
            k += 1
        area = [a + v * max(0.0, hi - at) for a, v in zip(area, value, strict=True)]
        average.append((area[0] / step, area[1] / step, area[2] / step))
        peak.append((top[0], top[1], top[2]))
        end.append((value[0], value[1], value[2]))
    return _Series(average, peak, end)
