"""``GET /api/tasks`` pages, sorts and searches on the host (the dashboard's list): a real
host, tasks recorded through ``POST /api/batches`` (no agent: they stay queued)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.cluster import Cluster, running_cluster

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("tasklist"), agents=()) as c:
        # 25 of the admin's, named by parity; then 3 of quill's, one with a secret command.
        tasks = [
            {
                "command": "true",
                "container": "NULL",
                "name": f"{'even' if i % 2 == 0 else 'odd'}-{i}",
            }
            for i in range(25)
        ]
        assert c.http.post("/api/batches", json={"tasks": tasks}).status_code == 201
        with c.client_as(c.add_user("quill")) as quill:
            for command in ("secret-tool", "true", "true"):
                body = {"command": command, "container": "NULL"}
                assert quill.post("/api/tasks", json=body).status_code == 201
        yield c


def test_pages_walk_every_task_once_with_the_total(cluster: Cluster) -> None:
    seen: list[int] = []
    offset: int | None = 0
    while offset is not None:
        r = cluster.http.get(
            "/api/tasks", params={"limit": 10, "offset": offset, "sort": "name", "order": "asc"}
        )
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["total"] == 25 and doc["offset"] == offset
        seen += [t["number"] for t in doc["tasks"]]
        offset = doc["next_offset"]
    assert sorted(seen) == list(range(1, 26))
    names = [cluster.task(str(n))["name"] for n in seen[:3]]
    assert names == sorted(names)


def test_a_walk_passing_upto_back_sees_each_task_once_while_tasks_are_added(
    cluster: Cluster,
) -> None:
    body = {"command": "true", "container": "NULL"}
    with cluster.client_as(cluster.add_user("walker")) as walker:
        for _ in range(7):
            assert walker.post("/api/tasks", json=body).status_code == 201
        first = walker.get("/api/tasks", params={"limit": 3}).json()
        upto, seen = first["upto"], [t["number"] for t in first["tasks"]]
        offset = first["next_offset"]
        while offset is not None:
            # Three more submitted between each page: without the bound, the newest-first
            # pages would shift by three and repeat rows.
            for _ in range(3):
                assert walker.post("/api/tasks", json=body).status_code == 201
            page = walker.get(
                "/api/tasks", params={"limit": 3, "offset": offset, "upto": upto}
            ).json()
            assert page["upto"] == upto and page["total"] == 7
            seen += [t["number"] for t in page["tasks"]]
            offset = page["next_offset"]
        assert len(seen) == len(set(seen)) == 7 and all(n <= upto for n in seen)
        assert seen == sorted(seen, reverse=True)
        # A fresh first page shows the new ones.
        assert walker.get("/api/tasks", params={"limit": 3}).json()["total"] == 7 + 3 * 2


def test_name_and_text_search_and_all_users(cluster: Cluster) -> None:
    doc = cluster.http.get("/api/tasks", params={"name": "EVEN", "limit": 5}).json()
    assert doc["total"] == 13 and len(doc["tasks"]) == 5 and doc["next_offset"] == 5
    assert all(t["name"].startswith("even-") for t in doc["tasks"])
    everyone = cluster.http.get("/api/tasks", params={"all_users": 1, "q": "secret"}).json()
    assert [t["owner"] for t in everyone["tasks"]] == ["quill"]


def test_a_user_cannot_find_another_users_task_by_what_is_redacted(cluster: Cluster) -> None:
    with cluster.client_as(cluster.add_user("bea")) as bea:
        doc = bea.get("/api/tasks", params={"all_users": 1, "q": "secret-tool"}).json()
        assert doc["total"] == 0
        doc = bea.get("/api/tasks", params={"all_users": 1, "q": "quill"}).json()
        assert doc["total"] == 3 and all(t["redacted"] and t["command"] == "" for t in doc["tasks"])


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"sort": "colour"}, "sort"),
        ({"order": "up"}, "order"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"offset": "\u0663"}, "offset"),  # an Arabic-Indic 3: int() takes it, we do not
        ({"offset": "1_0"}, "offset"),
        ({"limit": " 5"}, "limit"),
        ({"upto": "x"}, "upto"),
        ({"upto": "-1"}, "upto"),
        ({"limit": "0"}, "limit"),
        ({"q": "x" * 201}, "q"),
        ({"name": "x" * 201}, "name"),
        ({"status": "sleeping"}, "status"),
    ],
)
def test_bad_arguments_are_refused_naming_them(
    cluster: Cluster, params: dict[str, str], field: str
) -> None:
    r = cluster.http.get("/api/tasks", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field
