"""``--mount`` on a process task: binds in a mount namespace of its own, made by the root
shim (node_agent/executors/shim.py), with real processes.

These need a runner that may unshare a mount namespace (root, and a kernel that lets
it); elsewhere they are skipped, and the refusal when it cannot is tested on its own.
"""

from __future__ import annotations

import os
import platform
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest

from events.ids import new_id
from events.types import Mount, TaskSpec
from node_agent.accounts import resolve_account
from node_agent.executors import shim
from node_agent.executors.base import StartFailed, TaskRun
from node_agent.executors.process import ProcessExecutor
from node_agent.executors.process_plan import HostFacilities, can_unshare_mounts, plan_launch

pytestmark = pytest.mark.timeout(60)

needs_namespaces = pytest.mark.skipif(
    not can_unshare_mounts(), reason="this runner cannot make mount namespaces (not root?)"
)


def _has_account(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


needs_nobody = pytest.mark.skipif(
    not _has_account("nobody"), reason="this machine has no 'nobody' account to run tasks as"
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
@needs_nobody
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
    """The probe against an independent witness: util-linux's unshare(1) making a private
    mount namespace, and a kernel with the descriptor mount API (5.12: mount_setattr)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("util-linux's unshare is not installed: no witness to compare with")
    release = tuple(int(part) for part in re.findall(r"\d+", platform.release())[:2])
    witness = (
        os.geteuid() == 0
        and release >= (5, 12)
        and subprocess.run(
            [unshare, "--mount", "--propagation", "private", "true"], check=False
        ).returncode
        == 0
    )
    assert can_unshare_mounts() == witness
    assert HostFacilities.detect().mount_namespaces == witness


# -- the review's attacks (issue 18 item 3) ---------------------------------------------


def confined(
    tmp_path: Path, script: str, roots: tuple[str, ...], *mounts: Mount, run_as: str | None = None
) -> TaskRun:
    """``task``, a user's: its mounts' host paths must resolve inside ``roots``."""
    run = task(tmp_path, script, *mounts, run_as=run_as)
    spec = msgspec.structs.replace(run.spec, mount_roots=roots)
    return msgspec.structs.replace(run, spec=spec)


@needs_namespaces
async def test_a_folder_bound_over_proc_cannot_redirect_a_later_bind(
    tmp_path: Path, executor: ProcessExecutor
) -> None:
    """The source check read /proc/self/fd/N after earlier binds: a user's folder of fake
    ``self/fd/*`` links bound over /proc made any path of the node pass it. Now every
    path is opened before the first bind, binds go by descriptor, and /proc is no target."""
    allowed = tmp_path / "shared_data" / "bob"
    checked = allowed / "real" / "x"
    checked.mkdir(parents=True)
    (allowed / "evil").mkdir()
    fake_fd = allowed / "fakeproc" / "self" / "fd"
    fake_fd.mkdir(parents=True)
    target = tmp_path / "target"
    target.mkdir()
    secret = tmp_path / "secret_home" / "pub"
    secret.mkdir(parents=True)
    (secret / "notes.txt").write_text("SECRET\n")
    (allowed / "evil" / "x").symlink_to(secret)
    for n in range(64):
        (fake_fd / str(n)).symlink_to(checked)
    roots = (str(allowed),)
    attack = [
        Mount(host_path=str(allowed / "evil"), container_path=str(allowed / "real")),
        Mount(host_path=str(allowed / "fakeproc"), container_path="/proc"),
        Mount(host_path=str(checked), container_path=str(target)),
    ]
    # When the three binds are asked for, the one over /proc is refused: nothing runs
    run = confined(tmp_path, f"cat {target}/notes.txt", roots, *attack)
    with pytest.raises(StartFailed, match=r"is on /proc"):
        await executor.start(run)
    # And without it, the later bind is the folder that was checked, not the secret
    run = confined(tmp_path, f"ls -A {target}; echo end", roots, attack[0], attack[2])
    await executor.start(run)
    assert (await executor.wait(run.task_id)).state == "completed", output(run, "err")
    assert output(run) == "end\n"


@needs_namespaces
async def test_a_target_on_a_kernel_view_is_refused_on_the_node(
    tmp_path: Path, executor: ProcessExecutor, folders: tuple[Path, Path]
) -> None:
    # The host refuses /proc and /sys as written; the node checks where a target leads
    source, _ = folders
    (tmp_path / "to_sys").symlink_to("/sys/kernel")
    (tmp_path / "to_proc").symlink_to("/proc/self")
    for target, view in ((tmp_path / "to_sys", "/sys"), (tmp_path / "to_proc", "/proc")):
        run = task(tmp_path, "true", Mount(host_path=str(source), container_path=str(target)))
        with pytest.raises(StartFailed, match=f"is on {view}"):
            await executor.start(run)


@pytest.fixture
def alice_data() -> Iterator[Path]:
    """A shared data folder other accounts can reach, with alice's 0700 folder in it
    (a world-readable ``pub`` inside), an ``open`` folder and a target ``t`` beside it."""
    with tempfile.TemporaryDirectory(dir="/tmp") as scratch:
        top = Path(scratch)
        top.chmod(0o755)
        data = top / "shared_data"
        data.mkdir(mode=0o777)
        alice = data / "alice"
        alice.mkdir(mode=0o700)
        alice.chmod(0o700)
        (alice / "pub").mkdir(mode=0o755)
        (alice / "pub" / "notes").write_text("alice's\n")
        (data / "open").mkdir(mode=0o755)
        (data / "open" / "notes").write_text("shared\n")
        (top / "t").mkdir(mode=0o755)
        yield data


@needs_namespaces
@needs_nobody
async def test_a_source_its_owner_cannot_reach_is_refused(
    tmp_path: Path, executor: ProcessExecutor, alice_data: Path
) -> None:
    """The shim opened sources as root: a bind got past folder permissions (bob bound
    alice's ``pub`` though ``alice`` is 0700). It opens them as the task's account now."""
    target = alice_data.parent / "t"
    roots = (str(alice_data),)
    mount = Mount(host_path=str(alice_data / "alice" / "pub"), container_path=str(target))
    run = confined(tmp_path, f"cat {target}/notes", roots, mount, run_as="nobody")
    with pytest.raises(StartFailed, match="Permission denied") as refused:
        await executor.start(run)
    assert "as the task's account" in str(refused.value)
    # A folder the account may reach is bound as before
    mount = Mount(host_path=str(alice_data / "open"), container_path=str(target))
    run = confined(tmp_path, f"cat {target}/notes", roots, mount, run_as="nobody")
    await executor.start(run)
    assert (await executor.wait(run.task_id)).state == "completed", output(run, "err")
    assert output(run) == "shared\n"


@needs_namespaces
def test_a_read_only_bind_is_read_only_in_its_submounts(tmp_path: Path) -> None:
    """``:ro`` made only the top mount read-only: a mount below the source stayed writable.
    The shim runs in a child with a namespace of its own here, so the tmpfs below the
    source never touches the node's mount table."""
    source, target = tmp_path / "src", tmp_path / "target"
    (source / "sub").mkdir(parents=True)
    target.mkdir()
    libc = shim._libc()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # only system calls and writes to the pipe here, then _exit
        code = 1
        try:
            assert libc.unshare(shim.CLONE_NEWNS) == 0
            assert libc.mount(None, b"/", None, shim.MS_REC | shim.MS_PRIVATE, None) == 0
            assert libc.mount(b"tmpfs", str(source / "sub").encode(), b"tmpfs", 0, None) == 0
            shim._enter_mounts(libc, [[str(source), str(target), True]])
            for path in (target / "top.txt", target / "sub" / "inner.txt"):
                try:
                    path.write_text("x")
                    os.write(write_end, f"wrote {path.name}\n".encode())
                except OSError as exc:
                    os.write(write_end, f"{path.name}: {exc.strerror}\n".encode())
            code = 0
        except BaseException as exc:
            os.write(write_end, f"error {exc!r}\n".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        said = pipe.read()
    os.waitpid(pid, 0)
    assert said == "top.txt: Read-only file system\ninner.txt: Read-only file system\n"


@needs_namespaces
async def test_overlapping_targets_are_refused(
    tmp_path: Path, executor: ProcessExecutor, folders: tuple[Path, Path]
) -> None:
    # Every target is opened before the first bind: one inside another would be hidden
    source, target = folders
    (target / "inner").mkdir()
    run = task(
        tmp_path,
        "true",
        Mount(host_path=str(source), container_path=str(target)),
        Mount(host_path=str(source), container_path=str(target / "inner")),
    )
    with pytest.raises(StartFailed, match="overlap"):
        await executor.start(run)
