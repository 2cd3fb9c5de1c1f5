"""Who tasks run as, in a real cluster: the runner's own user by default; with
``[runner] run_tasks_as = "owner"`` the owner's Unix account on the node, and an owner
with no account on any node that could take the task is refused at submission.

Owners are set through ``support.owners.submit_as`` only. ``nobody`` is the owner with an
account everywhere; owner mode needs the runner (so these tests) to be root.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pwd
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import Cluster, running_cluster
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


@needs_root
@contextlib.contextmanager
def owner_mode_cluster() -> Iterator[tuple[Path, Cluster]]:
    """A cluster whose data dir others can reach (as a home or /srv would be: not under
    pytest's private temp folder), with one runner that runs tasks as their owners."""
    outside = Path(tempfile.mkdtemp(prefix="hakuriver-traverse-"))
    try:
        outside.chmod(0o755)
        root = outside / "data"
        root.mkdir()
        with running_cluster(root, agents=()) as cluster:
            cluster.start_agent("n1", extra=OWNER_MODE)
            yield root, cluster
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_an_owners_task_reaches_the_shared_dir_inside_a_data_dir_it_cannot_list() -> None:
    # Given a data dir others can reach, the shared dir in it
    with owner_mode_cluster() as (root, cluster):
        shared_file = cluster.shared / "shared_data" / "input.txt"
        shared_file.write_text("shared words\n")
        shared_file.chmod(0o644)
        # Then the data dir lets others pass but not look: 0711, the log itself 0600
        assert stat.S_IMODE(root.stat().st_mode) == 0o711
        assert stat.S_IMODE(cluster.db_file.stat().st_mode) == 0o600
        # And a task run as nobody reads the shared file through it
        r = submit_as(cluster.http, "nobody", "cat", str(shared_file))
        assert r.status_code == 201, r.text
        [task_id] = r.json()["task_ids"]
        assert cluster.wait_state(task_id)["state"] == "completed", cluster.task(task_id)
        assert cluster.output(task_id) == b"shared words\n"
        # While listing the data dir itself is refused to it
        r = submit_as(cluster.http, "nobody", "ls", str(root))
        [listing] = r.json()["task_ids"]
        assert cluster.wait_state(listing)["state"] == "failed"


@needs_root
def test_an_owners_job_rank_runs_as_the_owner_and_writes_in_its_workdir() -> None:
    # Given an owner-mode runner and a job of nobody's with a workdir: its rank runs as
    # nobody, passes the barrier through its control folder, and can write in the copy
    # (the host gives it to the owner's account).
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("in.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"in\n"))
    text = (
        "resources: {image_id: NULL}\nworkdir: ./w\nsetup: id -un\n"
        "run: cat in.txt && echo out > out.txt && id -un\n"
    )
    with owner_mode_cluster() as (_, cluster):
        answer = cluster.http.post(
            "/api/jobs",
            data={"job": json.dumps({"yaml": text, "owner": "nobody"})},
            files={"workdir": ("w.tar.gz", gzip.compress(raw.getvalue()), "x/gzip")},
        )
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["job_id"]

        def ended() -> bool:
            return bool(cluster.http.get(f"/api/jobs/{job_id}").json()["phase"] == "ended")

        cluster.wait(ended, 30, "the job to end")
        job = cluster.http.get(f"/api/jobs/{job_id}").json()
        output = cluster.http.get(f"/api/jobs/{job_id}/logs").text
        assert job["status"] == "completed", (job, output)
        assert output == "nobody\nin\nnobody\n"
        written = cluster.shared / "jobs" / job_id / "workdir" / "out.txt"
        assert written.read_text() == "out\n" and written.stat().st_uid == NOBODY.pw_uid
