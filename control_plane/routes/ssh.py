"""``GET /api/ssh``: where the SSH gateway listens and the host key to pin.

The CLI (``hakuriver ssh``) writes ``host_key`` into a known_hosts file of its own and
builds ``ssh -J <user>@<host>:<port>`` from it: the gateway's key is never trusted on
first use. The key is public by nature; the route still asks for a user's token, as
only users can log in to the gateway.
"""

from __future__ import annotations

from sanic import Request
from sanic.response import HTTPResponse

from control_plane.access import rule
from control_plane.openapi import api, shape
from control_plane.routes.common import JsonBlueprint, answer, principal_of
from control_plane.ssh_gateway import GatewayStatus

bp = JsonBlueprint("ssh", url_prefix="/api")

# The answer, for the OpenAPI document (control_plane/openapi.py).
Gateway = shape(
    "Gateway",
    enabled=bool,
    host=str | None,
    port=int | None,
    host_key=str | None,
    fingerprint=str | None,
    user=str,
    message=str | None,
)


@bp.get("/ssh")
@rule("user")
@api("The SSH gateway to VPS tasks", response=Gateway)
async def gateway(request: Request) -> HTTPResponse:
    """The gateway: enabled, host, port, host key and its fingerprint, the caller's name."""
    status: GatewayStatus | None = getattr(request.app.ctx, "ssh_gateway", None)
    if status is None:  # the host is still starting
        status = GatewayStatus(enabled=False, message="the SSH gateway is starting")
    settings = request.app.ctx.settings
    return answer(
        {
            "enabled": status.enabled,
            "host": settings.network.host_reachable_address,
            "port": status.port,
            "host_key": status.host_key,
            "fingerprint": status.fingerprint,
            "user": principal_of(request).user,
            "message": status.message,
        }
    )
