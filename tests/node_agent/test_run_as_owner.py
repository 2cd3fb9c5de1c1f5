"""Tasks run as their owner's Unix account (``[runner] run_tasks_as = "owner"``), node side:
looking the account up, the launch plan, real processes and containers dropped to it,
and the agent's hello and refusals.

The account ``nobody`` exists everywhere and owns nothing: it is every test's owner.
Running a task as another account needs root, so those tests skip when not root.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.agent_link import MemoryConnector, events_of
from support.docker_images import engine_or_skip
from support.zygotes import stop_zygotes_under

from events import link
from events.types import TaskFinished, TaskSpec
from node_agent.accounts import (
    LAST_RESORT_CWD,
    Account,
    account_names,
    account_of,
    resolve_account,
    working_directory,
    writable_by,
)
from node_agent.agent import Agent
from node_agent.executors import shim
from node_agent.executors.base import StartFailed, TaskRun
from node_agent.executors.docker_options import container_options
from node_agent.executors.process import ProcessExecutor
from node_agent.executors.process_plan import HostFacilities, plan_launch
from node_agent.executors.zygote import SHIM_PATH
from node_agent.probes import MachineInfo
from node_agent.settings import RunnerSettings, RunnerSettingsError

pytestmark = pytest.mark.timeout(60)

NOBODY = pwd.getpwnam("nobody")
MISSING = "no-such-account-hakuriver"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="running a task as another account needs root (run_tasks_as = owner needs it too)",
)


def task(tmp_path: Path, *argv: str, run_as: str | None = "nobody", **spec: Any) -> TaskRun:
    return TaskRun(
        task_id=f"t-{len(list(tmp_path.glob('*')))}-{os.urandom(3).hex()}",
        spec=TaskSpec(command=argv[0], args=argv[1:], batch_id="b", **spec),
        cores=1,
        shared_dir=str(tmp_path / "shared"),
        local_temp_dir=str(tmp_path / "local"),
        run_as=run_as,
    )


def output(run: TaskRun) -> str:
    return (Path(run.shared_dir) / "task_outputs" / f"{run.task_id}.out").read_text()


# -- the account -------------------------------------------------------------------------


def test_an_account_is_its_uid_gid_groups_and_home() -> None:
    account = resolve_account("nobody")
    assert (account.name, account.uid, account.gid, account.home) == (
        "nobody",
        NOBODY.pw_uid,
        NOBODY.pw_gid,
        NOBODY.pw_dir,
    )
    assert account.groups == tuple(dict.fromkeys(os.getgrouplist("nobody", NOBODY.pw_gid)))
    assert account.environment() == {"HOME": NOBODY.pw_dir, "USER": "nobody", "LOGNAME": "nobody"}


@pytest.mark.parametrize("name", [MISSING, "bad\0name"])
def test_a_missing_account_is_a_start_failure_naming_it(name: str) -> None:
    with pytest.raises(StartFailed, match=r"no account .* on this node \(run_tasks_as = owner\)"):
        resolve_account(name)


def test_root_runs_as_root_only_by_that_name() -> None:
    assert resolve_account("root").uid == 0
    alias = pwd.struct_passwd(("toor", "x", 0, 0, "", "/root", "/bin/sh"))
    with pytest.raises(StartFailed, match=r"account 'toor' has uid 0: .* only the account named"):
        account_of(alias, [0])


def test_the_node_lists_its_account_names_unless_there_are_too_many() -> None:
    names = account_names()
    assert names is not None and {"root", "nobody"} <= set(names)
    assert list(names) == sorted(set(names))
    assert account_names(limit=1) is None


def someone(uid: int = 54321, groups: tuple[int, ...] = (54321,)) -> Account:
    """An account that owns none of this test's files (no such user need exist)."""
    return Account(name="someone", uid=uid, gid=groups[0], groups=groups, home="/nonexistent")


@pytest.mark.parametrize(
    ("mode", "owned", "in_group", "writable"),
    [
        (0o755, False, False, False),  # another's directory
        (0o1777, False, False, True),  # like /tmp
        (0o700, True, False, True),  # its own
        (0o500, True, False, False),  # its own, read-only
        (0o770, False, True, True),  # its group's, group-writable
        (0o750, False, True, False),  # its group's, group read-only
    ],
)
def test_a_directory_is_writable_by_its_mode_bits(
    tmp_path: Path, mode: int, owned: bool, in_group: bool, writable: bool
) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    folder.chmod(mode)
    if owned and os.geteuid() == 0:
        os.chown(folder, 54321, -1)  # root may write anywhere: the owner must be another
    info = folder.stat()
    account = someone(
        uid=info.st_uid if owned else 54320,
        groups=(54320, info.st_gid) if in_group else (54320,),
    )
    assert writable_by(str(folder), account) is writable
    assert writable_by(str(tmp_path / "absent"), account) is False


