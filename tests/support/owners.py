"""Who submits a task, in the tests: the one place to change when the API authenticates.

Today a submission names its owner in the request's ``owner`` field
(control_plane/requests.py); once users authenticate, the owner is whoever the request's
credentials say, and this helper is what switches to them.
"""

from __future__ import annotations

from typing import Any

import httpx


def submit_as(
    http: httpx.Client, owner: str, command: str, *args: str, **fields: Any
) -> httpx.Response:
    """``POST /api/tasks`` of ``command args`` (a plain process unless ``fields`` say) as
    ``owner``; the response, whatever its status."""
    body = {"command": command, "args": list(args), "container": "NULL", **fields}
    body["owner"] = owner
    return http.post("/api/tasks", json=body)
