"""The ``hakuriver`` command line: cluster, tasks, nodes, and the seeds' entry points."""

# Also in pyproject.toml (a test checks they agree): reading it from the installed
# metadata would import importlib.metadata, a third of `hakuriver --version`'s time.
VERSION = "0.1.0"
