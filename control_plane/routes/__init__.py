"""One Sanic Blueprint per area of the API (docs/api.md)."""
