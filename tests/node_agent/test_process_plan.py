"""The process executor's pure decisions: the launch plan and the final state."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from events.types import TaskSpec
from node_agent.executors import shim
from node_agent.executors.base import Outcome, StartFailed, TaskRun
from node_agent.executors.process_plan import (
    HostFacilities,
    decide_outcome,
    plan_launch,
    runner_tools_dir,
    systemd_unit,
)

pytestmark = pytest.mark.timeout(10)

BASE_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/home/agent", "FOO": "agent"}


def run(**placement: object) -> TaskRun:
    spec = TaskSpec(
        command="python", args=("train.py", "--lr", "0.1"), env={"FOO": "user"}, batch_id="b"
    )
    return TaskRun(
        task_id="t-1",
        spec=spec,
        cores=placement.pop("cores", 2),  # type: ignore[arg-type]
        shared_dir="/shared",
        local_temp_dir="/scratch",
        **placement,  # type: ignore[arg-type]
    )


def test_a_task_knows_its_node_by_name() -> None:
    assert (
        plan_launch(run(node="gpu-3"), HostFacilities(), BASE_ENV).env["HAKURIVER_NODE"] == "gpu-3"
    )


def test_a_plain_task_runs_its_argv_in_the_shared_data_dir() -> None:
    plan = plan_launch(run(), HostFacilities(), BASE_ENV)
    assert plan.argv == ("python", "train.py", "--lr", "0.1")
    assert plan.cwd == "/shared/shared_data"
    assert plan.stdout == "/shared/task_outputs/t-1.out"
    assert plan.stderr == "/shared/task_errors/t-1.err"
    assert (plan.cpus, plan.memory_bytes, plan.cgroup_parent, plan.systemd_cgroup) == (
        (),
        None,
        None,
        None,
    )


def test_the_environment_layers_agent_then_user_then_hakuriver() -> None:
    spec = TaskSpec(
        command="env", env={"FOO": "user", "HAKURIVER_TASK_ID": "spoofed"}, batch_id="b"
    )
    task = TaskRun(
        task_id="t-1", spec=spec, cores=1, gpu_ids=(0, 2), shared_dir="/s", local_temp_dir="/l"
    )
    env = plan_launch(task, HostFacilities(), BASE_ENV).env
    assert env["PATH"] == "/usr/bin:/bin" and env["FOO"] == "user"
    assert env["HAKURIVER_TASK_ID"] == "t-1"
    assert env["HAKURIVER_LOCAL_TEMP_DIR"] == "/l"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,2"


RUNNER_ENV = {
    **BASE_ENV,
    "USER": "agent",
    "LOGNAME": "agent",
    "LANG": "C.UTF-8",
    "LC_TIME": "en_GB.UTF-8",
    "TZ": "Europe/Paris",
    # The runner's own: a credential, a service manager's and a loader's variable
    "AWS_SECRET_ACCESS_KEY": "runner-secret",
    "INVOCATION_ID": "0123",
    "LD_PRELOAD": "/opt/agent/hook.so",
}


def test_a_task_starts_from_a_clean_environment_not_the_runners() -> None:
    # Given a runner whose environment holds its own secrets (issue 14: an `env` task
    # printed every variable of the agent's)
    spec = TaskSpec(command="env", env={"MINE": "1"}, batch_id="b")
    task = TaskRun(task_id="t-1", spec=spec, cores=1, shared_dir="/s", local_temp_dir="/l")
    # When its task's environment is planned
    env = plan_launch(task, HostFacilities(), RUNNER_ENV).env
    # Then it has where programs are, whose home, the locale and time zone, its own
    # variables and HakuRiver's: nothing else of the runner's
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/agent",
        "USER": "agent",
        "LOGNAME": "agent",
        "LANG": "C.UTF-8",
        "LC_TIME": "en_GB.UTF-8",
        "TZ": "Europe/Paris",
        "MINE": "1",
        "HAKURIVER_TASK_ID": "t-1",
        "HAKURIVER_LOCAL_TEMP_DIR": "/l",
    }


def test_pass_environment_names_the_runners_variables_its_tasks_also_get() -> None:
    plan = plan_launch(
        run(), HostFacilities(), RUNNER_ENV, pass_environment=("LD_PRELOAD", "NOT_SET")
    )
    assert plan.env["LD_PRELOAD"] == "/opt/agent/hook.so"
    assert "NOT_SET" not in plan.env and "AWS_SECRET_ACCESS_KEY" not in plan.env


def test_a_runner_without_path_gives_its_tasks_the_default_one() -> None:
    env = plan_launch(run(), HostFacilities(), {"HOME": "/root"}).env
    assert env["PATH"] == os.defpath


def test_the_runners_tools_come_last_on_path_and_a_tasks_own_path_wins() -> None:
    tools = HostFacilities(tools_dir="/opt/hakuriver/.venv/bin")
    env = plan_launch(run(), tools, BASE_ENV).env
    # Appended: the node's python3 still comes before the runner's venv.
    assert env["PATH"] == "/usr/bin:/bin:/opt/hakuriver/.venv/bin"
    # Already there (an activated venv): unchanged.
    on_path = {**BASE_ENV, "PATH": "/opt/hakuriver/.venv/bin:/usr/bin"}
    assert plan_launch(run(), tools, on_path).env["PATH"] == on_path["PATH"]
    # The task's own PATH is taken exactly as given.
    spec = TaskSpec(command="env", env={"PATH": "/only/mine"}, batch_id="b")
    own = TaskRun(task_id="t-2", spec=spec, cores=1, shared_dir="/s", local_temp_dir="/l")
    assert plan_launch(own, tools, BASE_ENV).env["PATH"] == "/only/mine"


def test_the_runners_tools_dir_is_where_its_scripts_are_installed() -> None:
    tools_dir = runner_tools_dir()
    assert os.path.exists(os.path.join(tools_dir, "hakurun")), tools_dir


def test_no_gpus_means_no_cuda_variable_from_hakuriver() -> None:
    assert "CUDA_VISIBLE_DEVICES" not in plan_launch(run(), HostFacilities(), BASE_ENV).env


def test_a_numa_target_with_numactl_binds_cpus_and_memory() -> None:
    facilities = HostFacilities(numactl="/usr/bin/numactl")
    whole_node = plan_launch(run(numa_id=1), facilities, BASE_ENV)
    assert whole_node.argv[:4] == ("/usr/bin/numactl", "--membind=1", "--cpunodebind=1", "--")
    assert whole_node.argv[4:] == ("python", "train.py", "--lr", "0.1")
    # An explicit CPU set is narrower than the node: numactl only binds memory
    pinned = plan_launch(run(numa_id=1, cpus=(4, 5)), facilities, BASE_ENV)
    assert pinned.argv[:3] == ("/usr/bin/numactl", "--membind=1", "--")
    assert pinned.cpus == (4, 5)


def test_a_numa_target_without_numactl_still_pins_cpus() -> None:
    plan = plan_launch(run(numa_id=1, cpus=(4, 5)), HostFacilities(), BASE_ENV)
    assert plan.argv[0] == "python" and plan.cpus == (4, 5)


def test_systemd_runs_the_task_in_a_scope_with_quota_and_memory_max() -> None:
    facilities = HostFacilities(systemd_run="/usr/bin/systemd-run", cgroup_parent="/ignored")
    plan = plan_launch(run(cores=2, memory_bytes=2**30), facilities, BASE_ENV)
    separator = plan.argv.index("--")
    options, command = plan.argv[:separator], plan.argv[separator + 1 :]
    assert options[:2] == ("/usr/bin/systemd-run", "--scope")
    assert "--unit=hakuriver-t-1" in options
    assert options[options.index("CPUQuota=200%") - 1 :][:2] == ("-p", "CPUQuota=200%")
    assert f"MemoryMax={2**30}" in options
    assert command == ("python", "train.py", "--lr", "0.1")
    assert plan.systemd_cgroup == "/sys/fs/cgroup/hakuriver.slice/hakuriver-t-1.scope"
    assert plan.cgroup_parent is None  # systemd owns the cgroup


def test_without_systemd_a_memory_limit_goes_to_the_shim() -> None:
    plan = plan_launch(
        run(memory_bytes=2**30), HostFacilities(cgroup_parent="/sys/fs/cgroup/hakuriver"), BASE_ENV
    )
    assert plan.memory_bytes == 2**30 and plan.cgroup_parent == "/sys/fs/cgroup/hakuriver"
    # What the shim receives: its request carries every field, and passes its checks
    _, sent = shim.decode_request(shim.encode_request("t-1", plan.to_builtins()))
    assert list(sent["argv"]) == ["python", "train.py", "--lr", "0.1"]
    assert sent["memory_bytes"] == 2**30 and sent["env"]["HAKURIVER_TASK_ID"] == "t-1"


def test_unit_names_only_keep_characters_systemd_accepts() -> None:
    assert systemd_unit("a b/c$d") == "hakuriver-a_b_c_d"


KILL = -signal.SIGKILL


@pytest.mark.parametrize(
    ("returncode", "oom_kills", "killed_by_us", "memory_limit", "state"),
    [
        (0, 0, False, "none", "completed"),
        (3, 0, False, "none", "failed"),
        (-signal.SIGSEGV, 0, False, "none", "failed"),
        (-signal.SIGTERM, 0, True, "none", "killed"),
        (0, 0, True, "none", "killed"),  # asked to stop, and did so cleanly
        (KILL, 1, True, "cgroup", "killed"),  # our kill wins over a coincident OOM
        (KILL, 1, False, "cgroup", "killed_oom"),
        (1, 2, False, "cgroup", "killed_oom"),  # a child was OOM-killed, the parent failed
        (KILL, 0, False, "systemd", "killed_oom"),  # count unreadable: the SIGKILL decides
        (KILL, 0, False, "cgroup", "killed_oom"),
        (KILL, 0, False, "rlimit", "failed"),  # no cgroup limit: not the OOM killer's
        (KILL, 0, False, "none", "failed"),
    ],
)
def test_outcomes(
    returncode: int, oom_kills: int, killed_by_us: bool, memory_limit: str, state: str
) -> None:
    outcome = decide_outcome(
        returncode, oom_kills=oom_kills, killed_by_us=killed_by_us, memory_limit=memory_limit
    )
    assert outcome.state == state
    assert outcome.exit_code == returncode


def test_messages_name_the_signal_or_the_status() -> None:
    assert decide_outcome(0, oom_kills=0, killed_by_us=False, memory_limit="none") == Outcome(
        state="completed", exit_code=0
    )
    assert (
        "SIGSEGV"
        in decide_outcome(
            -signal.SIGSEGV, oom_kills=0, killed_by_us=False, memory_limit="none"
        ).message
    )
    assert (
        "exit status 4"
        in decide_outcome(4, oom_kills=0, killed_by_us=False, memory_limit="none").message
    )


def test_detection_matches_the_machine() -> None:
    facilities = HostFacilities.detect()
    assert facilities.numactl == shutil.which("numactl")
    init = Path("/proc/1/comm").read_text().strip()
    if init != "systemd" or os.geteuid() != 0:
        assert facilities.systemd_run is None
    if facilities.systemd_run is None and facilities.cgroup_parent is not None:
        assert (Path(facilities.cgroup_parent) / "cgroup.subtree_control").exists()


def test_a_workdir_is_the_working_directory_and_a_control_folder_is_in_the_environment() -> None:
    spec = TaskSpec(
        command="sh",
        batch_id="b",
        env={"HAKURIVER_JOB_CONTROL": "mine"},
        workdir="/shared/jobs/j1/workdir",
    )
    placed = TaskRun(
        task_id="t-1",
        spec=spec,
        cores=1,
        shared_dir="/shared",
        local_temp_dir="/scratch",
        control_dir="/state/jobs/t-1",
    )
    plan = plan_launch(placed, HostFacilities(), {}, cwd="/home/owner")
    assert plan.cwd == "/shared/jobs/j1/workdir"
    assert plan.env["HAKURIVER_JOB_CONTROL"] == "/state/jobs/t-1"
    assert plan_launch(run(), HostFacilities(), {}).cwd == "/shared/shared_data"
    assert "HAKURIVER_JOB_CONTROL" not in plan_launch(run(), HostFacilities(), {}).env


def test_a_configured_numactl_path_is_used_and_a_missing_one_fails_numa_tasks(
    tmp_path: Path,
) -> None:
    # [paths] numactl_path names the program; one that is not there is said, not skipped
    fake = tmp_path / "numactl"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert HostFacilities.detect(numactl=str(fake)).numactl == str(fake)
    missing = HostFacilities.detect(numactl=str(tmp_path / "absent"))
    assert missing.numactl is None
    bound = run(numa_id=0)
    with pytest.raises(StartFailed, match=r"numactl_path = .*absent.* is not an executable"):
        plan_launch(bound, missing, {})
    assert plan_launch(run(), missing, {}).argv[0] == "python"  # no NUMA target: no concern
