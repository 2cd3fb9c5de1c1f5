"""``GET /api/tls/ca``: the host's certificate authority, for clients that pin it.

Public: no credential is asked for, and none could be (a client fetches it before it
trusts the connection). It holds no secret: the CA's certificate is public by nature,
and a client trusts it only once its SHA-256 equals the fingerprint it was given
(events/pinning.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sanic import Request
from sanic.response import HTTPResponse

from control_plane.access import rule
from control_plane.errors import NotFound
from control_plane.openapi import api
from control_plane.routes.common import JsonBlueprint

if TYPE_CHECKING:  # cryptography is imported only where TLS is on (start-up time)
    from control_plane.tls import HostTls

bp = JsonBlueprint("tls", url_prefix="/api")


@bp.get("/tls/ca")
@rule("public")
@api(
    "The CA certificate (PEM) clients pin",
    response=str,
    content_type="application/x-pem-file",
)
async def certificate_authority(request: Request) -> HTTPResponse:
    """The CA certificate (PEM) that signed the certificate this host serves."""
    tls: HostTls | None = getattr(request.app.ctx, "tls", None)
    if tls is None:
        raise NotFound("tls", "this host does not serve TLS ([network] tls)")
    if tls.ca_pem is None:
        raise NotFound(
            "tls",
            "this host serves the certificate of [network] tls_cert, whose CA it was not"
            " given (tls_ca): clients verify it with their system's trust store",
        )
    headers = {"X-CA-Fingerprint": tls.fingerprint or ""}
    return HTTPResponse(tls.ca_pem, content_type="application/x-pem-file", headers=headers)
