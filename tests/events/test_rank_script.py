"""The rank script of events/jobs.py, run by the shells images have (dash, busybox ash)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from support.waiting import wait_until

from events.jobs import CONTROL_FAILED, GO, SETUP_DONE, rank_command

SHELLS = [s for s in ("/bin/sh", shutil.which("busybox")) if s]


def run(
    shell: str, control: Path, setup: str | None, body: str
) -> subprocess.CompletedProcess[str]:
    _, args = rank_command(setup, body)
    argv = [shell, *args] if shell == "/bin/sh" else [shell, "sh", *args]
    env = {"HAKURIVER_JOB_CONTROL": str(control), "PATH": "/usr/bin:/bin"}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("shell", SHELLS)
def test_setup_then_the_barrier_then_run_with_stderr_merged(shell: str, tmp_path: Path) -> None:
    (tmp_path / GO).touch()  # released already: the script goes straight on
    done = run(shell, tmp_path, "echo set; echo warn >&2", "echo ran; echo oops >&2; exit 4")
    assert done.returncode == 4
    assert done.stdout == "set\nwarn\nran\noops\n" and done.stderr == ""
    assert (tmp_path / SETUP_DONE).exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_failed_setup_ends_the_rank_with_its_code_and_reports_nothing(
    shell: str, tmp_path: Path
) -> None:
    done = run(shell, tmp_path, "exit 3", "echo never")
    assert done.returncode == 3 and "setup failed with exit code 3" in done.stdout
    assert not (tmp_path / SETUP_DONE).exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_control_folder_it_cannot_write_ends_the_rank_instead_of_waiting(
    shell: str, tmp_path: Path
) -> None:
    # Waiting at the barrier without having said so would hold the job's nodes for ever.
    done = run(shell, tmp_path / "missing", "true", "echo never")
    assert done.returncode == CONTROL_FAILED
    assert "cannot write the rank's control folder" in done.stdout
    assert "never" not in done.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_setup_and_run_are_arguments_never_script(shell: str, tmp_path: Path) -> None:
    (tmp_path / GO).touch()
    text = "echo '$(id)' \"$HOME\" `true`; echo done"
    done = run(shell, tmp_path, None, text)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "done"


@pytest.mark.parametrize("shell", SHELLS)
def test_a_control_folder_that_goes_away_ends_the_waiting_rank(shell: str, tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.mkdir()
    _, args = rank_command(None, "echo never")
    argv = [shell, *args] if shell == "/bin/sh" else [shell, "sh", *args]
    env = {"HAKURIVER_JOB_CONTROL": str(control), "PATH": "/usr/bin:/bin"}
    rank = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    wait_until(lambda: (control / SETUP_DONE).exists() or rank.poll() is not None, 10)
    assert rank.poll() is None, "waiting at the barrier now"
    shutil.rmtree(control)
    out, _ = rank.communicate(timeout=10)
    assert rank.returncode == CONTROL_FAILED and "control folder is gone" in out
    assert "never" not in out
