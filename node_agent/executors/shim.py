"""The per-task shim: starts one task's command, outlives the agent, records how it ended.

Only a process's parent can learn its exit status, and the agent may crash or restart
while its tasks run on. So the agent starts each task through a shim, in a session of
its own:

    python -I -S shim.py STATE_DIR TASK_ID      (the launch request on stdin)

or, most of the time, has the zygote (``serve``, below) fork one ready-made. The
request is the same both ways: ``encode_request`` / ``decode_request``, a 4-byte
big-endian length and a JSON object with exactly the keys and types ``SPEC_FIELDS``
names, checked in full before anything runs (never marshal or pickle: the zygote's
requests arrive over a socket).

The shim forks the task into a new session (so its process group is the task's, and
signals to that group never reach the shim), applies the CPU set, the memory limit,
the working directory and the output files in the child, drops to the task's account
when the spec names one (``[runner] run_tasks_as = "owner"``: the shim itself, and the
zygote, stay root; the output files are opened before the drop and given to the
account), and execs the command as an argument vector. Then, in ``STATE_DIR``:

- ``TASK_ID.run`` (written before the shim answers the agent): the shim's pid and
  kernel start time (so a restarted agent can tell it from a reused pid), the task's
  pid, how its memory is limited and the CPUs it is pinned to;
- the shim answers on stdout with the task's pid, or ``!`` and a message when the
  command could not be started (then it writes nothing else and exits);
- ``TASK_ID.exit`` (when the task's main process ends): its return code (minus the
  signal number when a signal ended it) and the cgroup's OOM-kill count. Processes the
  task left behind in its group or cgroup are killed first: a task ends with its main
  process, as a container does. Then the shim closes its stdout: the agent holding the
  other end learns of the end from that, before the shim has exited.

Records are ``key value`` lines, written to a temporary name and renamed into place;
every file the shim makes (records, its log, the task's output files) is mode 0600.
This file is stdlib-only, one file (``python -I`` puts no folder of ours on the path)
and imports nothing slow (no json, no subprocess, no re): it starts once per task when
the zygote cannot serve, and interpreter start-up is most of a trivial task's latency.
The agent imports it too, for the request and record formats and ``proc_stat``.
"""

from __future__ import annotations

import errno as _errno
import os
import resource
import sys
import time

# typing and signal (through enum) cost milliseconds to import, a third of the shim's
# start-up; mypy takes the TYPE_CHECKING branch, the interpreter the C module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Callable
    from typing import Any
else:
    import _signal

RUN = ".run"  # the shim's running record
EXIT = ".exit"  # how the task ended
KILL = ".kill"  # marker: the agent asked for this task to be killed
LOG = ".log"  # the shim's own stderr

CGROUP_PREFIX = "task-"

# Python ignores SIGPIPE and SIGXFSZ, and an exec keeps ignored signals ignored.
DEFAULT_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)


PRIVATE_FILE = 0o600
# O_NOFOLLOW: a symlink planted where a record or an output file goes is refused, never
# followed (the shim may be root, and the output folders are shared storage).
CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


# -- the launch request -----------------------------------------------------------------

HEADER_BYTES = 4  # the JSON's length, big-endian
MAX_REQUEST_BYTES = 4 << 20  # the kernel takes at most a few MiB of argv and env anyway
MAX_ID = 1_000_000_000  # CPU numbers: below this, and never negative
MAX_UNIX_ID = (1 << 32) - 1  # uids and gids (sssd/AD map up to ~2e9); -1 means "unchanged"
TASK_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class BadRequest(ValueError):
    """A launch request that is not exactly what the agent sends; nothing runs."""


def _is_int(value: object) -> bool:
    return type(value) is int and 0 <= value < MAX_ID  # type() is: a bool is no id


def _is_unix_id(value: object) -> bool:
    return type(value) is int and 0 <= value < MAX_UNIX_ID


def _is_text(value: object) -> bool:
    return type(value) is str and "\0" not in value


def _is_path(value: object) -> bool:
    return _is_text(value) and value.startswith("/")  # type: ignore[attr-defined]


