"""Where a task may start: its ``workdir`` resolved on the node, checked like its mounts.

A job's workdir copy (``<shared_dir>/jobs/<id>/workdir``) lies in the shared storage,
which users' tasks can write: a symlink planted on its path could otherwise send a
task's working directory (a process task's cwd, a container's bind mount) to any folder
of the node. So the node resolves the path (symlinks followed), checks the resolved one
against the spec's ``mount_roots`` (the folders a user's task may mount; None for an
admin's task) and uses the resolved one: what is used is what was checked.
"""

from __future__ import annotations

import os

import msgspec

from node_agent.executors.base import StartFailed, TaskRun


def inside(real: str, roots: list[str]) -> bool:
    """Whether the resolved path ``real`` is one of ``roots`` (resolved) or lies in one."""
    return any(real == root or real.startswith(root.rstrip("/") + "/") for root in roots)


def confine_workdir(run: TaskRun) -> TaskRun:
    """``run`` with its spec's ``workdir`` resolved here; ``StartFailed`` when it is not a
    folder, or resolves outside its spec's ``mount_roots`` (blocking: reads the disk)."""
    spec = run.spec
    if spec.workdir is None:
        return run
    real = os.path.realpath(spec.workdir)
    if not os.path.isdir(real):
        raise StartFailed(f"the task's workdir {spec.workdir} is not a folder on this node")
    if spec.mount_roots is not None:
        roots = [os.path.realpath(root) for root in spec.mount_roots]
        if not inside(real, roots):
            raise StartFailed(
                f"workdir {spec.workdir} resolves to {real}, outside the folders this"
                f" task may use ({', '.join(spec.mount_roots)}): refused"
            )
    if real == spec.workdir:
        return run
    return msgspec.structs.replace(run, spec=msgspec.structs.replace(spec, workdir=real))


def confine_mounts(run: TaskRun) -> TaskRun:
    """``run`` with its mounts' host paths resolved here (symlinks followed), refused with
    ``StartFailed`` when one resolves outside its spec's ``mount_roots``.

    The host checks a user's ``--mount`` paths as written; a symlink inside the shared
    storage (which users' tasks can write) could still point at ``/``. So the node
    resolves each path and binds the resolved one: what is bound is what was checked.
    """
    spec = run.spec
    if spec.mount_roots is None or not spec.mounts:
        return run
    roots = [os.path.realpath(root) for root in spec.mount_roots]
    resolved = []
    for mount in spec.mounts:
        real = os.path.realpath(mount.host_path)
        if not inside(real, roots):
            raise StartFailed(
                f"mount {mount.host_path} resolves to {real}, outside the folders this"
                f" task may mount ({', '.join(spec.mount_roots)}): refused"
            )
        resolved.append(msgspec.structs.replace(mount, host_path=real))
    return msgspec.structs.replace(run, spec=msgspec.structs.replace(spec, mounts=tuple(resolved)))


def resolve_mounts(run: TaskRun) -> TaskRun:
    """``confine_mounts``, and an admin's mounts resolved too: the process shim binds a
    host path only when it is exactly the resolved path it was given (shim.py)."""
    run = confine_mounts(run)
    spec = run.spec
    resolved = tuple(
        msgspec.structs.replace(m, host_path=os.path.realpath(m.host_path)) for m in spec.mounts
    )
    if resolved == spec.mounts:
        return run
    return msgspec.structs.replace(run, spec=msgspec.structs.replace(spec, mounts=resolved))
