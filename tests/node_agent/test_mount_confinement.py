"""A user's mounts are checked on the node after symlinks are resolved.

The host checks ``--mount`` paths as written (inside the shared storage for a user who is
not an admin). A user's task can write the shared storage, so it can plant a symlink there
pointing at ``/``; the node resolves each path, refuses one that leaves the allowed
folders, and binds the resolved path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.decisions import context, principal

from control_plane.commands import SubmitTasks, decide
from control_plane.errors import Refused
from control_plane.requests import SubmitTask
from control_plane.settings import HostSettings
from events.types import Mount, TaskSpec
from node_agent.executors.base import StartFailed, TaskRun
from node_agent.executors.docker import confine_mounts
from projections.cluster import ClusterState


def _run(shared: Path, *mounts: Mount, roots: tuple[str, ...] | None) -> TaskRun:
    spec = TaskSpec(command="true", batch_id="b", container="env", mounts=mounts, mount_roots=roots)
    return TaskRun(
        task_id="t", spec=spec, cores=1, shared_dir=str(shared), local_temp_dir=str(shared)
    )


def test_a_symlink_in_the_shared_storage_cannot_mount_the_root(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    (shared / "escape").symlink_to("/")
    roots = (str(shared),)
    with pytest.raises(StartFailed, match="resolves to /, outside"):
        confine_mounts(
            _run(shared, Mount(host_path=str(shared / "escape"), container_path="/h"), roots=roots)
        )
    # A real folder inside is bound by its resolved path.
    link = shared / "alias"
    link.symlink_to(shared / "data")
    ok = confine_mounts(_run(shared, Mount(host_path=str(link), container_path="/d"), roots=roots))
    assert [m.host_path for m in ok.spec.mounts] == [str((shared / "data").resolve())]
    # An admin's task (no roots) is left as asked.
    admin = _run(shared, Mount(host_path=str(shared / "escape"), container_path="/h"), roots=None)
    assert confine_mounts(admin) is admin


def test_the_host_confines_users_mounts_and_refuses_paths_outside(tmp_path: Path) -> None:
    settings = HostSettings(data_dir=str(tmp_path))
    ctx = context(settings=settings)
    shared = str(settings.shared_dir / "shared_data")

    def submit(mount: str, role: str) -> TaskSpec:
        request = SubmitTask(command="true", container="env", mounts=[mount])
        decision = decide(
            ClusterState(),
            SubmitTasks(requests=(request,), batch_id="b", actor=principal("bob", role)),
            ctx,
        )
        return decision.submitted[0].spec

    assert submit(f"{shared}/data:/d", "user").mount_roots == (shared,)
    assert submit("/:/host", "admin").mount_roots is None
    with pytest.raises(Refused) as refused:
        submit("/:/host", "user")
    assert refused.value.field == "mounts[0]" and "admin" in refused.value.message
