"""``/api/agents/ws``: the node agents' websocket (protocol in events/link.py)."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.server.websockets.impl import WebsocketImplProtocol

from control_plane.agents import serve_agent
from control_plane.routes.common import control_plane

bp = Blueprint("agents", url_prefix="/api/agents")


@bp.websocket("/ws")  # type: ignore[untyped-decorator]
async def agent_link(request: Request, ws: WebsocketImplProtocol) -> None:
    """One node agent's link, for as long as it stays connected."""
    await serve_agent(control_plane(request), ws)
