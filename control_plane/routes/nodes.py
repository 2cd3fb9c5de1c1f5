"""``/api/nodes`` and ``/api/health``."""

from __future__ import annotations

from collections import Counter

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from control_plane.access import rule
from control_plane.errors import NotFound
from control_plane.routes.common import answer, control_plane
from control_plane.views import NodeOut
from events.store import WriteFailure

bp = Blueprint("nodes", url_prefix="/api")


@bp.get("/nodes")
@rule("user")
async def list_nodes(request: Request) -> HTTPResponse:
    """Every node ever registered, online or not."""
    state = control_plane(request).state
    nodes = sorted(state.nodes.values(), key=_name)
    return answer({"nodes": [NodeOut.of(n, state.tasks) for n in nodes]})


@bp.get("/nodes/<name:str>")
@rule("user")
async def get_node(request: Request, name: str) -> HTTPResponse:
    """One node in detail."""
    state = control_plane(request).state
    node = state.nodes.get(name)
    if node is None:
        raise NotFound("node", f"no node {name!r}")
    return answer(NodeOut.of(node, state.tasks))


@bp.get("/health")
@rule("public")
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
async def summary(request: Request) -> HTTPResponse:
    """A summary of the cluster: nodes online, agents connected, tasks by state."""
    cp = control_plane(request)
    state = cp.state
    by_state = Counter(t.state for t in state.tasks.values())
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
        }
    )


def _store_reason(failure: WriteFailure) -> str:
    return f"the event log cannot be written ({failure.what} failed: {failure.reason})"


def _name(node: object) -> str:
    return str(getattr(node, "name", ""))
