"""The attacks issue 13 was opened for, each tried for real and now refused.

A real host and a real agent on loopback; the attacker speaks plain HTTP and websockets,
as curl or a short script would: no token, a stolen or forged one, another user's token,
a fake agent. Each refusal is checked for what it answers and for what it did *not*
record; after each attack the log still verifies (``GET /api/audit``) and every event a
request caused names its actor.
"""

from __future__ import annotations

import contextlib
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from support.cluster import Cluster, running_cluster
from support.docker_images import BUSYBOX_IMAGE, engine_or_skip
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from events import link
from events.envelope import new_event
from events.types import NodeHeartbeat, TaskFinished

pytestmark = [pytest.mark.timeout(180), pytest.mark.xdist_group("attacks")]

# The kinds of event only a request makes: each must name who asked.
REQUEST_KINDS = (
    "task.submitted",
    "task.kill_requested",
    "task.pause_requested",
    "task.resume_requested",
    "user.created",
    "user.role_changed",
    "user.disabled",
    "token.issued",
    "token.revoked",
    "node.enrolled",
    "node.revoked",
    "ssh_key.added",
    "ssh_key.removed",
    "env.container_created",
    "env.container_started",
    "env.container_stopped",
    "env.container_deleted",
    "env.shell_opened",
    "env.shell_closed",
)


@dataclass
class Lab:
    """A running cluster with users bob and carol, and carol's task holding a secret."""

    cluster: Cluster
    tokens: dict[str, str]
    secret: str  # in carol's task's env, and printed to its output
    carol_task: str

    def as_(self, user: str | None) -> httpx.Client:
        """A client presenting ``user``'s token (None: no token at all)."""
        return self.cluster.client_as(self.tokens[user] if user else None)

    @property
    def admin(self) -> httpx.Client:
        return self.cluster.http

    def sql(self, statement: str) -> list[list[Any]]:
        answer = self.admin.post("/api/sql", json={"sql": statement})
        assert answer.status_code == 200, answer.text
        rows: list[list[Any]] = answer.json()["rows"]
        return rows

    def count(self, where: str) -> int:
        return int(self.sql(f"SELECT count(*) FROM events WHERE {where}")[0][0])

    def running_task(self, user: str, **fields: Any) -> str:
        """A task of ``user``'s that runs until killed, on the real agent n1."""
        body = {"command": "sleep", "args": ["600"], **_on_n1(), **fields}
        with self.as_(user) as client:
            answer = client.post("/api/tasks", json=body)
        assert answer.status_code == 201, answer.text
        [task_id] = answer.json()["task_ids"]
        self.cluster.wait_state(task_id, "running")
        return str(task_id)


def _on_n1() -> dict[str, Any]:
    # Fake agents come and go in this module: tasks go to the real agent only.
    return {"container": "NULL", "cores": 0, "targets": ["n1"]}


def token_id_of(token: str) -> str:
    return token.split("_", 2)[2].split(".", 1)[0]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("attacks")
    granted = root / "granted"
    extra = f'[auth]\nuser_mount_dirs = ["{granted}"]\n'
    # A slow heartbeat deadline: the fake agents below say hello and then do not beat.
    timing = {"heartbeat_interval": 1.0, "heartbeat_timeout": 10.0}
    with running_cluster(root, agents=("n1",), extra=extra, **timing) as cluster:
        assert cluster.admin_token is not None
        tokens = {"admin": cluster.admin_token}
        for user in ("bob", "carol"):
            tokens[user] = cluster.add_user(user)
        secret = f"carol-secret-{uuid.uuid4().hex}"
        lab = Lab(cluster=cluster, tokens=tokens, secret=secret, carol_task="")
        lab.carol_task = lab.running_task(
            "carol",
            command="sh",
            args=["-c", 'echo "the key is $API_KEY"; exec sleep 600'],
            env={"API_KEY": secret},
        )
        cluster.wait(lambda: secret.encode() in cluster.output(lab.carol_task), 20, "output")
        yield lab


