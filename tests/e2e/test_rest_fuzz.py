"""A bounded fuzz of every REST route: whatever is sent, the host never answers 5xx.

The routes come from the real app's router (a new route is fuzzed without being listed
here); each is called against a real host on loopback, as an admin and as a plain user,
with hypothesis-made path parameters, query strings and bodies: bodies made from the
request types (``SubmitTask``, ``SubmitBatch``, the environment request, through their
JSON schemas) and mutated (wrong types, NUL and control characters, bytes that are not
UTF-8, truncated or deeply nested JSON, huge numbers). Every answer must be below 500
(503 only where the route needs the host's Docker engine, hidden from this host so the
fuzz creates no containers), and every 4xx must be the API's error document.

Bounded: a fixed number of examples per route and caller, derandomized (the same
requests every run), no example database. Issue 14, finding 9 (and its REST fuzz).
No agent is connected: nothing a fuzzed submission asks for ever runs.
"""

from __future__ import annotations

import collections
import inspect
import json
import re
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.cluster import Cluster
from support.thorough import examples

from control_plane.app import create_app
from control_plane.bootstrap import ADMIN_USER
from control_plane.requests import SubmitBatch, SubmitTask
from control_plane.routes.environments import CreateContainerRequest
from control_plane.settings import HostSettings

pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("rest-fuzz")]

EXAMPLES = examples(6, 50)  # per route and caller (tests/support/thorough.py)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
READ_AT_MOST = 64 << 10  # of an answer (streams never end: their status is what counts)

# -- the routes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # as Sanic registers it: /api/tasks/<ident:str>
    area: str  # its blueprint's module: tasks, history, identity, ... (a route class)
    module: str  # where its handler is (for the parameters it reads)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def app_routes() -> list[Route]:
    """Every HTTP route of the real app (websockets are the agent link's, fuzzed there)."""
    app = create_app(HostSettings(data_dir="/nonexistent"), name=f"fuzz_{uuid.uuid4().hex[:8]}")
    found = {
        Route(
            method,
            "/" + route.path,
            route.handler.__module__.rsplit(".", 1)[1],
            route.handler.__module__,
        )
        for route in app.router.routes
        if not route.extra.websocket
        for method in route.methods
    }
    return sorted(found, key=str)


ROUTES = app_routes()
AREAS = sorted({route.area for route in ROUTES})
_PARAM = re.compile(r"<([a-z_]+):([a-z]+)>")
# Routes that need the host's Docker engine: 503 is their answer while it is away.
ENGINE_ROUTES = re.compile(r"^/api/environments/")

# -- the world the requests are made in ---------------------------------------------------------


