"""Pure decisions of the process executor: how to launch a task, and what its end means.

``HostFacilities.detect()`` looks once at what the node offers (systemd as PID 1,
``numactl``, a writable cgroup v2 hierarchy); ``plan_launch`` turns a ``TaskRun`` into
the exact argument vector, environment and limits the shim applies; and
``decide_outcome`` maps a return code to a final state. Only ``detect`` does I/O.

Memory limits, best first: systemd's ``MemoryMax`` where systemd is PID 1 and we are
root; else a cgroup v2 child with ``memory.max`` where the hierarchy is writable; else
``RLIMIT_DATA``. RLIMIT_DATA rather than RLIMIT_AS: it bounds what a program allocates
(heap and private writable mappings) without counting address space merely reserved,
which RLIMIT_AS does and which breaks the JVM, Go and CUDA programs long before they
use the memory. Under an rlimit an allocation fails inside the program (MemoryError,
ENOMEM), so the task ends ``failed``, not ``killed_oom``: only a cgroup limit lets the
kernel's OOM killer act, and only then can the outcome say so.

Run as its owner (``[runner] run_tasks_as = "owner"``, node_agent/accounts.py): the
shim's forked child drops to the account (groups, gid, uid) just before exec. Under
systemd, ``systemd-run`` must create the scope as root, so ``setpriv`` (util-linux)
drops inside it instead: ``systemd-run --scope ... -- setpriv --reuid ... -- COMMAND``
(``systemd-run --uid`` would keep root's supplementary groups).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

import msgspec
from msgspec import Struct

from events.jobs import CONTROL_ENV
from node_agent.accounts import Account
from node_agent.executors import shim
from node_agent.executors.base import Outcome, StartFailed, TaskRun

CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_PARENT_NAME = "hakuriver"
SYSTEMD_SLICE = "hakuriver"


class HostFacilities(Struct, frozen=True, kw_only=True):
    """What the node offers for running and confining processes."""

    systemd_run: str | None = None  # systemd-run's path, set only where systemd is PID 1
    numactl: str | None = None
    cgroup_parent: str | None = None  # a cgroup v2 directory whose children get memory.max
    # The runner's own scripts folder (its venv's bin, where hakurun lives), which
    # process tasks find on their PATH even when the runner was started without it.
    tools_dir: str | None = None
    setpriv: str | None = None  # drops to a task's account inside a systemd scope
    # Why a NUMA-bound task cannot start: ``[paths] numactl_path`` names no program here.
    numactl_problem: str | None = None
    # Whether the shim can give a task a mount namespace of its own (root, and the
    # kernel lets it unshare one): what ``--mount`` on a process task needs.
    mount_namespaces: bool = False

    @classmethod
    def detect(
        cls, *, numactl: str | None = None, cgroup_root: str = CGROUP_ROOT
    ) -> HostFacilities:
        """Look at this machine (blocking; done once when the executor is made).

        ``numactl``: the configured ``[paths] numactl_path`` ("" or None: found on PATH);
        a configured path that is no executable file is kept as ``numactl_problem``, so a
        NUMA-bound task fails saying so instead of running unbound.
        """
        systemd_run = _systemd_run()
        problem = None
        if numactl and not (os.path.isfile(numactl) and os.access(numactl, os.X_OK)):
            problem = (
                f"[paths] numactl_path = {numactl!r} is not an executable file on this node:"
                " install numactl there or fix the path (empty: numactl from PATH)"
            )
        return cls(
            systemd_run=systemd_run,
            numactl=None if problem else numactl or shutil.which("numactl"),
            cgroup_parent=None if systemd_run else prepare_cgroup_parent(cgroup_root),
            tools_dir=runner_tools_dir(),
            setpriv=shutil.which("setpriv") if systemd_run else None,
            numactl_problem=problem,
            mount_namespaces=can_unshare_mounts(),
        )

    def mounts_refusal(self, *, owner_mode: bool) -> str | None:
        """Why process tasks cannot have ``--mount`` binds here; None when they can.

        Under systemd with tasks run as their owners, ``systemd-run`` and ``setpriv`` run
        as root after the binds are made, and would load programs and libraries from the
        user's view of the disk: refused rather than made unsafe (docs/decisions.md).
        """
        if not self.mount_namespaces:
            return "its runner is not root or cannot make mount namespaces"
        if owner_mode and self.systemd_run:
            return "it runs tasks as their owners through systemd-run"
        return None


# Run in a child interpreter: unshare(CLONE_NEWNS) and make "/" private, as the shim does,
# then the new mount API the shim binds with: open_tree (428) a copy of "/", make it
# read-only with mount_setattr (442). A kernel without them (ENOSYS: before 5.12) makes
# the node unable; the shim never falls back to mount(2) on path strings (shim.py).
# The numbers are the shim's own, so the probe and the binds cannot drift apart.
_UNSHARE_PROBE = (
    "import ctypes,os;c=ctypes.CDLL(None,use_errno=True);c.syscall.restype=ctypes.c_long;"
    f"ok=c.unshare({shim.CLONE_NEWNS})==0"
    f" and c.mount(None,b'/',None,{shim.MS_REC | shim.MS_PRIVATE},None)==0;"
    f"t=c.syscall({shim.SYS_OPEN_TREE},-100,b'/',{shim.OPEN_TREE_CLONE | os.O_CLOEXEC})"
    " if ok else -1;"
    f"a=(ctypes.c_uint64*4)({shim.MOUNT_ATTR_RDONLY},0,0,0);"
    f"os._exit(0 if t>=0 and c.syscall({shim.SYS_MOUNT_SETATTR},t,b'',{shim.AT_EMPTY_PATH},"
    f"ctypes.byref(a),{shim._MountAttr.SIZE})==0 else 1)"
)


def can_unshare_mounts() -> bool:
    """Whether this process may give a child a private mount namespace and bind into it
    with the new mount API (blocking: tries it in a throwaway interpreter, which the
    kernel may refuse even to root, as in an unprivileged container). The runner calls
    it once, when its agent is made, before its event loop starts (cli serve.py)."""
    if os.geteuid() != 0:
        return False
    try:
        probe = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _UNSHARE_PROBE], timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def runner_tools_dir() -> str:
    """Where this installation's scripts are: a venv's ``bin`` (``sys.executable``'s
    folder there), else the install scheme's scripts folder (``/usr/local/bin``...)."""
    return sysconfig.get_path("scripts")


