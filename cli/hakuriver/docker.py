"""Docker environment commands (being written)."""

from __future__ import annotations

from cyclopts import App


def install(app: App) -> None:
    """Add ``hakuriver docker ...`` and ``docker-shell`` to ``app``."""