@dataclass
class World:
    cluster: Cluster
    clients: dict[str, httpx.Client]
    known: dict[str, list[str]]  # values path parameters draw from, besides random text
    seen: dict[str, collections.Counter[int]]  # route -> the statuses the fuzz got


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("restfuzz")
    cluster = Cluster(root, extra="[database]\nsql_timeout = 5\n")
    try:
        with pytest.MonkeyPatch.context() as patch:
            # No engine for this host: environment routes answer 503, and nothing the
            # fuzz sends can create a container.
            patch.setenv("DOCKER_HOST", f"unix://{root}/no-docker.sock")
            cluster.start_host()
        bob = cluster.add_user("bob")
        cluster.add_user("victim")
        clients = {
            "admin": cluster.client_as(cluster.admin_token),
            "user": cluster.client_as(bob),
        }
        tasks = []
        for who in ("admin", "user"):
            answer = clients[who].post("/api/tasks", json={"command": "true", "container": "NULL"})
            assert answer.status_code == 201, answer.text
            tasks.append(answer.json())
        for task in tasks:  # what an agent would have written for them
            task_id = task["task_ids"][0]
            for folder, suffix in (("task_outputs", "out"), ("task_errors", "err")):
                (cluster.shared / folder).mkdir(parents=True, exist_ok=True)
                (cluster.shared / folder / f"{task_id}.{suffix}").write_bytes(b"line\n" * 100)
        victim_token = cluster.token("victim")
        known = {
            "ident": [t["task_ids"][0] for t in tasks]
            + [str(t["numbers"][0]) for t in tasks]
            + [tasks[0]["task_ids"][0][:8]],
            "batch_id": [t["batch_id"] for t in tasks],
            "name": ["victim", "bob", "no-such", "n1", "queue-wait", "runtime", "events"],
            "token_id": [victim_token.split("_", 2)[2].split(".", 1)[0]],
            "key_id": ["k-none"],
            "action": ["start", "stop"],
            "seq": ["1", "2", "0", "-1", str(2**63), str(2**64)],
        }
        world = World(
            cluster=cluster,
            clients=clients,
            known=known,
            seen=collections.defaultdict(collections.Counter),
        )
        yield world
        for client in clients.values():
            client.close()
        # Bodies made from the request types get through to the decisions (201), and
        # the mutated ones are refused (400): the fuzz reaches past the decoding.
        if "POST /api/tasks" in world.seen:
            assert {201, 400} <= set(world.seen["POST /api/tasks"]), world.seen["POST /api/tasks"]
        # The admin's credential survived the fuzz (the fuzz never names it), and the log
        # is sound after it all.
        audit = cluster.http.get("/api/audit", timeout=60)
        assert audit.status_code == 200 and audit.json()["ok"], audit.text
    finally:
        cluster.close()


# -- what is sent -------------------------------------------------------------------------------

_ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "0",
        "-1",
        "1",
        "true",
        "null",
        "NULL",
        "nan",
        "inf",
        "1e309",
        str(2**63 - 1),
        str(2**63),
        str(2**64),
        "9" * 40,
        "-" + "9" * 40,
        "\x00",
        "a\x00b",
        "\x1b[31m",
        "\u202e",
        "\ud7ff",
        "../../etc/passwd",
        "%",
        "%00",
        "%ff",
        "2026-01-01T00:00:00Z",
        "now",
        "-1h",
        "1970-01-01",
        "9999-12-31T23:59:59Z",
        "x" * 300,
    ]
)
TEXT = st.one_of(_ODD_TEXT, st.text(max_size=40))
# Every query parameter some route reads (and one none does).
QUERY_NAMES = [
    "offset",
    "tail",
    "follow",
    "limit",
    "status",
    "node",
    "batch",
    "owner",
    "all_users",
    "order",
    "after",
    "kind",
    "exclude",
    "task",
    "source",
    "actor",
    "since",
    "until",
    "at",
    "tasks",
    "a",
    "b",
    "by",
    "keepalive",
    "user",
    "all",
    "term",
    "rows",
    "cols",
    "unknown_param",
]


def query_values(known: dict[str, list[str]]) -> st.SearchStrategy[str]:
    every = [value for values in known.values() for value in values]
    return st.one_of(TEXT, st.integers(-(2**70), 2**70).map(str), st.sampled_from(every))


def path_value(name: str, kind: str, known: dict[str, list[str]]) -> st.SearchStrategy[str]:
    """A path parameter: a known value, odd text, or any text (URL-quoted)."""
    if kind == "int":
        values = st.one_of(st.integers(-(2**70), 2**70).map(str), st.sampled_from(known["seq"]))
    else:
        own = known.get(name, [])
        values = st.one_of(st.sampled_from(own), TEXT) if own else TEXT
    return values.filter(bool).map(lambda v: urllib.parse.quote(v, safe=""))