def _optional(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or check(value)


def _list_of(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: type(value) is list and all(check(item) for item in value)


def _is_argv(value: object) -> bool:
    return type(value) is list and len(value) > 0 and _list_of(_is_text)(value)


def _is_env(value: object) -> bool:
    return type(value) is dict and all(
        _is_text(key) and key and "=" not in key and _is_text(item) for key, item in value.items()
    )


def _is_memory(value: object) -> bool:
    return value is None or (type(value) is int and value > 0)


def _is_mount(value: object) -> bool:
    """``[host_path, target, read_only]``: two absolute paths and a bool."""
    return (
        type(value) is list
        and len(value) == 3
        and _is_path(value[0])
        and _is_path(value[1])
        and type(value[2]) is bool
    )


# Every key of a launch spec (process_plan.LaunchSpec) and what its value must be.
SPEC_FIELDS: dict[str, Callable[[object], bool]] = {
    "argv": _is_argv,
    "env": _is_env,
    "cwd": _is_path,
    "stdout": _is_path,
    "stderr": _is_path,
    "cpus": _list_of(_is_int),
    "memory_bytes": _is_memory,
    "cgroup_parent": _optional(_is_path),
    "systemd_cgroup": _optional(_is_path),
    "uid": _optional(_is_unix_id),
    "gid": _optional(_is_unix_id),
    "groups": _list_of(_is_unix_id),
    "mounts": _list_of(_is_mount),
}


def valid_task_id(task_id: object) -> bool:
    """Whether a task id is safe as a file name in the state directory."""
    return (
        type(task_id) is str
        and 0 < len(task_id) <= 200
        and not task_id.startswith(".")
        and set(task_id) <= TASK_ID_CHARS
    )


def encode_request(task_id: str, spec: dict[str, object]) -> bytes:
    """The request for one task, as the agent sends it (the agent imports json anyway)."""
    import json

    body = json.dumps({"task_id": task_id, "spec": spec}, separators=(",", ":")).encode()
    return len(body).to_bytes(HEADER_BYTES, "big") + body


def _no_constant(name: str) -> object:
    raise BadRequest(f"{name} is not a value a launch spec has")


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise BadRequest("a key appears twice")
    return found


class _Strict:
    """The C JSON scanner's settings: no NaN or Infinity, no duplicate keys."""

    strict = True
    object_hook = None
    object_pairs_hook = staticmethod(_pairs)
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_no_constant)
    memo: dict[str, str] = {}


def _parse_json(text: str) -> object:
    """One JSON value filling ``text``. The C scanner alone: ``import json`` brings ``re``
    and costs more than the rest of the shim's start-up."""
    make_scanner: Any
    try:
        import _json

        make_scanner = _json.make_scanner
    except ImportError:  # not CPython: the pure-Python scanner takes the same settings
        import json.scanner

        make_scanner = json.scanner.py_make_scanner  # type: ignore[attr-defined]
    try:
        value, end = make_scanner(_Strict())(text, 0)
    except (StopIteration, RecursionError):
        raise BadRequest("the request is not JSON (or nests too deep)") from None
    except BadRequest:
        raise
    except ValueError:  # JSONDecodeError
        raise BadRequest("the request is not JSON") from None
    if end != len(text):
        raise BadRequest("the request has data after its JSON")
    return value


def decode_request(frame: bytes) -> tuple[str, dict[str, Any]]:
    """(task id, launch spec) from a whole request; ``BadRequest`` unless it is exactly
    a request the agent sends: the length right, the keys exact, every value's type."""
    if len(frame) < HEADER_BYTES:
        raise BadRequest("the request is shorter than its header")
    size = int.from_bytes(frame[:HEADER_BYTES], "big")
    if size > MAX_REQUEST_BYTES:
        raise BadRequest(f"the request announces {size} bytes, over {MAX_REQUEST_BYTES}")
    if len(frame) != HEADER_BYTES + size:
        raise BadRequest(f"the request announces {size} bytes and has {len(frame) - HEADER_BYTES}")
    try:
        text = frame[HEADER_BYTES:].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the request is not UTF-8") from None
    request = _parse_json(text)
    if type(request) is not dict or request.keys() != {"task_id", "spec"}:
        raise BadRequest("the request must have exactly the keys task_id and spec")
    task_id, spec = request["task_id"], request["spec"]
    if not valid_task_id(task_id):
        raise BadRequest("task_id must be 1-200 letters, digits, '-', '_' or '.'")
    if type(spec) is not dict or spec.keys() != SPEC_FIELDS.keys():
        raise BadRequest("spec must have exactly the keys " + ", ".join(SPEC_FIELDS))
    for key, check in SPEC_FIELDS.items():
        if not check(spec[key]):
            raise BadRequest(f"spec.{key} has the wrong type or value")
    if (spec["uid"] is None) != (spec["gid"] is None):
        raise BadRequest("spec.uid and spec.gid go together")
    return task_id, spec


def read_request(fd: int) -> bytes:
    """A whole request from a pipe (the slow path's stdin), read no further than the limit."""
    chunks = []
    size = 0
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
        size += len(chunk)
        if size > HEADER_BYTES + MAX_REQUEST_BYTES:
            raise BadRequest(f"the request is over {MAX_REQUEST_BYTES} bytes")
    return b"".join(chunks)


# -- records ----------------------------------------------------------------------------


def write_record(path: str, fields: dict[str, str | int]) -> None:
    """Write ``key value`` lines to a temporary name (0600), then rename it into place."""
    temporary = f"{path}.tmp"
    with open(os.open(temporary, CREATE, PRIVATE_FILE), "w") as file:
        for key, value in fields.items():
            file.write(f"{key} {value}\n")
    os.replace(temporary, path)


# A full disk must not turn a task that ran into one that "failed": before the task starts,
# the shim reserves the blocks its two records need (their temporary files, padded); after,
# a record that still cannot be written is retried until the disk has room again.
RESERVE_BYTES = 4096
FULL_DISK = (_errno.ENOSPC, _errno.EDQUOT)
RUN_RECORD_S = 10.0  # how long a started task waits for its running record, then is killed


def reserve_record(path: str) -> None:
    """Claim the blocks of ``path``'s temporary file now (raises OSError on a full disk)."""
    fd = os.open(f"{path}.tmp", CREATE, PRIVATE_FILE)
    try:
        os.write(fd, b"\n" * RESERVE_BYTES)
    finally:
        os.close(fd)


def write_record_durably(
    path: str, fields: dict[str, str | int], within_s: float | None = None
) -> bool:
    """``write_record``, retried while the disk is full (for ``within_s``, or until it
    works); other errors raise. False when the time ran out."""
    deadline = None if within_s is None else time.monotonic() + within_s
    pause = 0.05
    while True:
        try:
            write_record(path, fields)
            return True
        except OSError as exc:
            if exc.errno not in FULL_DISK:
                raise
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def read_record(path: str) -> dict[str, str]:
    """Read a ``key value`` record; raises OSError when it does not exist."""
    with open(path) as file:
        pairs = (line.rstrip("\n").partition(" ") for line in file)
        return {key: value for key, _, value in pairs if key}


def proc_stat(pid: int) -> tuple[str, int] | None:
    """A live process's state letter and kernel start time; None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            data = file.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # fields from the 3rd (state) on
    state = fields[0].decode()
    if state in ("Z", "X"):
        return None
    return state, int(fields[19])  # field 22: starttime, in clock ticks since boot


def _quietly(action: Callable[[], object]) -> None:
    """Run an action whose OSError is expected and harmless."""
    try:  # noqa: SIM105 - contextlib costs a millisecond to import, at every task start
        action()
    except OSError:
        pass


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def make_cgroup(parent: str, task_id: str, memory_bytes: int) -> str | None:
    """A cgroup v2 directory for the task with ``memory.max`` set; None if not possible."""
    path = os.path.join(parent, CGROUP_PREFIX + task_id)
    try:
        os.makedirs(path, exist_ok=True)
        _write(os.path.join(path, "memory.max"), str(memory_bytes))
    except OSError:
        remove_cgroup(path, attempts=1)
        return None
    # Without swap accounting the limit still holds for RAM.
    _quietly(lambda: _write(os.path.join(path, "memory.swap.max"), "0"))
    return path


def remove_cgroup(path: str, attempts: int = 100) -> None:
    """Remove a task cgroup once its processes are gone (they may take a moment)."""
    for _ in range(attempts):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def oom_kills(cgroup: str) -> int:
    """How many processes the OOM killer killed in a cgroup (0 if unknown)."""
    try:
        with open(os.path.join(cgroup, "memory.events")) as file:
            for line in file:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _resolve(command: str, env: dict[str, str]) -> str:
    """The executable a command names, searched on the task's own PATH."""
    if "/" in command:
        return command
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", command)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(2, "command not found on the task's PATH")


def _open_output(path: str, spec: dict[str, Any]) -> int:
    """A task's output file, truncated, mode 0600: the runner's, or given to the task's
    account when it runs as one (its owner reads it on the node; nobody else does)."""
    fd = os.open(path, CREATE, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # a file left from an earlier start keeps its mode
        if spec["uid"] is not None:
            os.fchown(fd, spec["uid"], spec["gid"])
    except OSError:
        os.close(fd)
        raise
    return fd


def _open_files(spec: dict[str, Any]) -> tuple[int, int, int]:
    """stdin from /dev/null, stdout and stderr to the task's output files (truncated)."""
    stdin = os.open(os.devnull, os.O_RDONLY)
    try:
        stdout = _open_output(spec["stdout"], spec)
        try:
            return stdin, stdout, _open_output(spec["stderr"], spec)
        except OSError:
            os.close(stdout)
            raise
    except OSError:
        os.close(stdin)
        raise


class _Refused(Exception):
    """The forked child cannot become the task; the message says why, whole."""


# -- a process task's mounts ------------------------------------------------------------
#
# A process task with mounts (``--mount HOST:TARGET[:ro]`` and ``--container NULL``) gets
# a mount namespace of its own, as a container does: the forked child unshares it and
# makes every mount in it private (nothing it does propagates back to the node). Then,
# before the first bind, it opens EVERY source and target (O_PATH) with the credentials
# the task will have (its owner's account, or the runner's), so folder permissions apply
# as they would to the task itself, and checks each: a source must still be the resolved
# path the agent checked, a target no place under /proc or /sys. Only then, as root
# again, each source is cloned by descriptor (``open_tree``), its whole tree made private
# and, for ``:ro``, read-only (``mount_setattr``, every submount too), and moved onto its
# target's descriptor (``move_mount``). No path is looked up once the first bind is made:
# an earlier bind cannot redirect a later one (over /proc, say). Last, no_new_privs
# before the task drops to its account and execs: a bind over /etc or /usr/bin would
# otherwise feed a setuid program (sudo) files of the user's choosing. Targets must
# already exist (the root shim creates no folders where a user names them).

CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
# The new mount API (Linux 5.2; mount_setattr 5.12). One number on every architecture
# since the syscall tables were unified (424 and up are the same everywhere).
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
AT_EMPTY_PATH, AT_RECURSIVE = 0x1000, 0x8000
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH = 0x04, 0x40
MOUNT_ATTR_RDONLY = 0x1
# File systems no task's mount may cover: the kernel's own views (statfs f_type).
PROC_SUPER_MAGIC, SYSFS_MAGIC = 0x9FA0, 0x62656572
CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC = 0x27E0EB, 0x63677270
KERNEL_FILESYSTEMS = {
    PROC_SUPER_MAGIC: "/proc",
    SYSFS_MAGIC: "/sys",
    CGROUP_SUPER_MAGIC: "a cgroup file system",
    CGROUP2_SUPER_MAGIC: "a cgroup file system",
}
KERNEL_FOLDERS = ("/proc", "/sys")
MAX_MOUNTS = 64  # the host refuses more (control_plane/requests.py); the shim too


def _libc() -> Any:
    """The C library, for unshare(2), mount(2), prctl(2) and syscall(2) (Python 3.11 has
    no os.unshare, and no wrapper at all for the new mount API)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _errno_text() -> str:
    import ctypes

    return os.strerror(ctypes.get_errno())


def _check(result: int, what: str) -> None:
    if result != 0:
        raise _Refused(f"{what}: {_errno_text()}")


def fs_type(libc: Any, fd: int) -> int:
    """The file system type (statfs f_type) of the file ``fd`` is open on."""
    import ctypes

    buffer = ctypes.create_string_buffer(256)  # struct statfs: 120 bytes on 64-bit Linux
    if libc.fstatfs(fd, buffer) != 0:
        raise _Refused(f"cannot look at a mount target: {_errno_text()}")
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


def _as_task(spec: dict[str, Any], action: Callable[[], Any]) -> Any:
    """``action()`` with the task's credentials, then root again (owner mode). The saved
    uid stays 0, so the switch back needs no capability; in runner mode the task's
    credentials are the shim's own, and nothing changes."""
    uid, gid = spec["uid"], spec["gid"]
    if uid is None:
        return action()
    groups = os.getgroups()
    try:
        os.setgroups(spec["groups"])
        os.setresgid(gid, gid, 0)
        os.setresuid(uid, uid, 0)
    except OSError as exc:
        raise _Refused(f"cannot switch to uid {uid}, gid {gid}: {exc.strerror or exc}") from None
    try:
        return action()
    finally:
        os.setresuid(0, 0, 0)
        os.setresgid(0, 0, 0)
        os.setgroups(groups)


def _open(path: str, what: str) -> int:
    try:
        return os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        if what == "mount target":
            raise _Refused(
                f"mount target {path} does not exist on this node: a process task's"
                " mounts go over existing folders or files (none is created for it)"
            ) from None
        raise _Refused(f"cannot open {what} {path}: it does not exist") from None
    except OSError as exc:
        raise _Refused(
            f"cannot open {what} {path} as the task's account: {exc.strerror}"
            " (a task mounts only what its own account can reach)"
        ) from None


def _open_all(libc: Any, mounts: list[list[Any]]) -> list[tuple[int, int, str, str, bool]]:
    """(source fd, target fd, host, target, read only) for every mount, each checked;
    opened as the task's account, before any bind."""
    opened: list[tuple[int, int, str, str, bool]] = []
    try:
        for host, target, read_only in mounts:
            source = _open(host, "mount source")
            try:
                target_fd = _open(target, "mount target")
            except _Refused:
                os.close(source)
                raise
            opened.append((source, target_fd, host, target, read_only))
            # /proc is the node's still: no bind is made yet in this namespace.
            if os.readlink(f"/proc/self/fd/{source}") != host:
                raise _Refused(f"mount source {host} changed before it was bound: refused")
            where = os.readlink(f"/proc/self/fd/{target_fd}")
            kernel = KERNEL_FILESYSTEMS.get(fs_type(libc, target_fd))
            if kernel is None and any(
                where == top or where.startswith(top + "/") for top in KERNEL_FOLDERS
            ):
                kernel = where
            if kernel is not None:
                raise _Refused(
                    f"mount target {target} is on {kernel}: the kernel's own views"
                    " (/proc, /sys) are never covered by a task's mount"
                )
    except BaseException:
        for source, target_fd, *_ in opened:
            os.close(source)
            os.close(target_fd)
        raise
    return opened


def _nested(mounts: list[list[Any]]) -> str | None:
    """Why the targets cannot all be bound: one at or inside another. Every target is
    opened before the first bind, so an inner one would land hidden under the outer."""
    targets = [os.path.normpath(target).rstrip("/") + "/" for _, target, _ in mounts]
    for i, first in enumerate(targets):
        for j in range(i + 1, len(targets)):
            if first.startswith(targets[j]) or targets[j].startswith(first):
                return f"mount targets {mounts[i][1]} and {mounts[j][1]} overlap: refused"
    return None


class _MountAttr:
    """struct mount_attr (attr_set, attr_clr, propagation, userns_fd: four u64)."""

    SIZE = 32

    @staticmethod
    def make(attr_set: int, propagation: int) -> Any:
        import ctypes

        return (ctypes.c_uint64 * 4)(attr_set, 0, propagation, 0)


def _clone(libc: Any, source: int, host: str, read_only: bool) -> int:
    """A detached copy of the tree at ``source``, private, read-only throughout if asked."""
    import ctypes

    flags = OPEN_TREE_CLONE | AT_RECURSIVE | AT_EMPTY_PATH | os.O_CLOEXEC
    tree = libc.syscall(SYS_OPEN_TREE, source, b"", flags)
    if tree < 0:
        raise _Refused(f"cannot copy the mount tree of {host}: {_errno_text()}")
    attr = _MountAttr.make(MOUNT_ATTR_RDONLY if read_only else 0, MS_PRIVATE)
    done = libc.syscall(
        SYS_MOUNT_SETATTR,
        tree,
        b"",
        AT_EMPTY_PATH | AT_RECURSIVE,
        ctypes.byref(attr),
        _MountAttr.SIZE,
    )
    if done != 0:
        os.close(tree)
        raise _Refused(f"cannot make the bind of {host} private or read-only: {_errno_text()}")
    return int(tree)


def _enter_mounts(libc: Any, mounts: list[list[Any]], spec: dict[str, Any] | None = None) -> None:
    """In the forked child, as root: a private mount namespace with the task's binds.
    ``spec``: whose credentials open the paths (None: the shim's own)."""
    if len(mounts) > MAX_MOUNTS:
        raise _Refused(f"at most {MAX_MOUNTS} mounts per task, got {len(mounts)}")
    problem = _nested(mounts)
    if problem:
        raise _Refused(problem)
    _check(libc.unshare(CLONE_NEWNS), "cannot make the task's mount namespace")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "cannot make mounts private")
    opened = _as_task(spec, lambda: _open_all(libc, mounts)) if spec else _open_all(libc, mounts)
    try:
        trees = []
        try:
            for source, _, host, _, read_only in opened:
                trees.append(_clone(libc, source, host, read_only))
            for tree, (_, target_fd, host, target, _) in zip(trees, opened, strict=True):
                flags = MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH
                moved = libc.syscall(SYS_MOVE_MOUNT, tree, b"", target_fd, b"", flags)
                if moved != 0:
                    raise _Refused(f"cannot bind {host} at {target}: {_errno_text()}")
        finally:
            for tree in trees:
                os.close(tree)
    finally:
        for source, target_fd, *_ in opened:
            os.close(source)
            os.close(target_fd)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "cannot set no_new_privs")


