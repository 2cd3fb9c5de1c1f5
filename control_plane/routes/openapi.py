"""``GET /api/openapi.json``: the API's OpenAPI 3.1 document (control_plane/openapi.py).

Any user's token or dashboard session reads it (``user``), not anyone: the document
holds no data, but it maps every admin and agent route of this host, and everyone who
has a use for it (a client generator, the reliability fuzzer, the dashboard's
reference page) holds a token anyway (docs/decisions.md).
"""

from __future__ import annotations

from typing import Any

from sanic import Request
from sanic.response import HTTPResponse

from control_plane.access import rule
from control_plane.openapi import api, cached_document
from control_plane.routes.common import JsonBlueprint

bp = JsonBlueprint("openapi", url_prefix="/api")


@bp.get("/openapi.json")
@rule("user")
@api(
    "This API as an OpenAPI 3.1 document",
    response=dict[str, Any],
    description="Every route of this host, its parameters, bodies, answers and access"
    " rule (x-access); websockets are GETs marked x-websocket.",
)
async def openapi_document(request: Request) -> HTTPResponse:
    """The document, built once per app on the first request."""
    return HTTPResponse(
        cached_document(request.app),
        content_type="application/json",
        headers={"Cache-Control": "no-cache"},
    )
