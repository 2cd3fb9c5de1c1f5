"""The Docker executor against a real engine (marker ``docker``; mandatory in CI): what
only it does (the contract every executor meets is in test_executor_contract.py): mounts,
limits, the OOM killer, a missing image, and many containers followed at once.

The image is a busybox rootfs imported locally (tests/support/docker_images.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support.docker_images import engine_or_skip
from support.waiting import async_wait_until

from events.types import Mount, TaskSpec
from node_agent.executors.base import StartFailed, TaskRun
from node_agent.executors.docker import DockerExecutor

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]


@pytest.fixture
def client() -> Any:
    return engine_or_skip()


@pytest.fixture
def executor(tmp_path: Path, client: Any):
    made = DockerExecutor(tmp_path / "state", node=f"test-{tmp_path.name}", client=client)
    yield made
    for container in client.containers.list(
        all=True, sparse=True, filters={"label": f"hakuriver.node=test-{tmp_path.name}"}
    ):
        container.remove(force=True)


def task(tmp_path: Path, task_id: str, *argv: str, **fields: Any) -> TaskRun:
    spec_fields = {k: v for k, v in fields.items() if k in ("env", "mounts", "privileged")}
    run_fields = {k: v for k, v in fields.items() if k not in spec_fields}
    spec = TaskSpec(
        command=argv[0], args=argv[1:], container="busybox", batch_id="b", **spec_fields
    )
    return TaskRun(
        task_id=task_id,
        spec=spec,
        cores=run_fields.pop("cores", 1),
        shared_dir=str(tmp_path / "shared"),
        local_temp_dir=str(tmp_path / "local"),
        **run_fields,
    )


def output(tmp_path: Path, task_id: str, stream: str = "out") -> str:
    folder = "task_outputs" if stream == "out" else "task_errors"
    path = tmp_path / "shared" / folder / f"{task_id}.{stream}"
    return path.read_text() if path.exists() else ""


async def test_a_task_sees_its_mounts_env_and_limits(tmp_path: Path, executor) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "data.txt").write_text("mounted\n")
    script = (
        'echo "$GREETING"; ls -d /shared; ls -d /local_temp; cat /data/data.txt; pwd;'
        " cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null"
        " || cut -d' ' -f1 /sys/fs/cgroup/cpu.max;"
        " cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null"
        " || cat /sys/fs/cgroup/memory.max;"
        " echo oops >&2; exit 3"
    )
    run = task(
        tmp_path,
        "t-mounts",
        "sh",
        "-c",
        script,
        env={"GREETING": "hello $(not expanded)"},
        mounts=(Mount(host_path=str(extra), container_path="/data", read_only=True),),
        cores=1,
        memory_bytes=64 * 1024 * 1024,
    )
    started = await executor.start(run)
    assert started.container_id
    outcome = await executor.wait("t-mounts")
    assert outcome.state == "failed" and outcome.exit_code == 3
    lines = output(tmp_path, "t-mounts").splitlines()
    assert lines[:5] == ["hello $(not expanded)", "/shared", "/local_temp", "mounted", "/shared"]
    assert lines[5] in ("100000", "max") or int(lines[5]) == 100000
    assert int(lines[6]) == 64 * 1024 * 1024
    assert output(tmp_path, "t-mounts", "err") == "oops\n"


async def test_a_container_sees_none_of_the_runners_environment_and_its_output_is_private(
    tmp_path: Path, executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a runner with a secret of its own in its environment (issue 14, finding 12)
    monkeypatch.setenv("HAKURIVER_TEST_RUNNER_SECRET", "the-runners-own")
    run = task(tmp_path, "t-env", "env", env={"MINE": "1"})
    # When a container task prints its environment
    await executor.start(run)
    assert (await executor.wait("t-env")).state == "completed"
    printed = output(tmp_path, "t-env")
    # Then it has its own variables and none of the runner's
    assert "MINE=1" in printed.splitlines()
    assert "the-runners-own" not in printed
    # And its output files are the runner's alone (0600), as the executor's state is
    for stream in ("out", "err"):
        folder = "task_outputs" if stream == "out" else "task_errors"
        path = tmp_path / "shared" / folder / f"t-env.{stream}"
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert executor.state_dir.stat().st_mode & 0o777 == 0o700


async def test_a_container_gets_hakurivers_variables_as_a_process_task_does(
    tmp_path: Path, executor
) -> None:
    # Given a task that tries to set one of HakuRiver's variables itself
    script = (
        'echo "$HAKURIVER_TASK_ID $HAKURIVER_NODE $HAKURIVER_LOCAL_TEMP_DIR";'
        ' echo written > "$HAKURIVER_LOCAL_TEMP_DIR/from-task"'
    )
    run = task(tmp_path, "t-vars", "sh", "-c", script, env={"HAKURIVER_TASK_ID": "forged"})
    (tmp_path / "local").mkdir(exist_ok=True)
    await executor.start(run)
    assert (await executor.wait("t-vars")).state == "completed", output(tmp_path, "t-vars", "err")
    # Then it sees its id, its node and where the node's local temp folder is mounted
    assert output(tmp_path, "t-vars") == f"t-vars {executor.node} /local_temp\n"
    # And that folder is the node's local temp folder
    assert (tmp_path / "local" / "from-task").read_text() == "written\n"


async def test_a_memory_hog_ends_killed_oom(tmp_path: Path, executor) -> None:
    # tail buffers its whole input looking for the last line: /dev/zero never has one.
    run = task(tmp_path, "t-oom", "tail", "/dev/zero", memory_bytes=32 * 1024 * 1024)
    await executor.start(run)
    outcome = await asyncio.wait_for(executor.wait("t-oom"), 60)
    assert outcome.state == "killed_oom", outcome


async def test_a_missing_environment_fails_to_start_clearly(tmp_path: Path, executor) -> None:
    run = task(tmp_path, "t-none", "true")
    run = TaskRun(
        **{
            **{f: getattr(run, f) for f in run.__struct_fields__},
            "spec": TaskSpec(command="true", container="no-such-env", batch_id="b"),
        }
    )
    with pytest.raises(StartFailed, match="no-such-env"):
        await executor.start(run)


async def test_many_running_containers_never_starve_the_next_start(
    tmp_path: Path, executor
) -> None:
    """Each running container holds three blocking engine calls (its wait and two output
    followers). Regression: they ran on the loop's default pool (``cpus + 4`` threads),
    so on a small node two running containers held every thread and the next start
    waited for one to end. The loop here gets a pool of 4 threads, a node with no CPU
    to spare; the executor must not depend on it."""
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.get_running_loop()
    small = ThreadPoolExecutor(4)
    loop.set_default_executor(small)
    gate = tmp_path / "shared" / "shared_data" / "go"
    waits = []
    try:
        for i in range(6):
            run = task(
                tmp_path,
                f"t-many-{i}",
                "sh",
                "-c",
                f"echo started-{i}; while [ ! -e /shared/go ]; do sleep 0.05; done; echo done-{i}",
                cores=0,
            )
            await asyncio.wait_for(executor.start(run), 30)
            waits.append(asyncio.ensure_future(executor.wait(run.task_id)))
        # All six run at once, each printing while the others hold their followers.
        await async_wait_until(
            lambda: all(f"started-{i}" in output(tmp_path, f"t-many-{i}") for i in range(6)),
            30,
        )
        gate.touch()
        outcomes = await asyncio.wait_for(asyncio.gather(*waits), 60)
        assert [o.state for o in outcomes] == ["completed"] * 6
        for i in range(6):
            assert output(tmp_path, f"t-many-{i}") == f"started-{i}\ndone-{i}\n"
    finally:
        gate.parent.mkdir(parents=True, exist_ok=True)
        gate.touch()
        small.shutdown(wait=False)


async def test_an_executor_adopts_only_its_own_containers_whatever_the_node_is_called(
    tmp_path: Path, executor: DockerExecutor, client: Any
) -> None:
    """Two runners with one node name on one engine (two users' `hakuriver up` on one
    machine both use its hostname): neither adopts, follows or kills the other's task."""
    # Given a running task of this executor
    run = task(tmp_path, f"t-mine-{tmp_path.name}", "sleep", "30", cores=0)
    started = await executor.start(run)
    # When another executor with the same node name but its own state adopts
    other = DockerExecutor(tmp_path / "other-state", node=executor.node, client=client)
    try:
        # Then it finds nothing of the first one's, and the first one's task runs on
        assert await other.adopt() == []
        container = client.containers.get(started.container_id)
        assert container.status == "running"
        # And the first one, restarted on its own state, finds its task again
        successor = DockerExecutor(tmp_path / "state", node=executor.node, client=client)
        [adopted] = await successor.adopt()
        assert adopted.task_id == run.task_id and not adopted.ended
        await successor.kill(run.task_id, grace_s=0)
        assert (await successor.wait(run.task_id)).state == "killed"
        await successor.close()
    finally:
        await other.close()