def _drop_to(spec: dict[str, Any]) -> None:
    """Become the task's account for good: groups, then gid, then uid (as root, each
    of setgid and setuid sets the real, effective and saved ids alike)."""
    uid, gid = spec["uid"], spec["gid"]
    try:
        os.setgroups(spec["groups"])
        os.setgid(gid)
        os.setuid(uid)
    except OSError as exc:
        raise _Refused(f"cannot switch to uid {uid}, gid {gid}: {exc.strerror or exc}") from None


def _exec_child(
    path: str,
    spec: dict[str, Any],
    files: tuple[int, int, int],
    cgroup: str | None,
    rlimit: int | None,
    libc: Any = None,
) -> None:
    """In the forked child: join the cgroup, set the rlimit, enter the task's mount
    namespace (``libc``: the C library, when it has mounts), drop to the task's account,
    redirect, exec."""
    os.setsid()
    for signum in DEFAULT_SIGNALS:
        _signal.signal(signum, _signal.SIG_DFL)
    if cgroup is not None:
        _write(os.path.join(cgroup, "cgroup.procs"), str(os.getpid()))
    if rlimit is not None:
        resource.setrlimit(resource.RLIMIT_DATA, (rlimit, rlimit))
    if libc is not None:
        _enter_mounts(libc, spec["mounts"], spec)
        os.chdir(spec["cwd"])  # again: a mount may now cover the working directory
    if spec["uid"] is not None:
        _drop_to(spec)
    for target, fd in enumerate(files):
        os.dup2(fd, target)
    os.execve(path, spec["argv"], spec["env"])


