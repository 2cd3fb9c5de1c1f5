"""HakuRiver command-line apps: the composition root."""
