"""``--mount`` on a process task: binds in a mount namespace of its own, made by the root
shim (node_agent/executors/shim.py), with real processes.

These need a runner that may unshare a mount namespace (root, and a kernel that lets
it); elsewhere they are skipped, and the refusal when it cannot is tested on its own.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from events.ids import new_id
from events.types import Mount, TaskSpec
from node_agent.accounts import resolve_account
from node_agent.executors.base import StartFailed, TaskRun
from node_agent.executors.process import ProcessExecutor
from node_agent.executors.process_plan import HostFacilities, can_unshare_mounts, plan_launch

pytestmark = pytest.mark.timeout(60)

needs_namespaces = pytest.mark.skipif(
    not can_unshare_mounts(), reason="this runner cannot make mount namespaces (not root?)"
)


def task(tmp_path: Path, script: str, *mounts: Mount, run_as: str | None = None) -> TaskRun:
    return TaskRun(
        task_id=new_id(),
        spec=TaskSpec(command="sh", args=("-c", script), batch_id="b", mounts=mounts),
        cores=1,
        shared_dir=str(tmp_path / "shared"),
        local_temp_dir=str(tmp_path / "local"),
        run_as=run_as,
    )


def output(run: TaskRun, stream: str = "out") -> str:
    folder = "task_outputs" if stream == "out" else "task_errors"
    return (Path(run.shared_dir) / folder / f"{run.task_id}.{stream}").read_text()


def _mount_table() -> str:
    """This process's (the runner's) mount table: the node's, unlike the task's."""
    with open("/proc/self/mountinfo") as table:
        return table.read()


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """A host folder with a file in it, and an empty folder to bind it over."""
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    target.mkdir()
    (source / "data.txt").write_text("from the host\n")
    return source, target


@pytest.fixture
async def executor(tmp_path: Path) -> AsyncIterator[ProcessExecutor]:
    made = ProcessExecutor(tmp_path / "state", facilities=HostFacilities(mount_namespaces=True))
    yield made
    await made.close()


@needs_namespaces
async def test_the_bind_is_seen_inside_the_task_and_not_outside(
    tmp_path: Path, executor: ProcessExecutor, folders: tuple[Path, Path]
) -> None:
    source, target = folders
    # When a task lists the target, writes there and reads its own mount table
    script = (
        f"cat {target}/data.txt; echo new > {target}/written;"
        f" grep -c ' {target} ' /proc/self/mountinfo"
    )
    run = task(tmp_path, script, Mount(host_path=str(source), container_path=str(target)))
    await executor.start(run)
    assert (await executor.wait(run.task_id)).state == "completed", output(run, "err")
    # Then inside, the target was the host folder, writable, and one mount
    assert output(run) == "from the host\n1\n"
    assert (source / "written").read_text() == "new\n"
    # And outside, the target is still the empty folder, mounted nowhere
    assert list(target.iterdir()) == []
    assert f" {target} " not in _mount_table()


@needs_namespaces
async def test_a_read_only_bind_refuses_writes(
    tmp_path: Path, executor: ProcessExecutor, folders: tuple[Path, Path]
) -> None:
    source, target = folders
    run = task(
        tmp_path,
        f"cat {target}/data.txt && echo x > {target}/new",
        Mount(host_path=str(source), container_path=str(target), read_only=True),
    )
    await executor.start(run)
    outcome = await executor.wait(run.task_id)
    assert outcome.state == "failed"
    assert output(run) == "from the host\n"
    assert "Read-only file system" in output(run, "err")
    assert not (source / "new").exists()


@needs_namespaces
async def test_a_missing_target_is_refused_and_not_created(
    tmp_path: Path, executor: ProcessExecutor, folders: tuple[Path, Path]
) -> None:
    # The root shim makes no folder where a user names one (docs/security.md)
    source, _ = folders
    missing = tmp_path / "nowhere" / "deep"
    run = task(tmp_path, "true", Mount(host_path=str(source), container_path=str(missing)))
    with pytest.raises(StartFailed, match="does not exist on this node"):
        await executor.start(run)
    assert not (tmp_path / "nowhere").exists()


@needs_namespaces
async def test_a_symlinked_source_is_bound_as_resolved(
    tmp_path: Path, executor: ProcessExecutor, folders: tuple[Path, Path]
) -> None:
    source, target = folders
    link = tmp_path / "link"
    link.symlink_to(source)
    run = task(
        tmp_path, f"cat {target}/data.txt", Mount(host_path=str(link), container_path=str(target))
    )
    await executor.start(run)
    assert (await executor.wait(run.task_id)).state == "completed", output(run, "err")
    assert output(run) == "from the host\n"


@pytest.fixture
def reachable() -> Iterator[tuple[Path, Path]]:
    """``folders`` that another account can reach: under a folder of its own in /tmp
    (tmp_path's parents are root's alone)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as scratch:
        top = Path(scratch)
        top.chmod(0o755)
        source, target = top / "source", top / "target"
        source.mkdir(mode=0o755)
        target.mkdir(mode=0o755)
        (source / "data.txt").write_text("from the host\n")
        yield source, target


@needs_namespaces
async def test_a_task_with_mounts_run_as_its_owner_gains_no_privileges(
    tmp_path: Path, executor: ProcessExecutor, reachable: tuple[Path, Path]
) -> None:
    # A bind over /etc or /usr/bin must not feed sudo a user's files: no_new_privs is set
    source, target = reachable
    run = task(
        tmp_path,
        f"id -u; cat {target}/data.txt; grep NoNewPrivs /proc/self/status",
        Mount(host_path=str(source), container_path=str(target)),
        run_as="nobody",
    )
    await executor.start(run)
    assert (await executor.wait(run.task_id)).state == "completed", output(run, "err")
    uid = resolve_account("nobody").uid
    assert output(run).split("\n")[:3] == [str(uid), "from the host", "NoNewPrivs:\t1"]


def test_without_namespaces_a_task_with_mounts_is_refused_on_the_node(tmp_path: Path) -> None:
    run = task(tmp_path, "true", Mount(host_path="/srv", container_path="/mnt"))
    with pytest.raises(StartFailed, match="cannot give a process task its mounts"):
        plan_launch(run, HostFacilities(), {})
    # Nor under systemd with tasks run as their owners: root would run systemd-run and
    # setpriv inside the user's view of the disk
    under_systemd = HostFacilities(
        mount_namespaces=True, systemd_run="/bin/systemd-run", setpriv="/bin/setpriv"
    )
    assert under_systemd.mounts_refusal(owner_mode=True) is not None
    assert under_systemd.mounts_refusal(owner_mode=False) is None
    # A task without mounts is no concern of this
    plain = task(tmp_path, "true")
    assert plan_launch(plain, HostFacilities(), {}).mounts == ()


def test_the_probe_matches_what_the_kernel_allows() -> None:
    # Root here may or may not be allowed (an unprivileged container is not); not root never
    if os.geteuid() != 0:
        assert not can_unshare_mounts()
    assert HostFacilities.detect().mount_namespaces == can_unshare_mounts()
