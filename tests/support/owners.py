"""Who submits a task, in the tests: an admin's client submitting on ``owner``'s behalf.

A task's owner is the authenticated user; an admin may name another (``"owner"`` in the
request, as root may with Slurm), which is how these tests own tasks by Unix accounts
such as ``nobody`` without a HakuRiver user of that name.
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
