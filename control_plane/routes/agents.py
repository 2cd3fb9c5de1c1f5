"""``/api/agents/ws``: the node agents' websocket (protocol in events/link.py)."""

from __future__ import annotations

from sanic import Request
from sanic.server.websockets.impl import WebsocketImplProtocol

from control_plane.access import rule
from control_plane.agents import serve_agent
from control_plane.openapi import api
from control_plane.routes.common import JsonBlueprint, control_plane, principal_of

bp = JsonBlueprint("agents", url_prefix="/api/agents")


@bp.websocket("/ws")  # type: ignore[untyped-decorator]
@rule("agent")
@api(
    "The node agents' link",
    description="Frames as events/link.py defines them (hello, event batches, acks, commands).",
)
async def agent_link(request: Request, ws: WebsocketImplProtocol) -> None:
    """One node agent's link, for as long as it stays connected (its enrolled credential
    names the node it may speak for)."""
    # The socket's own peer (never a forwarded header): the gateway pins the node to it.
    await serve_agent(control_plane(request), ws, principal_of(request), request.ip or "")
