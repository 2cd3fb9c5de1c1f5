"""The ``hakuriver`` command line: cluster, tasks, nodes, and the seeds' entry points."""

# The distribution's version: pyproject.toml reads it from here (setuptools' dynamic
# `attr`, without importing), so the installed metadata says the same by construction,
# and `hakuriver --version` answers without importlib.metadata (a third of its time).
VERSION = "0.1.0"