@pytest.fixture
def sound_log(lab: Lab) -> Iterator[None]:
    """After the test's attack: the log verifies, and every request's event names its actor."""
    yield
    audit = lab.admin.get("/api/audit")
    assert audit.status_code == 200 and audit.json()["ok"] is True, audit.text
    kinds = ", ".join(f"'{k}'" for k in REQUEST_KINDS)
    nobody = "payload->>'$.actor.user' IS NULL"
    anonymous = lab.sql(f"SELECT seq, kind FROM events WHERE kind IN ({kinds}) AND {nobody}")
    assert anonymous == [], f"events a request caused without an actor: {anonymous}"


def _ws_url(cluster: Cluster, path: str) -> str:
    return cluster.url.replace("http", "ws", 1) + path


def handshake(cluster: Cluster, path: str, token: str | None) -> int:
    """The status of a websocket handshake presenting ``token`` (101: it opened)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with connect(_ws_url(cluster, path), additional_headers=headers, open_timeout=15):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


@contextlib.contextmanager
def agent_link(cluster: Cluster, credential: str) -> Iterator[ClientConnection]:
    headers = {"Authorization": f"Bearer {credential}"}
    with connect(
        _ws_url(cluster, "/api/agents/ws"), additional_headers=headers, open_timeout=15
    ) as ws:
        yield ws


def hello(node: str, cores: int = 1) -> bytes:
    return link.encode(link.Hello(node=node, cores=cores, memory_bytes=1 << 30))


def batch(number: int, events: list[Any]) -> bytes:
    return link.encode(link.EventBatch(batch=number, body=msgspec.json.encode(events)))


def forged_token() -> str:
    """A well-formed user token nobody was ever given."""
    return f"hkr_u_{secrets.token_hex(8)}.{secrets.token_urlsafe(32)}"


# -- no token ---------------------------------------------------------------------------------


def test_a_root_command_without_a_token_is_refused_and_nothing_is_recorded(
    lab: Lab, sound_log: None
) -> None:
    marker = uuid.uuid4().hex
    proof = lab.cluster.shared / f"pwned-{marker}"
    body = {"command": "sh", "args": ["-c", f"id > {proof}"], "owner": "admin", **_on_n1()}
    headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {forged_token()}"},
        {"Authorization": f"Basic {lab.tokens['admin']}"},  # the right secret, wrong scheme
        {"X-HakuRiver-User": "admin"},  # the header the API trusted before authentication
    ]
    for sent in headers:
        with httpx.Client(base_url=lab.cluster.url, headers=sent, timeout=10) as attacker:
            for path, payload in (("/api/tasks", body), ("/api/batches", {"tasks": [body]})):
                answer = attacker.post(path, json=payload)
                assert answer.status_code == 401, (sent, path, answer.text)
                assert answer.json()["error"] == "unauthenticated"
                assert answer.json()["field"] == "Authorization"
    assert lab.count(f"kind = 'task.submitted' AND payload LIKE '%{marker}%'") == 0
    assert not proof.exists()


# -- another user's token -----------------------------------------------------------------------


def test_a_user_cannot_mount_the_host_or_run_privileged_containers(
    lab: Lab, sound_log: None
) -> None:
    marker = uuid.uuid4().hex
    shared = lab.cluster.shared

    def task(**fields: Any) -> dict[str, Any]:
        body = {"command": "cat", "args": [marker], "container": "authz-env", "cores": 0}
        return {**body, "targets": ["n1"], **fields}

    refused = [
        ("/api/tasks", task(mounts=["/:/host"]), "mounts[0]"),
        ("/api/tasks", task(mounts=["/var/run/docker.sock:/docker.sock"]), "mounts[0]"),
        ("/api/tasks", task(mounts=[f"{shared}/shared_data/../../..:/host"]), "mounts[0]"),
        # The rest of the shared directory: every task's output, the environment tarballs.
        ("/api/tasks", task(mounts=[f"{shared}:/everything"]), "mounts[0]"),
        ("/api/tasks", task(mounts=[f"{shared}/shared_data:/ok", "/etc:/etc"]), "mounts[1]"),
        ("/api/tasks", task(container="NULL", mounts=["/:/host"]), "mounts[0]"),
        ("/api/tasks", task(privileged=True), "privileged"),
        ("/api/batches", {"tasks": [task(), task(mounts=["/:/host"])]}, "tasks[1].mounts[0]"),
    ]
    with lab.as_("bob") as bob:
        for path, body, field in refused:
            answer = bob.post(path, json=body)
            assert answer.status_code == 403, (body, answer.text)
            assert answer.json()["error"] == "forbidden"
            assert answer.json()["field"] == field, answer.text
            assert "admin" in answer.json()["message"]
        assert lab.count(f"kind = 'task.submitted' AND payload LIKE '%{marker}%'") == 0
        # What users may mount: the shared data folder, and what [auth] grants.
        allowed = [f"{shared}/shared_data/{marker}:/data", f"{lab.cluster.root}/granted/x:/x:ro"]
        answer = bob.post("/api/tasks", json=task(mounts=allowed))
        assert answer.status_code == 201, answer.text
        [task_id] = answer.json()["task_ids"]
    lab.admin.post(f"/api/tasks/{task_id}/kill")
    assert lab.count(f"kind = 'task.submitted' AND payload LIKE '%{marker}%'") == 1


def test_another_users_output_and_secrets_stay_private(lab: Lab, sound_log: None) -> None:
    task = lab.carol_task
    with lab.as_("bob") as bob:
        for stream in ("stdout", "stderr"):
            answer = bob.get(f"/api/tasks/{task}/{stream}", params={"follow": 1})
            assert answer.status_code == 403, answer.text
            assert "carol" in answer.json()["message"]
        for path in (f"/api/tasks/{task}/history", f"/api/tasks/{task}/why"):
            assert bob.get(path).status_code == 403
        seen = bob.get(f"/api/tasks/{task}").json()
        assert seen["redacted"] is True and seen["env"] == {} and seen["args"] == []
        assert seen["owner"] == "carol" and seen["state"] == "running"  # metadata is shared
        listings = [
            bob.get("/api/tasks", params={"all_users": 1}),
            bob.get("/api/tasks", params={"owner": "carol"}),
            bob.get(f"/api/batches/{seen['batch_id']}"),
            bob.get("/api/nodes/n1"),
            bob.get("/api/reports/runtime", params={"by": "owner"}),
        ]
        for answer in listings:
            assert answer.status_code == 200, answer.text
            assert lab.secret not in answer.text
        [carols] = [t for t in listings[0].json()["tasks"] if t["task_id"] == task]
        assert carols["redacted"] is True and carols["env"] == {}
        # The history as a whole holds every spec: it is an admin's.
        sql = {"sql": "SELECT payload->'$.spec.env' FROM events WHERE kind = 'task.submitted'"}
        for refused in (
            bob.post("/api/sql", json=sql),
            bob.get("/api/events", params={"kind": "task.submitted"}),
            bob.get("/api/state"),
            bob.get("/api/export/events"),
        ):
            assert refused.status_code == 403, refused.text
            assert lab.secret not in refused.text
        with bob.stream("GET", "/api/events/stream") as stream:
            assert stream.status_code == 403
    # Carol herself, and an admin, do see them.
    with lab.as_("carol") as carol:
        assert lab.secret.encode() in carol.get(f"/api/tasks/{task}/stdout").content
        assert carol.get(f"/api/tasks/{task}").json()["env"] == {"API_KEY": lab.secret}
    assert lab.secret in lab.admin.post("/api/sql", json=sql).text


def test_a_forged_requested_by_does_not_kill_another_users_task(lab: Lab, sound_log: None) -> None:
    task = lab.running_task("carol")
    with lab.as_("bob") as bob:
        for verb in ("kill", "pause"):
            answer = bob.post(f"/api/tasks/{task}/{verb}", json={"requested_by": "carol"})
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"] == "forbidden"
    assert lab.cluster.task(task)["state"] == "running"
    assert lab.count(f"kind LIKE 'task.%_requested' AND payload->>'$.task_id' = '{task}'") == 0
    # Carol's own kill is hers, whatever her body claims.
    with lab.as_("carol") as carol:
        answer = carol.post(f"/api/tasks/{task}/kill", json={"requested_by": "bob"})
    assert answer.status_code == 202, answer.text
    assert lab.cluster.wait_state(task)["state"] == "killed"
    rows = lab.sql(
        "SELECT payload->>'$.requested_by', payload->>'$.actor.user', payload->>'$.actor.token'"
        f" FROM events WHERE kind = 'task.kill_requested' AND payload->>'$.task_id' = '{task}'"
    )
    assert rows == [["carol", "carol", token_id_of(lab.tokens["carol"])]]


def test_a_root_shell_in_an_environment_is_refused_at_the_handshake(
    lab: Lab, sound_log: None
) -> None:
    path = "/api/environments/base/shell?rows=24&cols=80"
    assert handshake(lab.cluster, path, None) == 401
    assert handshake(lab.cluster, path, "not-a-token") == 401
    assert handshake(lab.cluster, path, forged_token()) == 401
    assert handshake(lab.cluster, path, lab.tokens["bob"]) == 403
    assert lab.count("kind = 'env.shell_opened'") == 0


@pytest.mark.docker
def test_a_user_cannot_delete_stop_package_or_enter_an_environment(
    lab: Lab, sound_log: None
) -> None:
    client = engine_or_skip()
    name = f"t{uuid.uuid4().hex[:10]}"
    made = lab.admin.post(
        "/api/environments/containers", json={"image": BUSYBOX_IMAGE, "name": name}, timeout=120
    )
    assert made.status_code == 201, made.text
    try:
        with lab.as_("bob") as bob:
            for method, path in (
                ("DELETE", f"/api/environments/containers/{name}"),
                ("POST", f"/api/environments/containers/{name}/stop"),
                ("POST", f"/api/environments/{name}/tar"),
            ):
                answer = bob.request(method, path)
                assert answer.status_code == 403, (path, answer.text)
        shell = f"/api/environments/{name}/shell"
        assert handshake(lab.cluster, shell, lab.tokens["bob"]) == 403
        assert handshake(lab.cluster, shell, None) == 401
        with lab.as_("bob") as bob:
            listed = bob.get("/api/environments/containers").json()["containers"]
        assert [c for c in listed if c["name"] == name], listed  # still there, for everyone
        for kind in ("env.container_deleted", "env.container_stopped", "env.shell_opened"):
            assert lab.count(f"kind = '{kind}' AND payload->>'$.name' = '{name}'") == 0
    finally:
        deleted = lab.admin.delete(f"/api/environments/containers/{name}", timeout=120)
        assert deleted.status_code == 200, deleted.text
        for image in client.images.list(filters={"label": f"hakuriver.env={name}"}):
            with contextlib.suppress(Exception):
                client.images.remove(image.id, force=True)


# -- fake agents --------------------------------------------------------------------------------


def test_a_fake_agent_without_a_credential_never_says_hello(lab: Lab, sound_log: None) -> None:
    path = "/api/agents/ws"
    assert handshake(lab.cluster, path, None) == 401
    assert handshake(lab.cluster, path, forged_token()) == 401
    assert handshake(lab.cluster, path, "hkr_a_0123456789abcdef.short") == 401
    assert handshake(lab.cluster, path, lab.tokens["bob"]) == 403  # a user's is no agent's
    assert handshake(lab.cluster, path, lab.cluster.token(kind="join")) == 403
    # So a node with a million cores never registers, and no task (no secret) reaches it.
    assert lab.count("kind = 'node.registered' AND payload->>'$.cores' = '1000000'") == 0
    nodes = lab.admin.get("/api/nodes").json()["nodes"]
    assert "big" not in [n["name"] for n in nodes] and max(n["cores"] for n in nodes) < 1_000_000


def test_a_stolen_credential_cannot_speak_for_another_node(lab: Lab, sound_log: None) -> None:
    stolen = lab.cluster.enroll("fake-a")
    n1_before = lab.cluster.node("n1")
    assert n1_before is not None
    for claimed in ("n1", "big"):
        with agent_link(lab.cluster, stolen) as ws:
            # As many cores as a hello may claim: the credential is what is refused here
            # (tests/e2e/test_link_hardening.py refuses a machine that cannot be).
            ws.send(hello(claimed, cores=4096))
            with pytest.raises(ConnectionClosed) as closed:
                frame = ws.recv(timeout=15)
                pytest.fail(f"a hello for {claimed} was answered: {frame!r}")
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert "fake-a" in closed.value.rcvd.reason
    n1_after = lab.cluster.node("n1")
    assert n1_after is not None and n1_after["cores"] == n1_before["cores"]
    assert lab.count("kind = 'node.registered' AND payload->>'$.cores' = '4096'") == 0
    spoken = "kind IN ('node.registered', 'node.online', 'node.heartbeat')"
    assert lab.count(f"{spoken} AND stream IN ('node:big', 'node:fake-a')") == 0


def test_a_join_token_works_once_and_a_revoked_node_can_be_enrolled_again(
    lab: Lab, sound_log: None
) -> None:
    join = lab.cluster.token(kind="join", uses=1)
    with lab.cluster.client_as(join) as joiner:
        first = joiner.post("/api/join", json={"node": "fake-j"})
        assert first.status_code == 201, first.text
        again = joiner.post("/api/join", json={"node": "fake-k"})
    assert again.status_code == 401 and "used up" in again.json()["message"], again.text
    assert lab.count("kind = 'node.enrolled' AND payload->>'$.node' = 'fake-k'") == 0
    credential = first.json()["token"]
    # A taken name cannot be enrolled twice, even with a fresh join token.
    with lab.cluster.client_as(lab.cluster.token(kind="join")) as joiner:
        taken = joiner.post("/api/join", json={"node": "fake-j"})
    assert taken.status_code == 409 and "revoke" in taken.json()["message"], taken.text
    # An admin revokes the node: its credential is refused from then on...
    assert lab.admin.post("/api/nodes/fake-j/revoke").status_code == 200
    assert handshake(lab.cluster, "/api/agents/ws", credential) == 401
    # ...and the rebuilt machine joins again under its name, with a new join token.
    rebuilt = lab.cluster.enroll("fake-j")
    with agent_link(lab.cluster, rebuilt) as ws:
        ws.send(hello("fake-j"))
        assert isinstance(link.decode_host_message(ws.recv(timeout=15)), link.Welcome)
    assert handshake(lab.cluster, "/api/agents/ws", credential) == 401
    actors = lab.sql(
        "SELECT payload->>'$.actor.token' FROM events"
        " WHERE kind = 'node.enrolled' AND payload->>'$.node' = 'fake-j' ORDER BY seq"
    )
    assert actors[0] == [token_id_of(join)] and len(actors) == 2


def test_a_forged_report_on_another_nodes_task_is_refused_whole(lab: Lab, sound_log: None) -> None:
    victim = lab.carol_task
    credential = lab.cluster.enroll("fake-b")
    beat = new_event(NodeHeartbeat(node="fake-b", cpu_percent=1.0), source="fake-b")
    finished = new_event(
        TaskFinished(task_id=victim, state="completed", exit_code=0, node="fake-b"),
        source="fake-b",
    )
    as_n1 = new_event(
        TaskFinished(task_id=victim, state="completed", exit_code=0, node="n1"), source="fake-b"
    )
    with agent_link(lab.cluster, credential) as ws:
        ws.send(hello("fake-b"))
        assert isinstance(link.decode_host_message(ws.recv(timeout=15)), link.Welcome)
        answers = []
        for number, events in ((1, [beat, finished]), (2, [beat, as_n1]), (3, [beat])):
            ws.send(batch(number, events))
            answers.append(link.decode_host_message(ws.recv(timeout=15)))
    refused, impersonating, good = answers
    assert isinstance(refused, link.Nack) and "events[1]" in refused.reason, refused
    assert "not placed on node fake-b" in refused.reason
    assert isinstance(impersonating, link.Nack) and "n1" in impersonating.reason, impersonating
    assert isinstance(good, link.Ack) and good.batch == 3, good  # the link itself still works
    assert lab.cluster.task(victim)["state"] == "running"
    assert lab.count(f"kind = 'task.finished' AND payload->>'$.task_id' = '{victim}'") == 0
    # Nothing of a refused batch is recorded: only the good batch's heartbeat.
    assert lab.count("kind = 'node.heartbeat' AND source = 'fake-b'") == 1


# -- the actors -----------------------------------------------------------------------------------


def test_every_request_names_its_actor_in_its_event(lab: Lab, sound_log: None) -> None:
    bob = token_id_of(lab.tokens["bob"])
    admin = token_id_of(lab.tokens["admin"])
    before = int(lab.sql("SELECT max(seq) FROM events")[0][0])
    with lab.as_("bob") as client:
        task = client.post("/api/tasks", json={"command": "true", **_on_n1()}).json()
        made = client.post("/api/tokens", json={"name": "laptop"}).json()
        assert client.post(f"/api/tokens/{made['id']}/revoke").status_code == 200
    assert lab.admin.post("/api/users", json={"name": "dave"}).status_code == 201
    assert lab.admin.post("/api/users/dave/disable").status_code == 200
    rows = lab.sql(
        "SELECT kind, payload->>'$.actor.user', payload->>'$.actor.token' FROM events"
        f" WHERE seq > {before} AND kind IN ('task.submitted', 'token.issued',"
        " 'token.revoked', 'user.created', 'user.disabled') ORDER BY seq"
    )
    assert rows == [
        ["task.submitted", "bob", bob],
        ["token.issued", "bob", bob],
        ["token.revoked", "bob", bob],
        ["user.created", "admin", admin],
        ["user.disabled", "admin", admin],
    ], task


# -- a flood of bad tokens -----------------------------------------------------------------------


def test_a_flood_of_bad_tokens_is_recorded_a_few_times_and_tells_nothing(tmp_path: Path) -> None:
    window = 4.0
    extra = f"[auth]\nfailure_window_s = {window}\n"
    with running_cluster(tmp_path, agents=(), extra=extra) as cluster:
        bob = cluster.add_user("bob")
        revoked = cluster.token("bob")
        assert cluster.http.post(f"/api/tokens/{token_id_of(revoked)}/revoke").status_code == 200
        cluster.add_user("eve")
        eve = cluster.token("eve")
        assert cluster.http.post("/api/users/eve/disable").status_code == 200

        def wrong_secret(token: str) -> str:
            return f"{token.split('.')[0]}.{secrets.token_urlsafe(32)}"

        # Whether a token id (and so a user) exists is not told to whoever lacks its secret.
        guesses = [
            forged_token(),  # an id nobody has
            wrong_secret(bob),  # bob's id
            wrong_secret(revoked),  # a revoked token's id
            wrong_secret(eve),  # a disabled user's token's id
            bob.replace("hkr_u_", "hkr_a_", 1),  # bob's secret, as another kind
        ]
        refusals = 0
        bodies = set()
        with httpx.Client(base_url=cluster.url, timeout=10) as attacker:

            def refused(token: str, path: str = "/api/whoami", spoof: str = "") -> httpx.Response:
                nonlocal refusals
                headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": spoof}
                answer = attacker.get(path, headers=headers)
                assert answer.status_code == 401, answer.text
                refusals += 1
                return answer

            for guess in guesses:
                bodies.add(refused(guess).text)
            assert len(bodies) == 1, bodies
            assert '"message":"invalid token"' in bodies.pop()
            # Whoever holds the secret is told what is wrong with it.
            assert "revoked" in refused(revoked).json()["message"]
            assert "disabled" in refused(eve).json()["message"]

            started = time.monotonic()
            paths = ("/api/whoami", "/api/tasks", "/api/events", "/api/nodes/n1")
            for i in range(300):
                # Each claiming another client address: the peer's is the one that counts.
                refused(guesses[i % len(guesses)], paths[i % len(paths)], f"10.0.{i // 250}.{i}")
            flood_s = time.monotonic() - started

            def failures() -> list[list[Any]]:
                answer = cluster.http.post(
                    "/api/sql",
                    json={
                        "sql": "SELECT payload->>'$.client_address',"
                        " (payload->>'$.count')::INTEGER FROM events"
                        " WHERE kind = 'auth.failed' ORDER BY seq"
                    },
                )
                assert answer.status_code == 200, answer.text
                rows: list[list[Any]] = answer.json()["rows"]
                return rows

            during = len(failures())
            assert 1 <= during <= 2 + flood_s // window, (during, flood_s)
            # The refusals not recorded are counted in the next window's one event.
            deadline = time.monotonic() + 3 * window
            while len(failures()) == during:
                assert time.monotonic() < deadline, "no auth.failed in the next window"
                refused(forged_token())
                time.sleep(0.2)  # a poll interval: the condition above is what is awaited
        recorded = failures()
        assert {address for address, _ in recorded} == {"127.0.0.1"}
        assert sum(count for _, count in recorded) == refusals
        assert len(recorded) <= 3 + flood_s // window
        audit = cluster.http.get("/api/audit").json()
        assert audit["ok"] is True, audit