async def test_a_successor_resumes_both_streams_from_their_own_marks(
    tmp_path: Path, executor: DockerExecutor, client: Any
) -> None:
    """Both streams come in one engine request (docker_follow.copy_output); each keeps its
    own mark, so a successor executor appends each from where it stopped: no line of
    either repeated, none lost, none in the other's file."""
    gate = tmp_path / "shared" / "shared_data" / "gate"
    script = (
        "echo out-1; echo err-1 >&2; while [ ! -e /shared/gate ]; do sleep 0.05; done;"
        " echo out-2; echo err-2 >&2"
    )
    run = task(tmp_path, f"t-both-{tmp_path.name}", "sh", "-c", script, cores=0)
    await executor.start(run)
    await async_wait_until(
        lambda: (
            output(tmp_path, run.task_id) == "out-1\n"
            and output(tmp_path, run.task_id, "err") == "err-1\n"
        ),
        30,
    )
    await executor.close()  # its follower writes nothing more
    successor = DockerExecutor(tmp_path / "state", node=executor.node, client=client)
    try:
        [adopted] = await successor.adopt()
        assert adopted.task_id == run.task_id
        gate.touch()
        assert (await asyncio.wait_for(successor.wait(run.task_id), 30)).state == "completed"
        assert output(tmp_path, run.task_id) == "out-1\nout-2\n"
        assert output(tmp_path, run.task_id, "err") == "err-1\nerr-2\n"
    finally:
        gate.parent.mkdir(parents=True, exist_ok=True)
        gate.touch()
        await successor.close()


async def test_a_container_made_but_never_started_is_not_adopted(
    tmp_path: Path, executor: DockerExecutor, client: Any
) -> None:
    """An agent killed between the create and the start leaves a `created` container. Its
    wait ends at once with 0: adopted, the task would be reported completed though it
    never ran. It is removed instead (the host sends the task again), and a start of the
    task afterwards runs it."""
    from node_agent.executors.docker_options import container_options

    run = task(tmp_path, f"t-made-{tmp_path.name}", "echo", "ran", cores=0)
    for folder in ("shared/shared_data", "shared/task_outputs", "shared/task_errors", "local"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    options = container_options(run, node=executor.node, executor_id=executor.executor_id)
    made = client.containers.create("hakuriver/busybox:base", **options)
    successor = DockerExecutor(tmp_path / "state", node=executor.node, client=client)
    try:
        assert await successor.adopt() == []
        assert not client.api.containers(all=True, filters={"id": made.id})
        await successor.start(run)
        assert (await asyncio.wait_for(successor.wait(run.task_id), 30)).state == "completed"
        assert output(tmp_path, run.task_id) == "ran\n"
    finally:
        await successor.close()