def test_the_working_directory_is_shared_data_else_home_else_tmp(tmp_path: Path) -> None:
    shared, home = tmp_path / "shared_data", tmp_path / "home"
    shared.mkdir(mode=0o755)
    home.mkdir(mode=0o755)
    account = Account(name="someone", uid=54321, gid=54321, groups=(54321,), home=str(home))
    assert working_directory(str(shared), account) == LAST_RESORT_CWD
    home.chmod(0o1777)
    assert working_directory(str(shared), account) == str(home)
    shared.chmod(0o1777)
    assert working_directory(str(shared), account) == str(shared)


# -- the launch plan (pure) ----------------------------------------------------------------


def test_the_plan_drops_to_the_account_with_its_login_variables(tmp_path: Path) -> None:
    account = someone(groups=(54321, 27))
    run = task(tmp_path, "id", env={"USER": "mine"})
    plan = plan_launch(run, HostFacilities(), {"HOME": "/root", "USER": "root"}, account=account)
    assert (plan.uid, plan.gid, plan.groups) == (54321, 54321, (54321, 27))
    # The account's HOME and LOGNAME over the runner's; the task's own USER over both
    assert (plan.env["HOME"], plan.env["LOGNAME"], plan.env["USER"]) == (
        "/nonexistent",
        "someone",
        "mine",
    )
    assert plan.cwd == str(tmp_path / "shared" / "shared_data")
    assert plan_launch(run, HostFacilities(), {}, account=account, cwd="/tmp").cwd == "/tmp"
    # Without an account nothing is dropped
    plain = plan_launch(run, HostFacilities(), {})
    assert (plain.uid, plain.gid, plain.groups) == (None, None, ())


def test_under_systemd_setpriv_drops_inside_the_scope(tmp_path: Path) -> None:
    facilities = HostFacilities(systemd_run="/usr/bin/systemd-run", setpriv="/usr/bin/setpriv")
    run = task(tmp_path, "id", "-u")
    plan = plan_launch(run, facilities, {}, account=someone(groups=(54321, 27)))
    inner = plan.argv[plan.argv.index("--") + 1 :]
    assert plan.argv[0] == "/usr/bin/systemd-run"
    assert inner == (
        "/usr/bin/setpriv",
        "--reuid=54321",
        "--regid=54321",
        "--groups=54321,27",
        "--",
        "id",
        "-u",
    )
    assert plan.uid is None  # systemd-run must start as root: the shim does not drop
    without = HostFacilities(systemd_run="/usr/bin/systemd-run")
    with pytest.raises(StartFailed, match="needs setpriv"):
        plan_launch(run, without, {}, account=someone())


def test_a_container_runs_as_uid_gid_with_the_other_groups(tmp_path: Path) -> None:
    run = task(tmp_path, "id", container="busybox")
    options = container_options(run, node="n1", account=someone(groups=(54321, 27, 100)))
    assert (options["user"], options["group_add"]) == ("54321:54321", ["27", "100"])
    assert "user" not in container_options(run, node="n1")
    assert "group_add" not in container_options(run, node="n1", account=someone())


# -- real processes ------------------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["zygote", "no-zygote"])
async def executor(request: Any, tmp_path: Path) -> AsyncIterator[ProcessExecutor]:
    made = ProcessExecutor(
        tmp_path / "state", facilities=HostFacilities(), use_zygote=request.param
    )
    yield made
    for task_id in made.running():
        await made.kill(task_id, grace_s=0.1)
    await made.close()
    stop_zygotes_under(tmp_path)


