"""The fold's fast skip (``FOLDED_TYPES``) names exactly the kinds its ``match`` folds.

An event type added to the ``match`` but not to the set would be skipped silently (its
views never change); one in the set but not in the ``match`` costs only time. Both are
caught here by reading ``ClusterState.apply``'s source.
"""

from __future__ import annotations

import ast
import inspect
import textwrap

from events.envelope import Recorded
from events.ids import new_id
from events.types import EnvSynced, NodeOffline, kind_of
from projections.cluster import FOLDED_TYPES, ClusterState


def _matched_class_names() -> set[str]:
    source = textwrap.dedent(inspect.getsource(ClusterState.apply))
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.MatchClass) and isinstance(node.cls, ast.Name):
            names.add(node.cls.id)
    return names


def test_the_skip_set_is_the_match_s_list() -> None:
    matched = _matched_class_names()
    assert matched, "no class pattern found in ClusterState.apply"
    assert {t.__name__ for t in FOLDED_TYPES} == matched


def _recorded(seq: int, event: object) -> Recorded:
    return Recorded(
        seq=seq,
        id=new_id(),
        kind=kind_of(event),  # type: ignore[arg-type]
        stream=event.stream,  # type: ignore[attr-defined]
        source="n1",
        occurred_at_us=1,
        recorded_at_us=2,
        schema_version=1,
        hash=bytes(32),
        event=event,  # type: ignore[arg-type]
    )


def test_a_skipped_kind_still_moves_the_fold_s_position() -> None:
    state = ClusterState()
    synced = EnvSynced(name="e", node="n1", timestamp=1, sha256="ab" * 32, duration_s=1.0)
    assert type(synced) not in FOLDED_TYPES
    state.apply(_recorded(5, synced))
    assert state.last_seq == 5
    # A folded kind after it is still folded (a node.offline for an unknown node is
    # flagged as an anomaly: the fold looked at it).
    state.apply(_recorded(6, NodeOffline(node="ghost")))
    assert state.last_seq == 6
    assert any(a.seq == 6 for a in state.anomalies)