def _systemd_run() -> str | None:
    """systemd-run, where systemd is PID 1 and we are root (scopes need the system manager)."""
    try:
        init = Path("/proc/1/comm").read_text().strip()
    except OSError:
        return None
    if init != "systemd" or os.geteuid() != 0:
        return None
    return shutil.which("systemd-run")


def prepare_cgroup_parent(root: str = CGROUP_ROOT, name: str = CGROUP_PARENT_NAME) -> str | None:
    """Make ``root/name`` a cgroup v2 parent that can give children ``memory.max``.

    None when the hierarchy is v1, read-only, or refuses to delegate the memory
    controller (a container's namespaced root holding processes does).
    """
    base = Path(root)
    parent = base / name
    created = False
    try:
        if "memory" not in (base / "cgroup.controllers").read_text().split():
            return None
        if not parent.is_dir():
            parent.mkdir()
            created = True
        for directory in (base, parent):
            control = directory / "cgroup.subtree_control"
            if "memory" not in control.read_text().split():
                control.write_text("+memory")
    except OSError:
        if created:
            with contextlib.suppress(OSError):
                parent.rmdir()
        return None
    return str(parent)


class LaunchSpec(Struct, frozen=True, kw_only=True):
    """Everything the shim needs to start one task (``shim.SPEC_FIELDS``: the same keys)."""

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    stdout: str
    stderr: str
    cpus: tuple[int, ...] = ()
    memory_bytes: int | None = None
    cgroup_parent: str | None = None
    systemd_cgroup: str | None = None  # the scope's cgroup when systemd limits memory
    # The account the shim's child drops to before exec (None: stays the runner's user).
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()
    # Binds in the task's own mount namespace: (host path, target, read only).
    mounts: tuple[tuple[str, str, bool], ...] = ()

    def to_builtins(self) -> dict[str, object]:
        """The spec as plain dicts, lists and scalars (what the shim's request carries)."""
        builtins: dict[str, object] = msgspec.to_builtins(self)
        return builtins