def _start(spec: dict[str, Any], cgroup: str | None, rlimit: int | None) -> int | str:
    """Start the task in its own session; its pid, or why it could not start.

    The shim changes to the task's directory and takes its CPU set first: both are
    inherited, and the shim itself has no use for either. Without a cgroup to join, an
    rlimit to set or an account to drop to, the task is started with posix_spawn (vfork:
    about 0.1 ms here, against 2 ms for fork and exec from Python).
    """
    argv: list[str] = spec["argv"]
    step = "cannot run " + repr(argv[0])
    try:
        path = _resolve(argv[0], spec["env"])
        step = "cannot enter the working directory " + repr(spec["cwd"])
        os.chdir(spec["cwd"])
        step = "cannot pin to CPUs " + repr(spec["cpus"])
        if spec["cpus"]:
            os.sched_setaffinity(0, spec["cpus"])
        step = "cannot open the output files"
        files = _open_files(spec)
        step = "cannot run " + repr(argv[0])
        if cgroup is None and rlimit is None and spec["uid"] is None and not spec["mounts"]:
            try:
                return os.posix_spawn(
                    path,
                    argv,
                    spec["env"],
                    file_actions=[
                        (os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(files)
                    ],
                    setsid=True,
                    setsigdef=DEFAULT_SIGNALS,
                )
            finally:
                for fd in files:
                    os.close(fd)
    except OSError as exc:
        return f"{step}: {exc.strerror or exc}"
    return _fork_exec(path, spec, files, cgroup, rlimit)


def _fork_exec(
    path: str,
    spec: dict[str, Any],
    files: tuple[int, int, int],
    cgroup: str | None,
    rlimit: int | None,
) -> int | str:
    """Fork, confine the child and exec; its pid, or the child's error before exec."""
    libc = _libc() if spec["mounts"] else None  # loaded before the fork, not in the child
    read_end, write_end = os.pipe()  # close-on-exec: EOF without data means exec worked
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            _exec_child(path, spec, files, cgroup, rlimit, libc)
        except _Refused as exc:
            os.write(write_end, str(exc).encode())
        except BaseException as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            os.write(write_end, f"cannot run {spec['argv'][0]!r}: {detail}".encode())
        os._exit(127)
    os.close(write_end)
    for fd in files:
        os.close(fd)
    chunks = []
    while chunk := os.read(read_end, 4096):
        chunks.append(chunk)
    os.close(read_end)
    if chunks:
        os.waitpid(pid, 0)
        return b"".join(chunks).decode(errors="replace")
    return pid


# What goes before the answer: a zygote's shim names its own pid there (``_shim_for``).
_ANSWER_PREFIX = ""


def _answer(text: str) -> None:
    """Tell the agent how the start went (nothing more is written to it)."""
    # If the agent is gone, the .run record tells its successor. One write: each write
    # wakes the agent, and a woken agent on a busy machine preempts the shim mid-start.
    _quietly(lambda: os.write(1, f"{_ANSWER_PREFIX}{text}\n".encode()))


def _let_go() -> None:
    """Close the agent's pipe or connection: once the exit is recorded, its end tells the
    agent the task ended, without waiting for this process's own exit (its teardown
    took about 0.3-0.5 ms, more under load, between the record and the agent's pidfd)."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)


def _finish(pid: int, cgroup: str | None) -> tuple[int, int]:
    """Wait for the task's main process; kill what it left behind; (returncode, oom_kills)."""
    # Observe the exit without reaping: while the zombie holds the pid, the process
    # group id cannot be reused, so killing the leftovers cannot hit a stranger.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    _quietly(lambda: os.killpg(pid, _signal.SIGKILL))
    if cgroup is not None:  # cgroup.kill needs Linux 5.14; the group kill got the usual cases
        _quietly(lambda: _write(os.path.join(cgroup, "cgroup.kill"), "1"))
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), oom_kills(cgroup) if cgroup else 0


