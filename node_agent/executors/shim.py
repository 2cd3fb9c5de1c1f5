"""The per-task shim: starts one task's command, outlives the agent, records how it ended.

Only a process's parent can learn its exit status, and the agent may crash or restart
while its tasks run on. So the agent starts each task through a shim, in a session of
its own:

    python -I -S shim.py STATE_DIR TASK_ID      (launch spec, a marshal'd dict, on stdin)

The shim forks the task into a new session (so its process group is the task's, and
signals to that group never reach the shim), applies the CPU set, the memory limit,
the working directory and the output files in the child, drops to the task's account
when the spec names one (``[runner] run_tasks_as = "owner"``: the shim itself, and the
zygote, stay root; the output files are opened before the drop), and execs the command
as an argument vector. Then, in ``STATE_DIR``:

- ``TASK_ID.run`` (written before the shim answers the agent): the shim's pid and
  kernel start time (so a restarted agent can tell it from a reused pid), the task's
  pid, how its memory is limited and the CPUs it is pinned to;
- the shim answers on stdout with the task's pid, or ``!`` and a message when the
  command could not be started (then it writes nothing else and exits);
- ``TASK_ID.exit`` (when the task's main process ends): its return code (minus the
  signal number when a signal ended it) and the cgroup's OOM-kill count. Processes the
  task left behind in its group or cgroup are killed first: a task ends with its main
  process, as a container does.

Records are ``key value`` lines, written to a temporary name and renamed into place.
This file is stdlib-only and imports nothing slow (no json, no subprocess): it starts
once per task, and interpreter start-up is most of a trivial task's latency. The agent
imports it too, for the record format and ``proc_stat``.
"""

from __future__ import annotations

import marshal
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


def write_record(path: str, fields: dict[str, str | int]) -> None:
    """Write ``key value`` lines to a temporary name, then rename it into place."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        for key, value in fields.items():
            file.write(f"{key} {value}\n")
    os.replace(temporary, path)


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


def _open_files(spec: dict[str, Any]) -> tuple[int, int, int]:
    """stdin from /dev/null, stdout and stderr to the task's output files (truncated)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    return (
        os.open(os.devnull, os.O_RDONLY),
        os.open(spec["stdout"], flags, 0o644),
        os.open(spec["stderr"], flags, 0o644),
    )


class _Refused(Exception):
    """The forked child cannot become the task; the message says why, whole."""


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
) -> None:
    """In the forked child: join the cgroup, set the rlimit, drop to the task's account,
    redirect, exec."""
    os.setsid()
    for signum in DEFAULT_SIGNALS:
        _signal.signal(signum, _signal.SIG_DFL)
    if cgroup is not None:
        _write(os.path.join(cgroup, "cgroup.procs"), str(os.getpid()))
    if rlimit is not None:
        resource.setrlimit(resource.RLIMIT_DATA, (rlimit, rlimit))
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
        if cgroup is None and rlimit is None and spec["uid"] is None:
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
    read_end, write_end = os.pipe()  # close-on-exec: EOF without data means exec worked
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            _exec_child(path, spec, files, cgroup, rlimit)
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


def _answer(text: str) -> None:
    """Tell the agent how the start went, then let go of the pipe (the agent may die)."""
    # If the agent is gone, the .run record tells its successor.
    _quietly(lambda: os.write(1, f"{text}\n".encode()))
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
    spec: dict[str, Any] = marshal.loads(sys.stdin.buffer.read())
    return run(argv[1], argv[2], spec)


def serve(address: str, idle_s: float = 600.0) -> int:
    """The zygote: fork a ready shim per request instead of starting an interpreter.

    Starting ``python`` costs about 9 ms of CPU here, most of a trivial task's latency;
    forking this already-started process costs well under one. The zygote listens on an
    abstract Unix socket; a request is ``marshal((state_dir, task_id, spec))`` followed
    by a half-close. The forked child becomes the task's shim exactly as if started on
    its own: a session of its own, stderr to the task's shim log, and it answers on the
    connection with its pid, then the usual line. Shims are not the zygote's business
    once forked (SIGCHLD is ignored, so they are reaped by the kernel). It exits after
    ``idle_s`` seconds without a request; the executor starts a new one when needed.
    """
    import socket

    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind("\0" + address)
    except OSError:  # another zygote serves this address already
        return 0
    listener.listen(128)
    listener.settimeout(idle_s)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            return 0
        conn.settimeout(10)
        try:
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
            state_dir, task_id, spec = marshal.loads(b"".join(chunks))
        except Exception:
            conn.close()
            continue
        if os.fork() == 0:
            listener.close()
            _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
            os.setsid()
            os.dup2(conn.fileno(), 1)
            conn.close()
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            log = os.open(os.path.join(state_dir, task_id + LOG), os.O_WRONLY | os.O_CREAT, 0o644)
            os.dup2(log, 2)
            os.close(log)
            os.write(1, f"{os.getpid()}\n".encode())
            code = 1
            try:
                code = run(state_dir, task_id, spec)
            finally:
                os._exit(code)
        conn.close()


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

    started = _start(spec, cgroup, rlimit)
    if isinstance(started, str):
        if cgroup is not None:
            remove_cgroup(cgroup)
        _answer("!" + started.replace("\n", " "))
        return 1
    pid = started
    own = proc_stat(os.getpid())
    write_record(
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
    )
    _answer(str(pid))

    returncode, kills = _finish(pid, cgroup)
    if method == "systemd":
        kills = oom_kills(watched)  # the scope may already be gone: then SIGKILL decides
    write_record(base + EXIT, {"returncode": returncode, "oom_kills": kills})
    if cgroup is not None:
        remove_cgroup(cgroup)
    return 0


if __name__ == "__main__":
    # Everything is written and closed; skipping interpreter teardown saves about 1.5 ms
    # between the task's end and the agent noticing it.
    os._exit(main(sys.argv))
