"""The ``hakuriver`` command line: cluster, tasks, nodes, and the seeds' entry points."""