def main(argv: list[str]) -> int:
    """Run one task as described on stdin, or serve as the zygote; see the docstrings."""
    if argv[1] == "--zygote":
        return serve(argv[2])
    try:
        task_id, spec = decode_request(read_request(0))
        if task_id != argv[2]:
            raise BadRequest("the request names another task than the command line")
    except BadRequest as exc:
        _answer(f"!refused by the shim: {exc}")
        return 1
    return run(argv[1], task_id, spec)


# -- the zygote -------------------------------------------------------------------------

ZYGOTE_REQUEST_S = 5.0  # a connection has this long, in all, to send its whole request
SPARE_SHIMS = 2  # shims the zygote keeps forked ahead, each waiting for one connection
SUN_PATH_MAX = 107  # bytes of a Unix socket path, without its terminating NUL


def unix_address(path: str) -> tuple[str, int | None]:
    """An address to bind or connect to the socket file ``path``, and a descriptor to
    close afterwards. A path too long for a socket address is reached through its
    folder's descriptor (``/proc/self/fd/N/name``): deep test and data directories are."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        return path, None
    folder = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{folder}/{os.path.basename(path)}", folder


def unix_socket(path: str, *, backlog: int | None = None, timeout: float | None = None) -> Any:
    """A unix stream socket at the socket file ``path``: connected to it, or (``backlog``)
    bound to it and listening; reached through ``unix_address``. Closed if that fails."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    where, folder = unix_address(path)
    try:
        if timeout is not None:
            sock.settimeout(timeout)
        if backlog is None:
            sock.connect(where)
        else:
            sock.bind(where)
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    finally:
        if folder is not None:
            os.close(folder)
    return sock


