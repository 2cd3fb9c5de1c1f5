"""Who a task runs as when ``[runner] run_tasks_as = "owner"``: its owner's Unix account.

As Slurm does, a task owned by ``alice`` runs on each node as the account ``alice`` of
that node: its uid, its primary group and its supplementary groups (what ``initgroups``
would give it), with ``HOME``, ``USER`` and ``LOGNAME`` set for it. The runner, as root,
spawns the task and drops to the account in the task's own process, just before exec;
the shim and its zygote stay root, and the task's output files are opened before the
drop, so the task cannot choose others.

The node lists its account names in its hello (``account_names``), so the host refuses
an owner with no account there at submission and placement. An account removed since
the hello is found missing when the task starts (``resolve_account``), and the task
fails with a message naming it.

Root: an account with uid 0 runs tasks only when its name is literally ``root``. An
alias of root (``toor``, an LDAP user mapped to uid 0...) is refused on the node: a
task owner who happens to share a name with such an alias must not get root by it,
while whoever may submit as ``root`` was meant to.

Every function here may block (NSS can ask a directory server): callers run them in a
worker thread.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Sequence

from msgspec import Struct

from events.config import MAX_ACCOUNTS
from node_agent.executors.base import StartFailed

# Where a task starts when it can write neither in shared_data nor in its home (Slurm
# falls back to /tmp the same way).
LAST_RESORT_CWD = "/tmp"


class Account(Struct, frozen=True, kw_only=True):
    """A Unix account of this node, as a task is run under it."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # every group it is in, its primary one included
    home: str

    def environment(self) -> dict[str, str]:
        """The variables a login sets for the account."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}


MAX_ACCOUNT_NAME = 64  # events.link.Hello.accounts: a user name's longest


def account_names(limit: int = MAX_ACCOUNTS) -> tuple[str, ...] | None:
    """This node's account names, sorted; None when there are more than ``limit``.

    These are the accounts the system databases enumerate (``getpwall``): a directory
    service set not to enumerate (sssd's default) lists only the local ones. Names longer
    than a HakuRiver user name can be (``MAX_ACCOUNT_NAME``) own no task: left out.
    """
    names = sorted({e.pw_name for e in pwd.getpwall() if 0 < len(e.pw_name) <= MAX_ACCOUNT_NAME})
    return tuple(names) if len(names) <= limit else None


def resolve_account(name: str) -> Account:
    """The account a task owned by ``name`` runs as; ``StartFailed`` saying why not."""
    try:
        entry = pwd.getpwnam(name)
    except (KeyError, ValueError):  # ValueError: a name holding a NUL
        raise StartFailed(
            f"no account {name!r} on this node (run_tasks_as = owner): the task's owner"
            " needs a Unix account of that name on the node it runs on"
        ) from None
    try:
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except OSError as exc:
        raise StartFailed(f"cannot read the groups of account {name!r}: {exc}") from None
    return account_of(entry, groups)


def account_of(entry: pwd.struct_passwd, groups: Sequence[int]) -> Account:
    """The account of a passwd entry; ``StartFailed`` for an alias of root (see above)."""
    if entry.pw_uid == 0 and entry.pw_name != "root":
        raise StartFailed(
            f"account {entry.pw_name!r} has uid 0: with run_tasks_as = owner only the"
            " account named 'root' runs tasks as root"
        )
    return Account(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=tuple(dict.fromkeys(groups)),
        home=entry.pw_dir,
    )


def writable_by(path: str, account: Account) -> bool:
    """Whether ``account`` may create files in the directory ``path``.

    By its owner, group and mode bits (ACLs are not read). Only the directory itself
    counts: a task started in it reaches it by its working directory, whatever the
    folders above it allow.
    """
    try:
        info = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        return False
    if account.uid == 0:
        return True
    if info.st_uid == account.uid:
        needed = stat.S_IWUSR | stat.S_IXUSR
    elif info.st_gid in account.groups:
        needed = stat.S_IWGRP | stat.S_IXGRP
    else:
        needed = stat.S_IWOTH | stat.S_IXOTH
    return info.st_mode & needed == needed


def working_directory(shared_data: str, account: Account) -> str:
    """Where a task of ``account`` starts: ``shared_data`` (as in the default mode) if the
    account can write there, else its home if it can write there, else ``/tmp``."""
    for candidate in (shared_data, account.home):
        if candidate and writable_by(candidate, account):
            return candidate
    return LAST_RESORT_CWD
