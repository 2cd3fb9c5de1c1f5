"""``hakuriver events``: the latest events, every event since a point, following the log,
and one event in full (docs/history.md).

Each asks the running control plane, or with ``--db FILE`` reads the file
(history_source.py): the same documents either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated

from cyclopts import App, Parameter, validators

from cli.hakuriver.history_render import event_detail, event_line
from cli.hakuriver.history_source import (
    EventQuery,
    Json,
    Offline,
    PointText,
    Positive,
    reading,
)
from cli.hakuriver.invocation import Connection, JsonFlag, print_json, reported, say, show
from control_plane.requests import InvalidRequest

PAGE = 1000
# One a second per node: they drowned out everything else in ``events tail``; the host
# leaves them out (``exclude``), so following stays cheap.
HEARTBEAT = "node.heartbeat"

events_app = App(name="events", help="The event log: recent events, following it, one event.")


@events_app.command
@reported
def tail(
    *,
    follow: Annotated[bool, Parameter(name=["--follow", "-f"])] = False,
    kind: list[str] | None = None,
    task: str | None = None,
    node: str | None = None,
    source: str | None = None,
    actor: str | None = None,
    since: PointText | None = None,
    lines: Annotated[Positive, Parameter(name=["--lines", "-n"])] = 20,
    every_kind: Annotated[bool, Parameter(name="--all")] = False,
    as_json: JsonFlag = False,
    offline: Offline | None = None,
    conn: Connection | None = None,
) -> int:
    """Print the latest events, or every event since a point; with -f, keep following.

    Node heartbeats (one a second per node) are left out unless asked for: --kind
    node.heartbeat, or --all.

    Parameters
    ----------
    follow
        Keep printing events as they are recorded (server-sent events; a dropped
        connection resumes after the last event printed, so none is missed or repeated).
    kind
        Only this kind (repeatable, or a comma list): task.placed, node.offline, ... or a
        family: task.*, node.*, env.*, ssh.* (node.* without heartbeats: name
        node.heartbeat to see them).
    task
        Only this task's events (its number, its id, or a unique prefix of its id).
    node
        Only events of this node, or naming it (placements, starts, ...).
    source
        Only events emitted by this source (host, a node name).
    actor
        Only events caused by this user's requests (who did this?).
    since
        Every event from this point on: a seq (1200), a time (2026-11-21T10:00:00Z), or a
        relative time (-10m, -2h). Without it, the last --lines events.
    lines
        How many of the latest events to print (without --since).
    every_kind
        Every event, node heartbeats included.
    as_json
        One JSON document per event, one per line.
    """
    kinds = tuple(kind or ())
    query = EventQuery(
        kinds=kinds,
        exclude=() if every_kind or _names_heartbeats(kinds) else (HEARTBEAT,),
        task=task,
        node=node,
        source=source,
        actor=actor,
        since=since,
    )
    emit = _print_json_line if as_json else _print_line
    if follow and offline is not None and offline.db is not None:
        raise InvalidRequest("follow", "--follow needs the running control plane: drop --db")
    with reading(offline, conn) as history:
        position = 0
        if since is None:
            page = history.events(query, after=0, limit=lines, tail=True)
            position = _print_events(page["events"], emit)
            position = max(position, int(page.get("next_after", 0)))
        else:
            while True:
                page = history.events(query, after=position, limit=PAGE, tail=False)
                _print_events(page["events"], emit)
                position = int(page["next_after"])
                if not page.get("more"):
                    break
        if follow:
            for event in history.follow(query, after=position):
                _print_events([event], emit)
    return 0


def _names_heartbeats(kinds: tuple[str, ...]) -> bool:
    """Whether ``--kind`` asks for heartbeats by name (a family such as node.* does not)."""
    return any(HEARTBEAT in (k.strip() for k in word.split(",")) for word in kinds)


def _print_events(events: list[Json], emit: Callable[[Json], None]) -> int:
    """Print each event; the greatest seq printed (0 for none)."""
    for event in events:
        emit(event)
    return max((int(event.get("seq", 0)) for event in events), default=0)


def _print_line(event: Json) -> None:
    say(event_line(event))


def _print_json_line(event: Json) -> None:
    say(json.dumps(event, ensure_ascii=False))


@reported
def show_event(
    seq: Annotated[int, Parameter(validator=validators.Number(gt=0))],
    /,
    *,
    as_json: JsonFlag = False,
    offline: Offline | None = None,
    conn: Connection | None = None,
) -> int:
    """Show one event: its envelope (seq, kind, stream, source, times, hash) and payload.

    Parameters
    ----------
    seq
        The event's seq.
    as_json
        Print the API's event document.
    """
    with reading(offline, conn) as history:
        event = history.event(seq)
    if as_json:
        print_json(event)
    else:
        show(event_detail(event))
    return 0


events_app.command(show_event, name="show")
# ``hakuriver events --actor bob`` is ``events tail --actor bob``.
events_app.default(tail)