def private_problem(directory: str) -> str | None:
    """Why ``directory`` is no place for the zygote's socket; None when only we reach it."""
    try:
        found = os.lstat(directory)
    except OSError as exc:
        return f"{directory}: {exc.strerror}"
    is_folder = found.st_mode & 0o170000 == 0o040000  # S_ISDIR, without importing stat
    if found.st_uid != os.geteuid() or found.st_mode & 0o77 or not is_folder:
        return f"{directory} must be a folder of uid {os.geteuid()}, mode 0700"
    return None


def peer_uid(conn: Any) -> int:
    """The uid of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    import socket

    credentials = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return int.from_bytes(credentials[4:8], sys.byteorder)  # struct ucred: pid, uid, gid


def _receive(conn: Any, limit_s: float) -> bytes:
    """A whole request from a connection, within ``limit_s`` seconds in all."""
    deadline = time.monotonic() + limit_s

    def exactly(size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BadRequest(f"the request did not arrive within {limit_s:g}s")
            conn.settimeout(left)
            try:
                chunk = conn.recv(min(size - len(data), 1 << 20))
            except TimeoutError:
                raise BadRequest(f"the request did not arrive within {limit_s:g}s") from None
            if not chunk:
                raise BadRequest("the request ended early")
            data += chunk
        return bytes(data)

    header = exactly(HEADER_BYTES)
    size = int.from_bytes(header, "big")
    if size > MAX_REQUEST_BYTES:
        raise BadRequest(f"the request announces {size} bytes, over {MAX_REQUEST_BYTES}")
    return header + exactly(size)


def serve(address: str, idle_s: float = 600.0, spares: int = SPARE_SHIMS) -> int:
    """The zygote: fork a ready shim per request instead of starting an interpreter.

    Starting ``python`` costs about 9 ms of CPU here, most of a trivial task's latency;
    forking this already-started process costs well under one. It serves one state
    directory, through the socket file ``address`` inside it, and only its own user:

    - the folder must be this user's and mode 0700 (else it refuses to start), so no
      other local user can even reach the socket; and a peer whose ``SO_PEERCRED`` uid
      is not the zygote's own is closed on without a byte read, should the folder be
      opened up later;
    - each connection is served by a child of its own, forked ahead (``spares``
      waiting, ``_serve_with_spares``), which reads the request with
      ``ZYGOTE_REQUEST_S`` in all to send it: a slow or silent peer holds only its own
      child, never the next request (a spare made to wait is replaced at once);
    - the request (``decode_request``) names only the task and its launch spec; the
      records go to the zygote's own folder, whatever a request says.

    The forked child becomes the task's shim exactly as if started on its own: a session
    of its own, stderr to the task's shim log, and it answers on the connection with its
    pid and the usual line, in one write once the start is recorded (a request refused
    gets one ``!`` line); it closes the connection once the task's exit is recorded.
    Shims are not the zygote's business once they took a connection (SIGCHLD is
    ignored: the kernel reaps them). A lock beside the socket keeps one zygote per
    address. It exits after ``idle_s`` seconds without a request, removing its socket
    (its unused spares follow); the executor starts a new one when needed. Without
    pidfds (Linux < 5.3) or with ``spares=0`` it forks each child once a connection came.
    """
    import fcntl

    state_dir = os.path.dirname(address)
    problem = private_problem(state_dir)
    if problem is not None:
        os.write(2, f"the zygote will not serve: {problem}\n".encode())
        return 1
    lock = os.open(address + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another zygote serves this address already
        return 0
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)
    # What every forked shim would otherwise load on its own, once per task: the JSON
    # scanner (a shared library, ~0.3 ms to load, more on a busy machine).
    _parse_json("{}")
    _quietly(lambda: os.unlink(address))  # a previous zygote's, gone without removing it
    listener = unix_socket(address, backlog=128)
    own = os.geteuid()
    clock = _IdleClock(idle_s)  # one clock across the modes: idle is idle in any of them
    try:
        if not (spares > 0 and _pidfds_work()):
            _serve_forking(listener, lock, state_dir, own, clock)
        else:
            # Spares until idle; after they keep dying or cannot be forked, a while of
            # forking per request, then spares again (a failed fork, a moment of memory
            # pressure, passes: the zygote must not lose its spares for good).
            while _serve_with_spares(
                listener, lock, state_dir, own, clock, spares
            ) and _serve_forking(
                listener, lock, state_dir, own, clock, until=time.monotonic() + SPARES_AGAIN_S
            ):
                pass
    finally:
        _quietly(lambda: os.unlink(address))  # still ours: the lock is held
    return 0


def _pidfds_work() -> bool:
    """Whether this kernel gives pidfds (a spare is followed with one): a Python that has
    ``os.pidfd_open`` on an older kernel, or under a seccomp filter, gets an error."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


