"""History commands (being written)."""

from __future__ import annotations

from cyclopts import App


def install(app: App, task_app: App) -> None:
    """Add the history commands to ``app`` (and ``task history`` to ``task_app``)."""
