"""``/api/nodes``, ``/api/nodes/<name>/forget``, ``/api/health`` and ``/api/summary``."""

from __future__ import annotations

from typing import Any

import msgspec
from sanic import Request
from sanic.response import HTTPResponse

from control_plane.access import rule
from control_plane.commands import ForgetNode
from control_plane.errors import InvalidRequest, NotFound
from control_plane.openapi import api, shape
from control_plane.routes.common import (
    JsonBlueprint,
    answer,
    control_plane,
    json_object,
    principal_of,
)
from control_plane.views import NodeOut
from events.store import WriteFailure
from events.types import TaskLost
from projections.archive import state_counts

bp = JsonBlueprint("nodes", url_prefix="/api")

# The answers this module writes as dicts, for the OpenAPI document (control_plane/openapi.py).
NodeList = shape("NodeList", nodes=list[NodeOut])
Forgotten = shape("Forgotten", node=str, forgotten=bool, tasks_lost=list[str])
ForgetRequest = msgspec.defstruct("ForgetRequest", [("reason", str, "")], kw_only=True)
# ok, or degraded with the reason (reason is left out when ok).
Health = msgspec.defstruct("Health", [("status", str), ("reason", str | None, None)], kw_only=True)
Summary = shape(
    "Summary",
    status=str,
    reason=str | None,
    store_failure=WriteFailure | None,
    last_seq=int,
    nodes_online=int,
    nodes_total=int,
    agents_connected=list[str],
    tasks=dict[str, int],
    anomalies=int,
    undecodable_events=int,
    liveness=dict[str, Any],
)


@bp.get("/nodes")
@rule("user")
@api("The nodes", response=NodeList)
async def list_nodes(request: Request) -> HTTPResponse:
    """Every node ever registered, online or not."""
    state = control_plane(request).state
    nodes = sorted(state.nodes.values(), key=_name)
    return answer({"nodes": [NodeOut.of(n, state.tasks) for n in nodes]})


@bp.get("/nodes/<name:str>")
@rule("user")
@api("One node", response=NodeOut)
async def get_node(request: Request, name: str) -> HTTPResponse:
    """One node in detail."""
    state = control_plane(request).state
    node = state.nodes.get(name)
    if node is None:
        raise NotFound("node", f"no node {name!r}")
    return answer(NodeOut.of(node, state.tasks))


MAX_REASON = 256


@bp.post("/nodes/<name:str>/forget")
@rule("admin")
@api("Forget an offline node", request=ForgetRequest, response=Forgotten)
async def forget_node(request: Request, name: str) -> HTTPResponse:
    """Remove a node that is offline and will not return (409 while it is online); its
    tasks still holding resources there are given up as lost."""
    body = json_object(request) if request.body else {}
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise InvalidRequest("reason", f"a string of at most {MAX_REASON} characters")
    cp = control_plane(request)
    outcome = await cp.execute(ForgetNode(node=name, actor=principal_of(request), reason=reason))
    lost = [e.task_id for e in outcome.decision.events if isinstance(e, TaskLost)]
    return answer({"node": name, "forgotten": True, "tasks_lost": lost})


@bp.get("/health")
@rule("public")
@api("Is the control plane up, and can it write its log", response=Health)
async def health(request: Request) -> HTTPResponse:
    """Is the control plane up, and can it write its log (a probe: no token, no data).

    ``{"status": "ok"}``, or ``{"status": "degraded", "reason": ...}`` while the event
    log cannot be written (a full disk): still 200, the host is alive and serves reads.
    The reason names no path; ``/api/summary`` has the details.
    """
    failure = control_plane(request).store_failure
    if failure is None:
        return answer({"status": "ok"})
    return answer({"status": "degraded", "reason": _store_reason(failure)})


@bp.get("/summary")
@rule("user")
@api("A summary of the cluster", response=Summary)
async def summary(request: Request) -> HTTPResponse:
    """A summary of the cluster: nodes online, agents connected, tasks by state."""
    cp = control_plane(request)
    state = cp.state
    by_state = state_counts(state.tasks)
    failure = cp.store_failure
    return answer(
        {
            "status": "ok" if failure is None else "degraded",
            "reason": None if failure is None else _store_reason(failure),
            "store_failure": failure,
            "last_seq": state.last_seq,
            "nodes_online": sum(1 for n in state.nodes.values() if n.online),
            "nodes_total": len(state.nodes),
            "agents_connected": cp.connected,
            "tasks": dict(sorted(by_state.items())),
            "anomalies": len(state.anomalies),
            # Stored events this host could not decode (skipped; see the host log).
            "undecodable_events": cp.undecodable_events,
            "liveness": msgspec.to_builtins(cp.liveness),
        }
    )


def _store_reason(failure: WriteFailure) -> str:
    return f"the event log cannot be written ({failure.what} failed: {failure.reason})"


def _name(node: object) -> str:
    return str(getattr(node, "name", ""))