# After spares were given up: how long the zygote forks per request before trying again.
SPARES_AGAIN_S = 60.0


class _IdleClock:
    """When the zygote leaves: ``idle_s`` after the last connection of its own user,
    whichever way it was served (a spare's or a child forked for it). Each mode starting
    a clock of its own kept a zygote whose spares keep failing from ever leaving: its
    modes took turns more often than ``idle_s``."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self.until = time.monotonic() + idle_s

    def served(self) -> None:
        self.until = time.monotonic() + self.idle_s

    def left(self) -> float:
        return self.until - time.monotonic()


def _serve_forking(
    listener: Any,
    lock: int,
    state_dir: str,
    own: int,
    clock: _IdleClock,
    until: float | None = None,
) -> bool:
    """Accept each connection and fork its shim then (no spares). Returns False once
    idle; True at ``until`` (a monotonic time), when the caller tries spares again."""
    while True:
        left = clock.left()
        if left <= 0:
            return False
        if until is not None:
            if time.monotonic() >= until:
                return True
            left = min(left, until - time.monotonic())
        listener.settimeout(max(left, 0.001))
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue  # idle, or time to try spares again: the loop's head says which
        try:
            if peer_uid(conn) != own:
                continue  # closed below without a byte read; not a request: no clock
            clock.served()
            if os.fork() == 0:
                code = 1
                try:
                    listener.close()
                    os.close(lock)
                    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
                    os.setsid()
                    code = _shim_for(conn, state_dir)
                finally:
                    os._exit(code)
        except OSError:
            pass  # the peer left meanwhile, or no fork today: the next one may do
        finally:
            conn.close()


SPARE_EARLY_DEATHS = 5  # spares in a row dead unused within a second: fork per request


def _serve_with_spares(
    listener: Any, lock: int, state_dir: str, own: int, clock: _IdleClock, spares: int
) -> bool:
    """Keep ``spares`` shims forked ahead; each accepts one connection and becomes its
    shim, and the zygote forks a replacement as soon as one says it was taken. Returns
    False once idle; True when spares keep dying unused as soon as forked (something in
    the way of a spare's start) or none can be forked: the caller then accepts and
    forks per request instead, rather than forking in a loop or accepting nothing.

    A start then costs the agent one request and its answer, not an accept and a fork
    (about 1 ms here, more under load): the fork, and the pages a forked Python copies
    as it first writes them, are paid while no task waits. The zygote follows each
    spare with a pidfd, so a spare that dies unused (killed, out of memory) is replaced
    too; a connection is never left in the backlog with nobody to accept it while the
    zygote lives. The spares watch the read end of a pipe only the zygote writes: when
    the zygote exits (idle, or killed), they see its end and exit, so none outlives it
    unused. A spare that accepted a connection serves it whatever the zygote does.
    """
    import select

    listener.setblocking(False)  # the spares race for each connection; losers go back
    alive_r, alive_w = os.pipe()  # the zygote's liveness, as the spares see it
    taken_r, taken_w = os.pipe()  # "pid taken" lines from spares that accepted
    waiting: dict[int, int] = {}  # pidfd -> spare pid
    forked_at: dict[int, float] = {}  # pidfd -> when
    early_deaths = 0
    poller = select.poll()
    poller.register(taken_r, select.POLLIN)
    pending = b""

    def fork_spare() -> None:
        try:
            pid = os.fork()
        except OSError:
            return  # no fork now: tried again when a spare is next taken or dies
        if pid == 0:
            code = 1
            try:
                for fd in (alive_w, taken_r, lock, *waiting):
                    os.close(fd)
                code = _spare(listener, alive_r, taken_w, state_dir, own)
            finally:
                os._exit(code)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # it died already (the kernel reaped it: SIGCHLD is ignored)
            return
        waiting[pidfd] = pid
        forked_at[pidfd] = time.monotonic()
        poller.register(pidfd, select.POLLIN)

    def forget(pidfd: int) -> None:
        poller.unregister(pidfd)
        os.close(pidfd)
        waiting.pop(pidfd, None)
        forked_at.pop(pidfd, None)

    try:
        for _ in range(spares):
            fork_spare()
        while True:
            left = clock.left()
            events = poller.poll(left * 1000) if left > 0 else []
            if not events:
                return False  # idle: the spares see the pipe's end and leave
            for fd, _ in events:
                if fd == taken_r:
                    clock.served()
                    pending += os.read(taken_r, 4096)
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        for pidfd, pid in list(waiting.items()):
                            if str(pid).encode() == line:
                                forget(pidfd)
                elif fd in waiting:  # died unused
                    early = time.monotonic() - forked_at[fd] < 1.0
                    early_deaths = early_deaths + 1 if early else 0
                    forget(fd)
            if early_deaths >= SPARE_EARLY_DEATHS:
                return True
            while len(waiting) < spares:
                before = len(waiting)
                fork_spare()
                if len(waiting) == before:
                    break
            if not waiting:
                return True  # no fork today: nobody would accept; the caller does
    finally:
        for fd in (alive_w, alive_r, taken_r, taken_w, *waiting):
            os.close(fd)  # the spares see the zygote gone, and leave


def _spare(listener: Any, alive_r: int, taken_w: int, state_dir: str, own: int) -> int:
    """In a spare: get ready ahead, wait for one connection, then be its shim."""
    import select

    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    os.setsid()
    # Write now the pages a request's decoding writes (a forked process copies each page
    # it first writes): paid here, not while the agent waits for the answer.
    decode_request(_SPARE_WARM_REQUEST)
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    poller.register(alive_r, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if listener.fileno() in ready:  # a connection waiting is served, zygote or not
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                conn = None  # another spare took it
            except OSError:
                return 1
            if conn is not None:
                # Another uid is closed on without a byte read, and the spare goes on
                # waiting: a local user connecting in a loop costs an accept, not a fork.
                try:
                    ours = peer_uid(conn) == own
                except OSError:
                    ours = False
                if ours:
                    break
                conn.close()
        if alive_r in ready:
            return 0  # the zygote is gone (it never writes): leave unused
    # Said at once, so the zygote forks another now: a burst of starts (a node given many
    # tasks at once) is served at the zygote's pace of forks, never two at a time. (Said
    # only once this start has answered, the next spare's fork did not compete with it,
    # but a burst of 1000 tasks over 4 nodes took 8-9 s instead of 5-6.)
    _quietly(lambda: os.write(taken_w, f"{os.getpid()}\n".encode()))
    for fd in (alive_r, taken_w):
        os.close(fd)
    listener.close()
    try:
        conn.setblocking(True)
        return _shim_for(conn, state_dir)
    finally:
        conn.close()


# A request like the agent's, decoded once by each spare before it waits (``_spare``).
_SPARE_WARM_BODY = (
    b'{"task_id":"spare","spec":{"argv":["true"],"env":{"PATH":"/usr/bin:/bin"},'
    b'"cwd":"/","stdout":"/dev/null","stderr":"/dev/null","cpus":[0],'
    b'"memory_bytes":null,"cgroup_parent":null,"systemd_cgroup":null,"uid":null,'
    b'"gid":null,"groups":[],"mounts":[]}}'
)
_SPARE_WARM_REQUEST = len(_SPARE_WARM_BODY).to_bytes(HEADER_BYTES, "big") + _SPARE_WARM_BODY


def _shim_for(conn: Any, state_dir: str) -> int:
    """In the zygote's forked child, in a session of its own, SIGCHLD back to default:
    read and check one request, then be its shim."""
    try:
        task_id, spec = decode_request(_receive(conn, ZYGOTE_REQUEST_S))
    except (OSError, BadRequest) as exc:
        refusal = f"!refused by the zygote: {exc}\n".encode()
        _quietly(lambda: conn.sendall(refusal))
        return 1
    conn.setblocking(True)  # fd 1 from now on: plain blocking writes
    os.dup2(conn.fileno(), 1)
    conn.close()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    log = os.open(os.path.join(state_dir, task_id + LOG), CREATE, PRIVATE_FILE)
    os.dup2(log, 2)
    os.close(log)
    global _ANSWER_PREFIX
    _ANSWER_PREFIX = f"{os.getpid()}\n"  # sent with the answer, in the same write
    return run(state_dir, task_id, spec)


def run(state_dir: str, task_id: str, spec: dict[str, Any]) -> int:
    """Start one task, record it, wait for it, record how it ended."""
    base = os.path.join(state_dir, task_id)
    memory_bytes: int | None = spec["memory_bytes"]
    cgroup: str | None = None
    rlimit: int | None = None
    if spec["systemd_cgroup"]:
        method, watched = "systemd", spec["systemd_cgroup"]
    elif memory_bytes is None:
        method, watched = "none", ""
    else:
        if spec["cgroup_parent"]:
            cgroup = make_cgroup(spec["cgroup_parent"], task_id, memory_bytes)
        if cgroup is None:
            method, watched, rlimit = "rlimit", "", memory_bytes
        else:
            method, watched = "cgroup", cgroup

    try:
        reserve_record(base + RUN)
        reserve_record(base + EXIT)
    except OSError as exc:
        started: int | str = f"no room to record the task in the runner's state directory: {exc}"
    else:
        started = _start(spec, cgroup, rlimit)
    if isinstance(started, str):
        _quietly(lambda: os.unlink(base + RUN + ".tmp"))
        _quietly(lambda: os.unlink(base + EXIT + ".tmp"))
        if cgroup is not None:
            remove_cgroup(cgroup)
        _answer("!" + started.replace("\n", " "))
        return 1
    pid = started
    own = proc_stat(os.getpid())
    recorded = write_record_durably(
        base + RUN,
        {
            "task_id": task_id,
            "shim_pid": os.getpid(),
            "shim_start": own[1] if own else 0,
            "pid": pid,
            "memory_limit": method,
            "cgroup": watched,
            "cpus": ",".join(str(cpu) for cpu in spec["cpus"]),
        },
        RUN_RECORD_S,
    )
    if not recorded:  # the reserved blocks were taken meanwhile: unrecorded, it cannot run
        _quietly(lambda: os.killpg(pid, _signal.SIGKILL))
        _finish(pid, cgroup)
        if cgroup is not None:
            remove_cgroup(cgroup)
        _answer("!no room to record the task in the runner's state directory")
        return 1
    _answer(str(pid))

    returncode, kills = _finish(pid, cgroup)
    if method == "systemd":
        kills = oom_kills(watched)  # the scope may already be gone: then SIGKILL decides
    # Until this record is written the task still looks like running: kept, not lost.
    write_record_durably(base + EXIT, {"returncode": returncode, "oom_kills": kills})
    _let_go()
    if cgroup is not None:
        remove_cgroup(cgroup)
    return 0


if __name__ == "__main__":
    # Everything is written and closed; skipping interpreter teardown saves about 1.5 ms
    # between the task's end and the agent noticing it.
    os._exit(main(sys.argv))
