"""Who tasks run as, in a real cluster: the runner's own user by default; with
``[runner] run_tasks_as = "owner"`` the owner's Unix account on the node, and an owner
with no account on any node that could take the task is refused at submission.

Owners are set through ``support.owners.submit_as`` only. ``nobody`` is the owner with an
account everywhere; owner mode needs the runner (so these tests) to be root.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from support.cluster import running_cluster
from support.owners import submit_as

pytestmark = pytest.mark.timeout(120)

NOBODY = pwd.getpwnam("nobody")
MISSING = "no-such-account-hakuriver"
OWNER_MODE = '[runner]\nrun_tasks_as = "owner"\n'
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason='run_tasks_as = "owner" needs the runner, so the tests, to be root'
)


def test_by_default_tasks_run_as_the_runners_own_user(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        r = submit_as(cluster.http, "nobody", "id", "-u")
        assert r.status_code == 201, r.text
        [task_id] = r.json()["task_ids"]
        assert cluster.wait_state(task_id)["state"] == "completed"
        assert cluster.output(task_id) == f"{os.geteuid()}\n".encode()


@needs_root
def test_owner_mode_runs_tasks_as_their_owners_and_refuses_owners_without_an_account(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path, agents=()) as cluster:
        cluster.start_agent("n1", extra=OWNER_MODE)
        # A task of nobody's runs as nobody
        r = submit_as(cluster.http, "nobody", "sh", "-c", "id -u; id -g")
        assert r.status_code == 201, r.text
        [task_id] = r.json()["task_ids"]
        assert cluster.wait_state(task_id)["state"] == "completed"
        assert cluster.output(task_id) == f"{NOBODY.pw_uid}\n{NOBODY.pw_gid}\n".encode()
        # An owner with no account on the only node is refused at submission, not on the node
        reason = f"no account '{MISSING}' on node n1 (run_tasks_as = owner)"
        r = submit_as(cluster.http, MISSING, "true")
        assert r.status_code == 400, r.text
        assert r.json()["field"] == "owner" and reason in r.json()["message"]
        r = submit_as(cluster.http, MISSING, "true", targets=["n1"])
        assert r.status_code == 400, r.text
        assert r.json()["field"] == "targets[0]" and reason in r.json()["message"]
        # With a node in the default mode too, the task goes there, n1 rejected and why
        cluster.start_agent("n2")
        r = submit_as(cluster.http, MISSING, "id", "-u")
        assert r.status_code == 201, r.text
        [task_id] = r.json()["task_ids"]
        assert cluster.wait_state(task_id)["state"] == "completed"
        assert cluster.output(task_id) == f"{os.geteuid()}\n".encode()
        why = cluster.http.get(f"/api/tasks/{task_id}/why").json()
        assert why["node"] == "n2"
        assert [(r["node"], r["reason"]) for r in why["rejected"]] == [("n1", reason)]