@needs_root
async def test_a_process_task_runs_as_its_owner(executor: ProcessExecutor, tmp_path: Path) -> None:
    # Given a task owned by nobody, whose shared_data it cannot write
    script = (
        "id -u; id -g; id -G; echo $HOME $USER $LOGNAME; pwd;"
        ' f=$(mktemp -p .) && rm "$f" && echo wrote'
    )
    run = task(tmp_path, "sh", "-c", script)
    # When it runs
    await executor.start(run)
    outcome = await executor.wait(run.task_id)
    # Then it is nobody, with nobody's groups and login variables, in /tmp (Slurm's fallback)
    assert outcome.state == "completed", outcome
    groups = " ".join(str(g) for g in resolve_account("nobody").groups)
    assert output(run).splitlines() == [
        str(NOBODY.pw_uid),
        str(NOBODY.pw_gid),
        groups,
        f"{NOBODY.pw_dir} nobody nobody",
        LAST_RESORT_CWD,
        "wrote",
    ]
    # And its output files were opened by the runner before the drop, then given to
    # nobody: its owner reads them on the node, and no other local user does
    for out_file in (
        Path(run.shared_dir) / "task_outputs" / f"{run.task_id}.out",
        Path(run.shared_dir) / "task_errors" / f"{run.task_id}.err",
    ):
        found = out_file.stat()
        assert (found.st_uid, found.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
        assert found.st_mode & 0o777 == 0o600


@needs_root
async def test_a_task_starts_in_shared_data_where_its_owner_can_write(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    shared_data = tmp_path / "shared" / "shared_data"
    shared_data.mkdir(parents=True)
    shared_data.chmod(0o1777)
    run = task(tmp_path, "sh", "-c", "pwd; touch mine; stat -c %u mine", memory_bytes=1 << 30)
    await executor.start(run)
    assert (await executor.wait(run.task_id)).state == "completed"
    assert output(run).splitlines() == [str(shared_data), str(NOBODY.pw_uid)]


@needs_root
async def test_an_owner_without_an_account_fails_to_start_and_leaves_nothing(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    run = task(tmp_path, "true", run_as=MISSING)
    with pytest.raises(StartFailed, match=f"no account '{MISSING}' on this node"):
        await executor.start(run)
    assert executor.running() == []
    assert list((tmp_path / "state").glob(f"{run.task_id}*")) == []


@needs_root
def test_the_shim_sets_every_supplementary_group(tmp_path: Path) -> None:
    # An account with groups beyond its primary one (none need exist to be set)
    account = Account(
        name="nobody", uid=NOBODY.pw_uid, gid=NOBODY.pw_gid, groups=(4242, 4343), home="/"
    )
    run = task(tmp_path, "sh", "-c", "id -u; grep ^Groups: /proc/self/status | cut -f2")
    launch = plan_launch(run, HostFacilities(), os.environ, account=account, cwd="/tmp")
    for folder in ("task_outputs", "task_errors"):
        (tmp_path / "shared" / folder).mkdir(parents=True, exist_ok=True)
    state = tmp_path / "state"
    state.mkdir()
    done = subprocess.run(
        [sys.executable, "-I", "-S", SHIM_PATH, str(state), run.task_id],
        input=shim.encode_request(run.task_id, launch.to_builtins()),
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert shim.read_record(str(state / f"{run.task_id}{shim.EXIT}"))["returncode"] == "0"
    uid, groups = output(run).splitlines()
    assert (int(uid), sorted(int(g) for g in groups.split())) == (NOBODY.pw_uid, [4242, 4343])


# -- real containers -----------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.timeout(120)
async def test_a_container_task_runs_as_its_owner(tmp_path: Path) -> None:
    from node_agent.executors.docker import DockerExecutor

    client = engine_or_skip()
    node = f"test-{tmp_path.name}"
    executor = DockerExecutor(tmp_path / "state", node=node, client=client)
    try:
        run = task(tmp_path, "sh", "-c", "id -u; id -g", container="busybox")
        started = await executor.start(run)
        assert (await executor.wait(run.task_id)).state == "completed"
        assert output(run).splitlines() == [str(NOBODY.pw_uid), str(NOBODY.pw_gid)]
        container = client.containers.get(started.container_id)
        assert container.attrs["Config"]["User"] == f"{NOBODY.pw_uid}:{NOBODY.pw_gid}"
        # Its output, copied by the runner, is its owner's alone (issue 14)
        found = (Path(run.shared_dir) / "task_outputs" / f"{run.task_id}.out").stat()
        assert (found.st_uid, found.st_gid, found.st_mode & 0o777) == (
            NOBODY.pw_uid,
            NOBODY.pw_gid,
            0o600,
        )
        missing = task(tmp_path, "true", container="busybox", run_as=MISSING)
        with pytest.raises(StartFailed, match=f"no account '{MISSING}'"):
            await executor.start(missing)
    finally:
        await executor.close()
        for container in client.containers.list(
            all=True, sparse=True, filters={"label": f"hakuriver.node={node}"}
        ):
            container.remove(force=True)


# -- the agent -----------------------------------------------------------------------------


def settings(tmp_path: Path, run_tasks_as: str) -> RunnerSettings:
    return RunnerSettings.from_mapping(
        {
            "paths": {"shared_dir": str(tmp_path / "shared")},
            "runner": {"run_tasks_as": run_tasks_as},
        },
        data_dir=str(tmp_path),
        name="n1",
    )


def test_the_setting_is_runner_or_owner_and_the_error_names_the_key(tmp_path: Path) -> None:
    assert RunnerSettings.from_mapping({}).runner.run_tasks_as == "runner"
    assert settings(tmp_path, "owner").runner.run_tasks_as == "owner"
    with pytest.raises(RunnerSettingsError, match=r"runner\.run_tasks_as"):
        settings(tmp_path, "alice")


def test_owner_mode_needs_a_root_runner(tmp_path: Path) -> None:
    problem = settings(tmp_path, "owner").run_tasks_as_problem(1000)
    assert problem is not None and "must run as root" in problem and "uid 1000" in problem
    assert settings(tmp_path, "owner").run_tasks_as_problem(0) is None
    assert settings(tmp_path, "runner").run_tasks_as_problem(1000) is None


def agent(tmp_path: Path, run_tasks_as: str, connector: MemoryConnector) -> Agent:
    made = settings(tmp_path, run_tasks_as)
    return Agent(
        made,
        executors={
            "process": ProcessExecutor(made.state_dir / "process", facilities=HostFacilities())
        },
        machine=MachineInfo(cores=2, memory_bytes=1 << 30, numa=()),
        connect=connector,
    )


def run_command(task_id: str, owner: str, script: str) -> link.Run:
    spec = TaskSpec(command="sh", args=("-c", script), batch_id="b", owner=owner)
    return link.Run(task_id=task_id, spec=spec, cores=0)


async def finished(host: Any, agent: Agent, count: int) -> list[TaskFinished]:
    """The first ``count`` task.finished events the agent reports."""
    found: list[TaskFinished] = []
    async with asyncio.timeout(30):
        while len(found) < count:
            await agent.run_until_idle(wait_for_tasks=True)
            found += [e.event for e in events_of(host.drain()) if isinstance(e.event, TaskFinished)]
    return found


@needs_root
async def test_an_owner_mode_agent_lists_its_accounts_and_runs_tasks_as_their_owners(
    tmp_path: Path,
) -> None:
    connector = MemoryConnector()
    async with agent(tmp_path, "owner", connector).started() as running:
        # Given an owner-mode agent: its hello says so and lists the node's accounts
        host = await connector.accept()
        hello = await host.greet()
        assert hello.run_tasks_as == "owner"
        assert hello.accounts is not None and {"nobody", "root"} <= set(hello.accounts)
        # When it gets nobody's task, and one whose owner has no account here
        await host.send(run_command("t-nobody", "nobody", "id -u"))
        await host.send(run_command("t-missing", MISSING, "id -u"))
        # Then nobody's runs as nobody, and the other fails, naming the account
        ended = {e.task_id: e for e in await finished(host, running, 2)}
        assert ended["t-nobody"].state == "completed"
        out = tmp_path / "shared" / "task_outputs" / "t-nobody.out"
        assert out.read_text() == f"{NOBODY.pw_uid}\n"
        assert ended["t-missing"].state == "failed"
        assert f"no account '{MISSING}' on this node" in ended["t-missing"].message
    stop_zygotes_under(tmp_path)


async def test_a_default_agent_runs_every_task_as_its_own_user(tmp_path: Path) -> None:
    connector = MemoryConnector()
    async with agent(tmp_path, "runner", connector).started() as running:
        host = await connector.accept()
        hello = await host.greet()
        assert (hello.run_tasks_as, hello.accounts) == ("runner", None)
        await host.send(run_command("t-1", "nobody", "id -u"))
        [ended] = await finished(host, running, 1)
        assert ended.state == "completed"
        out = tmp_path / "shared" / "task_outputs" / "t-1.out"
        assert out.read_text() == f"{os.geteuid()}\n"
    stop_zygotes_under(tmp_path)
