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
