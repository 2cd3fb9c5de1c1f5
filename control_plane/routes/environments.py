"""Routes for environments (being written)."""

from __future__ import annotations

from sanic import Blueprint

bp = Blueprint("environments", url_prefix="/api")
