"""The control plane: the host that records, places and dispatches tasks."""
