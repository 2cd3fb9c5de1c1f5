"""The job and volume routes end to end: a real host and a runner on loopback.

Submit as JSON and as multipart with a workdir (the rank starts in its copy), hostile
workdir archives refused with nothing left behind, volumes, who may see and stop which
job, the combined logs streamed, and malformed requests answered 4xx naming the field.
Tests that send a job file need the parser (``control_plane.jobfile``): they are skipped
on a tree without it.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.cluster import Cluster, running_cluster
from support.waiting import wait_until

PROCESS = "resources: {image_id: NULL}\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path_factory.mktemp("jobs-rest"),
        agents=("n1", "n2"),
        extra="[jobs]\nmax_workdir_bytes = 65536\n",
    ) as started:
        yield started


@pytest.fixture(scope="module")
def users(cluster: Cluster) -> dict[str, httpx.Client]:
    return {name: cluster.client_as(cluster.add_user(name)) for name in ("alice", "bob")}


def archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(raw.getvalue())


def member(name: str, data: bytes | None = b"x", kind: bytes = tarfile.REGTYPE, **extra: Any):
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in extra.items():
        setattr(info, key, value)
    return info, data


def multipart(client: httpx.Client, job: dict[str, Any], workdir: bytes | None) -> httpx.Response:
    files = {"workdir": ("workdir.tar.gz", workdir, "application/gzip")} if workdir else None
    return client.post("/api/jobs", data={"job": json.dumps(job)}, files=files or {"x": ("", b"")})


def wait_job(cluster: Cluster, job_id: str, timeout: float = 30) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def ended() -> bool:
        seen.update(cluster.http.get(f"/api/jobs/{job_id}").json())
        return seen["phase"] == "ended"

    wait_until(ended, timeout)
    return seen


def jobs_dirs(cluster: Cluster) -> list[str]:
    root = cluster.shared / "jobs"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def refused(answer: httpx.Response, status: int, field: str) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["field"] == field, body
    return str(body["message"])


# -- malformed requests (no job file needed) ------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"", "body"),
        (b"{", "body"),
        (b"[]", "body"),
        (b'{"env": {}}', "yaml"),
        (b'{"yaml": 3}', "yaml"),
        (b'{"yaml": "run: x", "env": {"A": 1}}', "env[...]"),
        (b'{"yaml": "run: x", "surprise": 1}', "surprise"),
    ],
)
def test_a_malformed_submit_is_400_naming_the_field(
    cluster: Cluster, body: bytes, field: str
) -> None:
    answer = cluster.http.post(
        "/api/jobs", content=body, headers={"Content-Type": "application/json"}
    )
    refused(answer, 400, field)


def test_a_form_without_its_job_field_is_400(cluster: Cluster) -> None:
    answer = cluster.http.post(
        "/api/jobs", files={"workdir": ("w.tar.gz", archive(member("a")), "application/gzip")}
    )
    refused(answer, 400, "job")


def test_an_upload_over_the_limit_is_413_naming_workdir(cluster: Cluster) -> None:
    # The limit is 64 KiB unpacked; the route reads at most that and 2 MiB for the form.
    big = bytes(3 << 20)
    before = jobs_dirs(cluster)
    answer = cluster.http.post(
        "/api/jobs", data={"job": "{}"}, files={"workdir": ("w.tar.gz", big, "x/y")}
    )
    assert "65536" in refused(answer, 413, "workdir")
    assert jobs_dirs(cluster) == before
    assert cluster.http.get("/api/health").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/jobs/NOTANID/stop"),
        ("GET", "/api/jobs/abc/logs"),
        ("GET", "/api/jobs/12345678"),
    ],
)
def test_a_malformed_job_id_is_400_naming_it(cluster: Cluster, method: str, path: str) -> None:
    refused(cluster.http.request(method, path), 400, "job_id")


def test_an_unknown_job_id_is_404_naming_it(cluster: Cluster) -> None:
    refused(cluster.http.get("/api/jobs/zzzz9999"), 404, "job_id")
    refused(cluster.http.get("/api/jobs/zzzz9999/logs"), 404, "job_id")
    refused(cluster.http.post("/api/jobs/zzzz9999/stop"), 404, "job_id")


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"all_users": True}, "all_users", 400),
        ({}, "job_ids", 400),
        ({"all": True, "job_ids": ["zzzz9999"]}, "job_ids", 400),
        ({"job_ids": ["zzzz9999"]}, "job_ids[0]", 404),
        ({"job_ids": ["UPPER"]}, "job_ids[0]", 400),
        ({"job_ids": "zzzz9999"}, "job_ids", 400),
    ],
)
def test_stop_many_refuses_what_it_cannot_do(
    cluster: Cluster, body: dict[str, Any], field: str, status: int
) -> None:
    refused(cluster.http.post("/api/jobs/stop", json=body), status, field)


def test_every_users_jobs_are_for_admins(cluster: Cluster, users: dict[str, httpx.Client]) -> None:
    refused(users["alice"].get("/api/jobs", params={"all_users": 1}), 403, "all_users")
    refused(
        users["alice"].post("/api/jobs/stop", json={"all": True, "all_users": True}),
        403,
        "all_users",
    )
    assert users["alice"].post("/api/jobs/stop", json={"all": True}).status_code == 202
    assert cluster.http.get("/api/jobs", params={"all_users": 1}).status_code == 200


# -- volumes ----------------------------------------------------------------------------------


def test_volumes_are_made_listed_and_refused_twice(
    cluster: Cluster, users: dict[str, httpx.Client]
) -> None:
    made = users["alice"].post("/api/volumes", json={"name": "training-data"})
    assert made.status_code == 201, made.text
    path = Path(made.json()["path"])
    assert path == cluster.shared / "volumes" / "training-data" and path.is_dir()
    assert (path.stat().st_mode & 0o1777) == 0o1777  # every user's ranks may write there
    refused(users["bob"].post("/api/volumes", json={"name": "training-data"}), 409, "name")
    refused(users["bob"].post("/api/volumes", json={"name": "../x"}), 400, "name")
    refused(users["bob"].post("/api/volumes", json={}), 400, "name")
    listed = users["bob"].get("/api/volumes").json()["volumes"]
    [mine] = [v for v in listed if v["name"] == "training-data"]
    assert mine["created_by"] == "alice" and mine["created_at"]
    assert mine["path"] == str(path)


# -- jobs ---------------------------------------------------------------------------------------


def test_a_json_submit_runs_and_is_listed_newest_first(
    cluster: Cluster, users: dict[str, httpx.Client]
) -> None:
    alice = users["alice"]
    first = alice.post("/api/jobs", json={"yaml": PROCESS + "run: echo one"})
    assert first.status_code == 201, first.text
    second = alice.post(
        "/api/jobs",
        json={
            "yaml": PROCESS + "name: two\nrun: echo $WHO\nenvs: {WHO: null}",
            "env": {"WHO": "me"},
        },
    )
    assert second.status_code == 201, second.text
    body = second.json()
    assert body["name"] == "two" and body["num_nodes"] == 1
    assert [r["rank"] for r in body["ranks"]] == [0] and body["ranks"][0]["number"] > 0
    done = wait_job(cluster, body["job_id"])
    assert done["status"] == "completed", done
    assert done["ranks"][0]["state"] == "completed" and done["ranks"][0]["exit_code"] == 0
    assert alice.get(f"/api/jobs/{body['job_id']}/logs").text == "me\n"
    listed = alice.get("/api/jobs").json()
    ids = [j["job_id"] for j in listed["jobs"]]
    assert ids[:2] == [body["job_id"], first.json()["job_id"]]
    assert listed["total"] == len(listed["jobs"])
    # bob sees none of alice's jobs, may not read nor stop them
    assert all(j["owner"] == "bob" for j in users["bob"].get("/api/jobs").json()["jobs"])
    assert users["bob"].get(f"/api/jobs/{body['job_id']}").status_code == 403
    assert users["bob"].get(f"/api/jobs/{body['job_id']}/logs").status_code == 403
    assert users["bob"].post(f"/api/jobs/{body['job_id']}/stop").status_code == 403


def test_a_workdir_is_unpacked_and_the_rank_starts_in_it(
    cluster: Cluster, users: dict[str, httpx.Client]
) -> None:
    text = PROCESS + "workdir: ./project\nrun: pwd; cat data/hello.txt; sh run.sh"
    data = archive(
        member("data", None, tarfile.DIRTYPE, mode=0o755),
        member("data/hello.txt", b"hello from the workdir\n"),
        member("run.sh", b"echo script ran\n"),
    )
    answer = multipart(users["alice"], {"yaml": text}, data)
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["job_id"]
    workdir = cluster.shared / "jobs" / job_id / "workdir"
    assert (workdir / "data" / "hello.txt").read_bytes() == b"hello from the workdir\n"
    done = wait_job(cluster, job_id)
    assert done["status"] == "completed", done
    lines = users["alice"].get(f"/api/jobs/{job_id}/logs").text.splitlines()
    assert Path(lines[0]).resolve() == workdir.resolve()
    assert lines[1:] == ["hello from the workdir", "script ran"]


@pytest.mark.parametrize(
    ("members", "status"),
    [
        ((member("/etc/evil"),), 400),
        ((member("../evil"),), 400),
        ((member("l", None, tarfile.SYMTYPE, linkname="/etc/passwd"),), 400),
        ((member("a"), member("h", None, tarfile.LNKTYPE, linkname="a")), 400),
        ((member("d", None, tarfile.CHRTYPE, devmajor=1, devminor=3),), 400),
        ((member("zeros", bytes(200 << 10)),), 413),  # 200 KiB unpacked, 64 KiB allowed
        (tuple(member(f"f{i}", b"") for i in range(200)), 413),  # 200 entries = 100 KiB
    ],
)
def test_hostile_workdirs_are_refused_and_leave_nothing(
    cluster: Cluster, members: tuple[Any, ...], status: int
) -> None:
    before = jobs_dirs(cluster)
    total = cluster.http.get("/api/jobs", params={"all_users": 1}).json()["total"]
    answer = multipart(
        cluster.http, {"yaml": PROCESS + "workdir: w\nrun: echo hi"}, archive(*members)
    )
    refused(answer, status, "workdir")
    assert jobs_dirs(cluster) == before
    assert cluster.http.get("/api/jobs", params={"all_users": 1}).json()["total"] == total
    assert not Path("/etc/evil").exists()


def test_a_workdir_must_come_with_a_file_that_names_one_and_back(cluster: Cluster) -> None:
    before = jobs_dirs(cluster)  # other tests' jobs keep their copies
    no_part = cluster.http.post("/api/jobs", json={"yaml": PROCESS + "workdir: ~/x\nrun: echo hi"})
    assert "hakuriver jobs submit" in refused(no_part, 400, "workdir")
    extra = multipart(cluster.http, {"yaml": PROCESS + "run: echo hi"}, archive(member("a")))
    refused(extra, 400, "workdir")
    missing = cluster.http.post(
        "/api/jobs",
        json={"yaml": "resources: {image_id: busybox}\nvolumes: {/data: nope}\nrun: echo hi"},
    )
    assert "hakuriver volumes create nope" in refused(missing, 400, "volumes./data")
    assert jobs_dirs(cluster) == before


def test_stop_all_stops_only_the_callers_jobs(
    cluster: Cluster, users: dict[str, httpx.Client]
) -> None:
    sleeper = {"yaml": PROCESS + "run: exec sleep 120"}
    mine = users["alice"].post("/api/jobs", json=sleeper).json()["job_id"]
    theirs = users["bob"].post("/api/jobs", json=sleeper).json()["job_id"]
    stopped = users["alice"].post("/api/jobs/stop", json={"all": True})
    assert stopped.status_code == 202, stopped.text
    assert stopped.json()["stopped"] == [mine]
    assert wait_job(cluster, mine)["status"] == "stopped"
    assert cluster.http.get(f"/api/jobs/{theirs}").json()["phase"] != "ended"
    # the admin stops everyone's
    everyone = cluster.http.post("/api/jobs/stop", json={"all": True, "all_users": True})
    assert theirs in everyone.json()["stopped"]
    assert wait_job(cluster, theirs)["status"] == "stopped"


def test_followed_logs_are_prefixed_and_end_with_the_job(cluster: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    text = (
        PROCESS
        + "num_nodes: 2\n"
        + f"run: |\n  echo start $NODE_RANK\n  while [ ! -e '{gate}' ]; do sleep 0.02; done\n"
        + "  printf 'partial %s' $NODE_RANK\n"
    )
    answer = cluster.http.post("/api/jobs", json={"yaml": text})
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["job_id"]
    got: list[bytes] = []
    done = threading.Event()

    def follow() -> None:
        with cluster.http.stream(
            "GET", f"/api/jobs/{job_id}/logs", params={"follow": 1}, timeout=60
        ) as stream:
            for chunk in stream.iter_bytes():
                got.append(chunk)
        done.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()

    def seen() -> bool:
        text = b"".join(got)
        return b"node-0 | start 0\n" in text and b"node-1 | start 1\n" in text

    wait_until(seen, 30)
    assert not done.is_set()
    gate.touch()
    assert done.wait(30), "the stream ends once the job has ended"
    lines = b"".join(got).decode().splitlines()
    assert sorted(lines) == [
        "node-0 | partial 0",
        "node-0 | start 0",
        "node-1 | partial 1",
        "node-1 | start 1",
    ]
    assert wait_job(cluster, job_id)["status"] == "completed"


def records(answer: httpx.Response) -> list[dict[str, Any]]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in answer.text.splitlines()]


def test_ndjson_logs_carry_offsets_and_resume_exactly_from_them(cluster: Cluster) -> None:
    text = PROCESS + "num_nodes: 2\nrun: |\n  echo one $NODE_RANK\n  printf 'two\\r\\n'\n"
    answer = cluster.http.post("/api/jobs", json={"yaml": text})
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["job_id"]
    assert wait_job(cluster, job_id)["status"] == "completed"
    path = f"/api/jobs/{job_id}/logs"
    plain = cluster.http.get(path).content
    whole = records(cluster.http.get(path, params={"format": "ndjson"}))
    assert whole[0] == {"from": {"0": 0, "1": 0}} and whole[-1] == {"end": "all_read"}
    pieces = whole[1:-1]
    assert b"".join(base64.b64decode(p["data"]) for p in pieces) == plain
    sizes = {r: len(cluster.output(t)) for r, t in enumerate(answer_ranks(answer))}
    assert {p["rank"]: p["offset"] for p in pieces} == sizes  # each rank's last: its size
    # Resumed after rank 0's first line: the rest of rank 0, then all of rank 1.
    after = len(b"one 0\n")
    resumed = records(cluster.http.get(path, params={"format": "ndjson", "from": f"0:{after}"}))
    assert resumed[0] == {"from": {"0": after, "1": 0}}
    assert b"".join(base64.b64decode(p["data"]) for p in resumed[1:-1]) == plain.replace(
        b"node-0 | one 0\n", b""
    )
    # Text answers resume too; with one rank, offsets are plain file offsets.
    assert cluster.http.get(path, params={"rank": 1, "from": "1:6"}).content == b"two\r\n"
    for params, field in [
        ({"format": "xml"}, "format"),
        ({"from": "2:0"}, "from"),
        ({"from": "0:x"}, "from"),
        ({"rank": 1, "from": "0:3"}, "from"),
    ]:
        refused(cluster.http.get(path, params=params), 400, field)


def answer_ranks(answer: httpx.Response) -> list[str]:
    return [r["task_id"] for r in answer.json()["ranks"]]


def test_a_list_explains_queued_jobs_only_with_details(cluster: Cluster) -> None:
    # Three nodes on a two-node cluster: it waits.
    answer = cluster.http.post("/api/jobs", json={"yaml": PROCESS + "num_nodes: 3\nrun: 'true'"})
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["job_id"]
    try:

        def listed(**params: Any) -> dict[str, Any]:
            jobs = cluster.http.get("/api/jobs", params=params).json()["jobs"]
            return next(j for j in jobs if j["job_id"] == job_id)

        assert listed()["why"] == "" and listed()["status"] == "pending"
        assert "needs 3 nodes" in listed(details=1)["why"]
        assert "needs 3 nodes" in cluster.http.get(f"/api/jobs/{job_id}").json()["why"]
    finally:
        assert cluster.http.post(f"/api/jobs/{job_id}/stop").status_code == 202