class TaskPaths(Struct, frozen=True, kw_only=True):
    """Where a task runs and writes, under the shared directory."""

    cwd: str
    stdout: str
    stderr: str


def task_paths(shared_dir: str, task_id: str) -> TaskPaths:
    """``shared_data`` as working directory; ``task_outputs/<id>.out``, ``task_errors/<id>.err``."""
    shared = Path(shared_dir)
    return TaskPaths(
        cwd=str(shared / "shared_data"),
        stdout=str(shared / "task_outputs" / f"{task_id}.out"),
        stderr=str(shared / "task_errors" / f"{task_id}.err"),
    )


# What a task keeps of the runner's environment, besides ``[runner] pass_environment``:
# where programs are, whose home, and how to speak (locale and time zone). Nothing else:
# the runner's variables (credentials, proxies, the service manager's) are its own.
INHERITED_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ")
INHERITED_PREFIXES = ("LC_",)


def inherited_environment(
    base_env: Mapping[str, str], pass_environment: tuple[str, ...] = ()
) -> dict[str, str]:
    """The part of the runner's environment a task starts from (see above)."""
    return {
        name: value
        for name, value in base_env.items()
        if name in INHERITED_VARIABLES
        or name.startswith(INHERITED_PREFIXES)
        or name in pass_environment
    }


def task_environment(
    run: TaskRun,
    base_env: Mapping[str, str],
    tools_dir: str | None = None,
    account: Account | None = None,
    pass_environment: tuple[str, ...] = (),
) -> dict[str, str]:
    """A clean environment: a few of the agent's variables (``inherited_environment``),
    the user's over them, HakuRiver's over both.

    A task run as its owner's ``account`` gets that account's ``HOME``, ``USER`` and
    ``LOGNAME`` instead of the agent's (its own variables still come last).

    ``tools_dir`` (the runner's own scripts, ``hakurun`` among them) is appended to the
    agent's PATH: last, so the node's ``python3`` and friends still come first, and not
    at all when the task sets its own PATH, which is then taken exactly as given.
    """
    env = inherited_environment(base_env, pass_environment)
    env.setdefault("PATH", os.defpath)
    if tools_dir and "PATH" not in run.spec.env:
        path = env["PATH"]
        if tools_dir not in path.split(os.pathsep):
            env["PATH"] = f"{path}{os.pathsep}{tools_dir}" if path else tools_dir
    if account is not None:
        env.update(account.environment())
    env.update(run.spec.env)
    env["HAKURIVER_TASK_ID"] = run.task_id
    env["HAKURIVER_LOCAL_TEMP_DIR"] = run.local_temp_dir
    if run.node:
        env["HAKURIVER_NODE"] = run.node
    if run.control_dir is not None:
        env[CONTROL_ENV] = run.control_dir
    if run.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in run.gpu_ids)
    return env


def systemd_unit(task_id: str) -> str:
    """The transient scope unit name of a task (characters systemd rejects become ``_``)."""
    return "hakuriver-" + re.sub(r"[^A-Za-z0-9:_.-]", "_", task_id)


