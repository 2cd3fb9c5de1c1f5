"""``/api/nodes`` and ``/api/health``."""

from __future__ import annotations

from collections import Counter

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from control_plane.errors import NotFound
from control_plane.routes.common import answer, control_plane
from control_plane.views import NodeOut

bp = Blueprint("nodes", url_prefix="/api")


@bp.get("/nodes")
async def list_nodes(request: Request) -> HTTPResponse:
    """Every node ever registered, online or not."""
    state = control_plane(request).state
    nodes = sorted(state.nodes.values(), key=_name)
    return answer({"nodes": [NodeOut.of(n, state.tasks) for n in nodes]})


@bp.get("/nodes/<name:str>")
async def get_node(request: Request, name: str) -> HTTPResponse:
    """One node in detail."""
    state = control_plane(request).state
    node = state.nodes.get(name)
    if node is None:
        raise NotFound("node", f"no node {name!r}")
    return answer(NodeOut.of(node, state.tasks))


@bp.get("/health")
async def health(request: Request) -> HTTPResponse:
    """Is the control plane up, and a summary of the cluster."""
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
