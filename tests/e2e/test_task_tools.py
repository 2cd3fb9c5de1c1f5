"""Process tasks find the runner's own tools (``hakurun``) on PATH: seeds 000/004 "Method 2".

``hakuriver task submit -- hakurun ...`` must work under ``make up``, where the runner
runs from the project's venv without that venv being on anybody's PATH.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.cluster import REPO, running_cluster

from node_agent.executors.process_plan import runner_tools_dir

pytestmark = pytest.mark.timeout(90)

SYSTEM_PATH = "/usr/bin:/bin"


def test_a_process_task_runs_hakurun_with_a_path_that_lacks_the_venv(tmp_path: Path) -> None:
    tools = runner_tools_dir()
    assert tools not in SYSTEM_PATH.split(":")
    with running_cluster(tmp_path, agents=()) as cluster:
        # The runner as `make up` starts it: from the venv, which is not on its PATH.
        env = dict(cluster.env(), PATH=SYSTEM_PATH)
        log = (tmp_path / "agent-bare.log").open("ab")
        cluster._logs.append(log)  # closed with the cluster
        argv = ["runner", "--name", "bare", "--config", str(cluster.config)]
        argv += ["--join", cluster.token(kind="join")]
        cluster.agents["bare"] = subprocess.Popen(
            [sys.executable, "-m", "cli.hakuriver.serve", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        cluster.wait_node("bare", online=True)
        script = 'command -v hakurun; command -v python3; hakurun --help | head -n 1; echo "$PATH"'
        [task] = cluster.submit("sh", "-c", script, targets=["bare"])
        done = cluster.wait_state(task, timeout=60)
        out = cluster.output(task).decode().splitlines()
        assert done["state"] == "completed", (done, out, cluster.output(task, "stderr"))
        assert out[0] == f"{tools}/hakurun"
        assert out[1] == "/usr/bin/python3"  # the node's own python still comes first
        assert out[2].lower().startswith("usage: hakurun"), out
        assert out[3] == f"{SYSTEM_PATH}:{tools}"

        # A task that sets PATH itself gets exactly that PATH.
        [own] = cluster.submit(
            "/bin/sh", "-c", 'echo "$PATH"', targets=["bare"], env={"PATH": "/bin"}
        )
        assert cluster.wait_state(own, timeout=60)["state"] == "completed"
        assert cluster.output(own) == b"/bin\n"
