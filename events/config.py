"""What the host and the runners both take from the configuration, spelled once.

One TOML file serves every component (DESIGN §6); each decodes its own sections into
its own settings Struct (control_plane/settings.py, node_agent/settings.py). The few
rules both sides must agree on live here, like the link (link.py) and the tarball
folder (tarballs.py): the default data directory, the ``NULL`` container, what a node
may be called, and whether the host speaks TLS.
"""

from __future__ import annotations

import re
import socket
from typing import Literal

# Where the host's event log and each runner's state live unless [paths] data_dir says.
DEFAULT_DATA_DIR = "~/.hakuriver"

# ``--container NULL``: run the task as a plain process on the node, no container.
NO_CONTAINER = "NULL"

# A node's name, as used in ``--target`` and the agent's hello. (Standard library only:
# the CLI's quick submit path checks targets with it.)
NODE_NAME_MAX = 64
NODE_NAME = rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{NODE_NAME_MAX - 1}}}"
NODE_NAME_PATTERN = rf"^{NODE_NAME}$"
_NODE_NAME = re.compile(NODE_NAME_PATTERN)

# ``[runner] run_tasks_as``: who a node's tasks run as. ``runner``: the runner's own user
# (the seeds' behaviour); ``owner``: the Unix account named like the task's owner on that
# node, as Slurm does (the runner must be root).
RunTasksAs = Literal["runner", "owner"]

# At most this many account names travel in an owner-mode runner's hello. A node with
# more lists none: the host then cannot check its accounts at placement, and a task whose
# owner has no account there fails when it starts (with a message naming the account).
MAX_ACCOUNTS = 10_000


def is_no_container(name: str | None) -> bool:
    """Whether ``name`` asks for no container (``NULL``, in any case)."""
    return name is not None and name.upper() == NO_CONTAINER


def node_name(configured: str = "") -> str:
    """The node's name: the configured one, else this machine's short hostname."""
    return configured or socket.gethostname().split(".")[0]


def node_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a node (None when it can)."""
    if not 1 <= len(name) <= NODE_NAME_MAX:
        return f"a node name has 1 to {NODE_NAME_MAX} characters, {name!r} has {len(name)}"
    if not _NODE_NAME.fullmatch(name):
        return (
            f"{name!r} is not a node name: letters, digits, '.', '_' and '-',"
            " starting with a letter or digit"
        )
    return None


def is_loopback(address: str) -> bool:
    """Whether ``address`` (an IP or ``localhost``) is this machine only."""
    return address.startswith("127.") or address in ("::1", "localhost")


def tls_wanted(tls: str | bool, *, bind_ip: str, tls_cert: str = "", pinned: bool = False) -> bool:
    """Whether the host serves (and so clients speak) HTTPS: ``[network] tls``.

    ``true``/``false`` say so; ``"auto"`` (the default) is on whenever the host listens
    beyond loopback (``host_bind_ip``) or has a certificate of its own (``tls_cert``);
    for a client, also when it pins the host's certificate authority (``ca_fingerprint``).
    """
    if isinstance(tls, bool):
        return tls
    return pinned or bool(tls_cert) or not is_loopback(bind_ip)