def plan_launch(
    run: TaskRun,
    facilities: HostFacilities,
    base_env: Mapping[str, str],
    *,
    account: Account | None = None,
    cwd: str | None = None,
    pass_environment: tuple[str, ...] = (),
) -> LaunchSpec:
    """The argument vector, environment, files and limits for one task.

    ``account``: run it as that account (see the module docstring), in ``cwd``
    (default: ``shared_data``, as every task). A task with a ``workdir`` (a job's copied
    folder, resolved and checked by ``confine_workdir``) starts there instead.
    ``pass_environment``: the runner's variables its tasks inherit beyond the few every
    task does (``task_environment``).
    """
    argv: tuple[str, ...] = (run.spec.command, *run.spec.args)
    mounts = tuple((m.host_path, m.container_path, m.read_only) for m in run.spec.mounts)
    if mounts:
        refusal = facilities.mounts_refusal(owner_mode=account is not None)
        if refusal:
            raise StartFailed(f"this node cannot give a process task its mounts: {refusal}")
    if run.numa_id is not None and facilities.numactl_problem:
        raise StartFailed(facilities.numactl_problem)
    if run.numa_id is not None and facilities.numactl:
        binding = [facilities.numactl, f"--membind={run.numa_id}"]
        if not run.cpus:  # an explicit CPU set is applied by the shim, and is narrower
            binding.append(f"--cpunodebind={run.numa_id}")
        argv = (*binding, "--", *argv)
    drop_in_child = account
    if account is not None and facilities.systemd_run:
        if not facilities.setpriv:
            raise StartFailed(
                "run_tasks_as = owner under systemd needs setpriv (util-linux) on this node"
            )
        groups = ",".join(str(g) for g in account.groups)
        argv = (
            facilities.setpriv,
            f"--reuid={account.uid}",
            f"--regid={account.gid}",
            f"--groups={groups}" if groups else "--clear-groups",
            "--",
            *argv,
        )
        drop_in_child = None
    systemd_cgroup = None
    if facilities.systemd_run:
        unit = systemd_unit(run.task_id)
        properties: list[str] = []
        if run.cores:
            properties += ["-p", f"CPUQuota={run.cores * 100}%"]
        if run.memory_bytes is not None:
            properties += ["-p", f"MemoryMax={run.memory_bytes}"]
            systemd_cgroup = f"{CGROUP_ROOT}/{SYSTEMD_SLICE}.slice/{unit}.scope"
        argv = (
            facilities.systemd_run,
            "--scope",
            "--quiet",
            "--collect",
            f"--unit={unit}",
            f"--slice={SYSTEMD_SLICE}",
            *properties,
            "--",
            *argv,
        )
    paths = task_paths(run.shared_dir, run.task_id)
    return LaunchSpec(
        argv=argv,
        env=task_environment(run, base_env, facilities.tools_dir, account, pass_environment),
        cwd=run.spec.workdir or cwd or paths.cwd,
        stdout=paths.stdout,
        stderr=paths.stderr,
        cpus=run.cpus,
        memory_bytes=run.memory_bytes,
        cgroup_parent=None if facilities.systemd_run else facilities.cgroup_parent,
        systemd_cgroup=systemd_cgroup,
        uid=drop_in_child.uid if drop_in_child else None,
        gid=drop_in_child.gid if drop_in_child else None,
        groups=drop_in_child.groups if drop_in_child else (),
        mounts=mounts,
    )


def describe_returncode(returncode: int) -> str:
    """``exit status 3`` or ``signal SIGKILL`` for a Popen-style return code."""
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


def decide_outcome(
    returncode: int, *, oom_kills: int, killed_by_us: bool, memory_limit: str
) -> Outcome:
    """The final state of a task from how its main process ended.

    ``memory_limit`` is how memory was limited: ``cgroup``, ``systemd``, ``rlimit`` or
    ``none``. A SIGKILL nobody here sent, under a cgroup or systemd memory limit, is
    taken for the OOM killer even when its count could not be read.
    """
    how = describe_returncode(returncode)
    if killed_by_us:
        return Outcome(state="killed", exit_code=returncode, message=f"killed on request ({how})")
    if oom_kills > 0 or (returncode == -signal.SIGKILL and memory_limit in ("cgroup", "systemd")):
        return Outcome(
            state="killed_oom",
            exit_code=returncode,
            message=f"killed by the OOM killer: the task reached its memory limit ({how})",
        )
    if returncode == 0:
        return Outcome(state="completed", exit_code=0)
    return Outcome(state="failed", exit_code=returncode, message=f"ended with {how}")
