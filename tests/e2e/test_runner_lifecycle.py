"""One runner per state directory, and a runner that ends with its ``hakuriver up``
(issue 14, finding 3), with real processes.

Before: ``kill -9`` of ``up`` left its runner running; the next ``up`` started a second
runner on the same name and state directory, the two took the host's session from
each other in turn, and tasks ran two and three times. Now the runner holds an
exclusive lock on its state directory, and a runner started by ``up`` watches a pipe
only that ``up`` holds: it stops when the ``up`` ends, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from support.cluster import REPO, free_port
from support.waiting import wait_until

from events.credentials import write_secret
from node_agent.state_dir import LOCK_NAME

pytestmark = pytest.mark.timeout(240)


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=str(REPO))
    # Process tasks: no pull of the built-in default environment's image in the background
    config = tmp_path / "processes.toml"
    config.write_text('[docker]\ndefault_container_name = "NULL"\n')
    env["HAKURIVER_CONFIG"] = str(config)
    env.pop("HAKURIVER_URL", None)
    return env


def _serve(tmp_path: Path, *argv: str, **popen: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        [sys.executable, "-m", "cli.hakuriver.serve", *argv],
        env=_env(tmp_path),
        cwd=REPO,
        **popen,
    )


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _lock_holder(state: Path) -> int | None:
    try:
        return int((state / LOCK_NAME).read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _runners(data: Path) -> list[psutil.Process]:
    """The live runner processes on ``data``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info.get("cmdline") or []
        if "runner" in argv and str(data) in argv and not _gone(proc.pid):
            found.append(proc)
    return found


@pytest.fixture
def runner_dir(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A data dir whose runner ``n1`` has a credential, and the arguments of that runner
    (its host does not exist: it keeps trying to connect, as runners do)."""
    data = tmp_path / "data"
    write_secret(data / "runner-n1" / "agent.token", "hkr_a_not-a-real-token")
    args = ["runner", "--data-dir", str(data), "--name", "n1"]
    args += ["--url", f"http://127.0.0.1:{free_port()}"]
    yield data, args
    for proc in _runners(data):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def test_a_second_runner_on_a_state_dir_is_refused_naming_the_first(
    tmp_path: Path, runner_dir: tuple[Path, list[str]]
) -> None:
    data, args = runner_dir
    state = data / "runner-n1"
    first = _serve(tmp_path, *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _lock_holder(state) == first.pid, timeout=60)
        second = subprocess.run(
            [sys.executable, "-m", "cli.hakuriver.serve", *args],
            env=_env(tmp_path),
            cwd=REPO,
            capture_output=True,
            timeout=60,
        )
        assert second.returncode == 2
        said = second.stderr.decode().strip().splitlines()
        assert len(said) == 1, said
        assert f"in use by another runner (pid {first.pid}: " in said[0], said
        assert first.poll() is None, "the first runner must keep running"
        assert (state.stat().st_mode & 0o777) == 0o700
    finally:
        first.terminate()
        first.wait(30)


def test_a_runner_of_up_stops_when_its_up_is_gone_and_the_next_one_waits_for_it(
    tmp_path: Path, runner_dir: tuple[Path, list[str]]
) -> None:
    data, args = runner_dir
    state = data / "runner-n1"
    # Given a runner started as `up` starts it: watching a pipe only its `up` holds
    watched, lifeline = os.pipe()
    first = _serve(
        tmp_path,
        *args,
        "--parent-fd",
        str(watched),
        pass_fds=(watched,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(watched)
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: _lock_holder(state) == first.pid, timeout=60)
        # And the runner of the next `up`, started while the first is still there
        watched2, lifeline2 = os.pipe()
        second = _serve(
            tmp_path,
            *args,
            "--parent-fd",
            str(watched2),
            pass_fds=(watched2,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(watched2)
        # When the first `up` ends (the kernel closes its end, as for kill -9)
        os.close(lifeline)
        # Then its runner stops by itself, and the next one takes the state dir over
        assert first.wait(30) == 0
        assert first.stderr is not None
        assert b"has ended: stopping too" in first.stderr.read()
        wait_until(lambda: _lock_holder(state) == second.pid, timeout=60)
        assert second.poll() is None
        os.close(lifeline2)
        assert second.wait(30) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_kill_9_of_up_leaves_no_runner_and_the_next_up_runs_no_task_twice(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    ran = tmp_path / "ran.txt"
    ran.touch()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = ["up", "--data-dir", str(data), "--port", str(port)]
    first_log = (tmp_path / "up-1.log").open("wb")
    first = _serve(tmp_path, *argv, stdout=first_log, stderr=subprocess.STDOUT)
    http = httpx.Client(base_url=url, timeout=10)

    def online(up: subprocess.Popen[bytes], log: Path) -> bool:
        assert up.poll() is None, log.read_text()
        try:
            token = (data / "admin.token").read_text().strip()
            http.headers["Authorization"] = f"Bearer {token}"
            return bool(http.get("/api/summary").json()["nodes_online"] == 1)
        except (httpx.HTTPError, OSError, KeyError):
            return False

    second: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: online(first, tmp_path / "up-1.log"), timeout=60)
        [old_runner] = _runners(data)
        # Given 100 tasks, each appending its id to one file, then running a while
        script = f'echo "$HAKURIVER_TASK_ID" >> {ran}; sleep 2'
        ids = []
        for _ in range(100):
            body = {"command": "sh", "args": ["-c", script], "container": "NULL", "cores": 0}
            answer = http.post("/api/tasks", json=body)
            assert answer.status_code == 201, answer.text
            ids += answer.json()["task_ids"]
        # When `up` is killed with -9 while they run
        wait_until(lambda: len(ran.read_text().split()) >= 30, timeout=60)
        first.kill()
        first.wait(30)
        # Then its runner does not outlive it
        wait_until(lambda: _gone(old_runner.pid), timeout=30)
        # And the next `up` on the same data dir has one runner, which runs every task
        # to its end exactly once
        second_log = (tmp_path / "up-2.log").open("wb")
        second = _serve(tmp_path, *argv, stdout=second_log, stderr=subprocess.STDOUT)
        wait_until(lambda: online(second, tmp_path / "up-2.log"), timeout=60)

        def all_ended() -> bool:
            states = [http.get(f"/api/tasks/{i}").json()["state"] for i in ids]
            return all(s in ("completed", "failed", "killed", "lost") for s in states)

        wait_until(all_ended, timeout=120, interval=0.5)
        assert len(_runners(data)) == 1
        states = {i: http.get(f"/api/tasks/{i}").json()["state"] for i in ids}
        assert set(states.values()) == {"completed"}, states
        lines = ran.read_text().split()
        assert sorted(lines) == sorted(ids), "each task ran exactly once"
    finally:
        http.close()
        for up in (first, second):
            if up is not None and up.poll() is None:
                up.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    up.wait(60)
        for proc in _runners(data):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
