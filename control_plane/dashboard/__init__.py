"""The web dashboard served by the host (routes.py, sessions.py, static/)."""
