"""``/api/nodes`` and ``/api/health``."""

from __future__ import annotations

from collections import Counter

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from control_plane.access import rule
from control_plane.errors import NotFound
from control_plane.routes.common import answer, control_plane
from control_plane.views import NodeOut

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
    """Is the control plane up (a bare liveness probe: no token, no data)."""
    return answer({"status": "ok"})


@bp.get("/summary")
@rule("user")
async def summary(request: Request) -> HTTPResponse:
    """A summary of the cluster: nodes online, agents connected, tasks by state."""
    cp = control_plane(request)
    state = cp.state
    by_state = Counter(t.state for t in state.tasks.values())
    return answer(
        {
            "status": "ok",
            "last_seq": state.last_seq,
            "nodes_online": sum(1 for n in state.nodes.values() if n.online),
            "nodes_total": len(state.nodes),
            "agents_connected": cp.connected,
            "tasks": dict(sorted(by_state.items())),
            "anomalies": len(state.anomalies),
        }
    )


def _name(node: object) -> str:
    return str(getattr(node, "name", ""))
