"""Routes for history (being written)."""

from __future__ import annotations

from sanic import Blueprint

bp = Blueprint("history", url_prefix="/api")
