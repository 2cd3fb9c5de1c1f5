"""``GET /api/metrics``: the host's Prometheus metrics (control_plane/metrics.py)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from sanic import Request
from sanic.response import HTTPResponse

from control_plane.access import rule
from control_plane.metrics import HostMetrics
from control_plane.openapi import api
from control_plane.routes.common import JsonBlueprint

bp = JsonBlueprint("metrics", url_prefix="/api")


@bp.get("/metrics")
@rule("user")
@api(
    "The host's Prometheus metrics",
    response=str,
    content_type=CONTENT_TYPE_PLAIN_0_0_4,
    description="Prometheus's text exposition format 0.0.4 (docs/api.md, Metrics).",
)
async def metrics(request: Request) -> HTTPResponse:
    """Every metric in Prometheus's text format, read from the live state now.

    Any user's token: the figures are aggregates and per-node numbers that
    ``/api/summary`` and ``/api/nodes`` already show every user; no task, owner or
    command is in them (docs/decisions.md, "Metrics for any user's token").

    The text format is 0.0.4, the one every Prometheus 2.x and 3.x reads (the library's
    "latest" says 1.0.0, which older servers do not know).
    """
    registry: HostMetrics = request.app.ctx.metrics
    return HTTPResponse(registry.scrape(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