def from_schema(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values a JSON schema (as msgspec writes them) accepts, kept small."""
    if "$ref" in schema:
        return st.deferred(lambda: from_schema(defs[schema["$ref"].rsplit("/", 1)[1]], defs))
    if "anyOf" in schema:
        return st.one_of([from_schema(option, defs) for option in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v, defs) for k, v in properties.items() if k in required},
            optional={k: from_schema(v, defs) for k, v in properties.items() if k not in required},
        )
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), defs), max_size=3)
    if kind == "string":
        return st.one_of(TEXT, st.sampled_from(["NULL", "busybox", "n1", "512M", "/a:/b"]))
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.one_of(
            st.integers(low, high if high is not None else 2**70),
            st.sampled_from([0, 1, -1, 2**63, 2**64]),
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return JSON


JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        TEXT,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=8,
)
# Every body key some route reads, for bodies that hit the fields.
BODY_KEYS = [
    "name",
    "role",
    "user",
    "kind",
    "ttl_s",
    "uses",
    "node",
    "public_key",
    "reason",
    "sql",
    "max_rows",
    "requested_by",
    "image",
    "tasks",
    "command",
    "args",
    "env",
    "cores",
    "memory",
    "targets",
    "container",
    "privileged",
    "mounts",
    "task_type",
    "owner",
    "ssh_public_key",
]


def _schema_of(kind: type) -> st.SearchStrategy[Any]:
    schema = msgspec.json.schema(kind)
    defs = schema.get("$defs", {})
    return from_schema(schema, defs)


def _near(kind: type, valid: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid request with one field replaced by anything its type's schema allows."""
    schema = msgspec.json.schema(kind)
    defs = schema.get("$defs", {})
    properties = defs[schema["$ref"].rsplit("/", 1)[1]]["properties"]
    changed = st.sampled_from(sorted(properties)).flatmap(
        lambda key: from_schema(properties[key], defs).map(lambda value: {key: value})
    )
    return st.one_of(st.just(valid), changed.map(lambda one: {**valid, **one}))


# A task that queues (no agent is connected): what a real client sends.
VALID_TASK = {"command": "true", "container": "NULL", "cores": 0}
NEAR_TASK = _near(SubmitTask, VALID_TASK)
SCHEMAS: dict[str, st.SearchStrategy[Any]] = {
    "/api/tasks": st.one_of(NEAR_TASK, _schema_of(SubmitTask)),
    "/api/batches": st.one_of(
        st.lists(NEAR_TASK, min_size=1, max_size=3).map(lambda tasks: {"tasks": tasks}),
        _schema_of(SubmitBatch),
    ),
    "/api/environments/containers": _schema_of(CreateContainerRequest),
}


def body_of(route: Route) -> st.SearchStrategy[bytes | None]:
    """A request body: one the route's type accepts, a near miss, or plain garbage."""
    documents = st.one_of(
        SCHEMAS.get(route.path, st.nothing()),
        st.dictionaries(st.sampled_from(BODY_KEYS), JSON, max_size=5),
        JSON,
    )
    encoded = documents.map(lambda d: json.dumps(d, ensure_ascii=False).encode())
    return st.one_of(
        st.none(),
        encoded,
        # Not UTF-8 inside a string, at the start, or cut short.
        encoded.map(lambda b: b.replace(b'"', b'"\xff\xfe', 1)),
        encoded.map(lambda b: b"\xc3" + b),
        encoded.map(lambda b: b[: len(b) // 2]),
        st.integers(1, 20_000).map(lambda n: b"[" * n + b"]" * n),
        st.binary(max_size=64),
    )


@st.composite
def requests_for(draw: st.DrawFn, route: Route, known: dict[str, list[str]]) -> dict[str, Any]:
    path = _PARAM.sub(lambda m: draw(path_value(m[1], m[2], known)), route.path)
    params = draw(st.dictionaries(st.sampled_from(QUERY_NAMES), query_values(known), max_size=4))
    body = draw(body_of(route)) if route.method in ("POST", "PUT", "PATCH", "DELETE") else None
    content_type = draw(st.sampled_from(["application/json", "text/plain", None]))
    headers = {"content-type": content_type} if content_type and body is not None else {}
    return {
        "method": route.method,
        "url": path,
        "params": params,
        "content": body,
        "headers": headers,
    }


def _protected(request: dict[str, Any]) -> bool:
    """Whether a request would take away the fuzz's own credentials (never sent)."""
    url = urllib.parse.unquote(request["url"])
    return f"/users/{ADMIN_USER}/" in url or "/users/bob/" in url


# -- the fuzz -----------------------------------------------------------------------------------


@pytest.mark.parametrize("caller", ["admin", "user"])
@pytest.mark.parametrize("area", AREAS)
def test_no_request_makes_a_server_error(world: World, area: str, caller: str) -> None:
    for route in (r for r in ROUTES if r.area == area):
        fuzz(world, world.clients[caller], route)
        # The host is still up and answers at once.
        assert world.cluster.http.get("/api/health", timeout=10).status_code == 200


def fuzz(world: World, client: httpx.Client, route: Route) -> None:
    """``EXAMPLES`` requests to ``route``, each answered below 500 with an error document."""

    @FUZZ
    @given(request=requests_for(route, world.known))
    def one(request: dict[str, Any]) -> None:
        if _protected(request):
            return
        with client.stream(**request, timeout=60) as answer:
            status, body = answer.status_code, b""
            # A success may be a stream that never ends (a follow): its status is enough.
            if status >= 400:
                for chunk in answer.iter_bytes():
                    body += chunk
                    if len(body) >= READ_AT_MOST:
                        break
        world.seen[str(route)][status] += 1
        shown = f"{route}: {request}\n-> {status} {body[:500]!r}"
        if status == 503 and ENGINE_ROUTES.match(route.path):
            assert json.loads(body)["error"] == "unavailable", shown
            return
        assert status < 500, shown
        if status >= 400:
            document = json.loads(body)
            assert isinstance(document.get("error"), str), shown
            assert isinstance(document.get("message"), str), shown
            assert isinstance(document.get("field", ""), str), shown

    one()


# -- the edges, swept ---------------------------------------------------------------------------

EDGES = ("-1", str(2**63 - 1), str(2**64), "9" * 40, "nan", "\x00")


def params_read_by(route: Route) -> list[str]:
    """The query parameters the route's module reads (its handler and the helpers beside it)."""
    source = inspect.getsource(sys.modules[route.module])
    return [name for name in QUERY_NAMES if f'"{name}"' in source]


@pytest.mark.parametrize("area", AREAS)
def test_every_parameter_at_its_edges_is_a_clear_answer(world: World, area: str) -> None:
    # What random text rarely hits: each parameter a route reads at each numeric edge
    # (offset=2**63-1 was a 500 from seek()), on a path that exists.
    client = world.clients["admin"]
    for route in (r for r in ROUTES if r.area == area and r.method == "GET"):
        path = _PARAM.sub(
            lambda m: "1" if m[2] == "int" else world.known.get(m[1], ["x"])[0], route.path
        )
        for name in params_read_by(route):
            for value in EDGES:
                with client.stream("GET", path, params={name: value}, timeout=60) as answer:
                    status = answer.status_code
                    body = answer.read() if status >= 400 else b""
                shown = f"GET {path}?{name}={value!r} -> {status} {body[:300]!r}"
                if status == 503 and ENGINE_ROUTES.match(route.path):
                    continue
                assert status < 500, shown
                if status >= 400:
                    assert isinstance(json.loads(body)["message"], str), shown


def test_every_route_is_fuzzed() -> None:
    # The list comes from the router: a route the fuzz cannot reach would be a bug here.
    assert len(ROUTES) >= 40
    assert {"/api/tasks", "/api/sql", "/api/tasks/<ident:str>/stdout"} <= {r.path for r in ROUTES}
    assert {"tasks", "history", "identity", "nodes", "environments"} <= set(AREAS)
