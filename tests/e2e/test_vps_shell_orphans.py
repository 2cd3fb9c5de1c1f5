"""A ``vps shell`` whose runner is SIGKILLed runs on inside the VPS (the engine has no
call to end an exec, and nothing hung it up); the runner started again ends it.

Nothing played: the real host, a real runner process with the Docker executor, the
no-sshd VPS test image, the user's websocket to ``/api/tasks/<id>/shell``.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
from support.cluster import running_cluster
from support.vps_image import VPS_NOSSH_IMAGE, vps_images_or_skip
from websockets.asyncio.client import connect

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

NODE = "o1"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMVgsrjvUWjrmylU9ejqs+tPeSN7XdrZcMyuKLEQSbyv alice"


@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
def test_a_shell_left_by_a_killed_runner_is_ended_by_the_next(tmp_path: Path, paused: bool) -> None:
    docker = vps_images_or_skip()
    with running_cluster(tmp_path, agents=(NODE,)) as cluster:
        alice = cluster.add_user("alice")
        with cluster.client_as(alice) as http:
            answer = http.post(
                "/api/tasks",
                json={
                    "task_type": "vps",
                    "container": VPS_NOSSH_IMAGE,
                    "ssh_public_key": KEY,
                    "targets": [NODE],
                },
            )
        assert answer.status_code == 201, answer.text
        [task_id] = answer.json()["task_ids"]
        try:
            cluster.wait(lambda: cluster.task(task_id).get("sshd") is False, 90, "VPS up")
            container = docker.containers.get(f"hakuriver-vps-{task_id}")

            def shells_inside() -> int:
                processes = container.top(ps_args="-o pid,args")["Processes"]
                return sum(args == "/bin/sh -l" for _pid, args in processes)

            url = cluster.url.replace("http", "ws") + f"/api/tasks/{task_id}/shell"

            async def open_shell_then_kill_the_runner() -> Any:
                async with connect(
                    url, additional_headers={"Authorization": f"Bearer {alice}"}
                ) as ws:
                    await ws.send(b"echo up-$((6*7))\n")
                    got = b""
                    async with asyncio.timeout(30):
                        while b"up-42" not in got:
                            frame = await ws.recv()
                            got += frame if isinstance(frame, bytes) else b""
                    assert shells_inside() == 1
                    if paused:  # nothing can be run in a paused VPS: it waits for a resume
                        answer = cluster.client_as(alice).post(f"/api/tasks/{task_id}/pause")
                        assert answer.status_code == 202, answer.text
                        await asyncio.to_thread(cluster.wait_state, task_id, "paused")
                    # When the runner is SIGKILLed with the shell open
                    await asyncio.to_thread(cluster.stop_agent, NODE, signal.SIGKILL)
                    async with asyncio.timeout(30):  # the host says the shell is gone
                        while isinstance(frame := await ws.recv(), bytes):
                            pass
                    return frame

            told = asyncio.run(open_shell_then_kill_the_runner())
            assert "link dropped" in str(told)
            # Then the shell runs on inside the VPS, attached to nothing ...
            assert shells_inside() == 1
            # ... until the runner is started again: it ends the shell
            cluster.start_agent(NODE)
            if paused:
                cluster.wait(
                    lambda: NODE in cluster.health()["agents_connected"], 30, "runner connected"
                )
                assert shells_inside() == 1  # still there, frozen with its VPS

                with cluster.client_as(alice) as as_alice:

                    def resumed() -> bool:
                        # A loaded machine may see the new link replaced once while the
                        # runner settles: a 409 "not connected" is asked again, else fail
                        answer = as_alice.post(f"/api/tasks/{task_id}/resume")
                        assert answer.status_code in (202, 409), answer.text
                        assert answer.status_code == 202 or "not connected" in answer.text
                        return answer.status_code == 202

                    cluster.wait(resumed, 30, "the resume to be accepted")
            cluster.wait(lambda: shells_inside() == 0, 30, "the orphan shell to be ended")
            assert cluster.task(task_id)["state"] == "running"
        finally:
            for found in docker.containers.list(
                all=True, filters={"label": f"hakuriver.task_id={task_id}"}
            ):
                found.remove(force=True)
