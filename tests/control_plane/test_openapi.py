"""The OpenAPI document (control_plane/openapi.py, ``GET /api/openapi.json``).

Every route the app registers is in it (or in ``NOT_IN_DOCUMENT``, with its reason),
every operation answers with a schema, the document holds together (each ``$ref``
resolves, each path parameter is declared, operation ids are unique, each operation's
access is its route's rule), and real answers of a running host decode with the types
the document was made from, with no field the type does not name.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support.cluster import Cluster, running_cluster

from control_plane.access import rule, rule_of
from control_plane.app import create_app
from control_plane.openapi import (
    NOT_IN_DOCUMENT,
    ErrorDoc,
    api,
    api_of,
    document,
    openapi_path,
    registered,
)
from control_plane.routes.identity import Whoami
from control_plane.settings import HostSettings

pytestmark = pytest.mark.timeout(90)

HOW_TO_ADD = (
    "add @api(summary, request=..., response=..., query=...) from control_plane/openapi.py"
    " next to the handler's @rule (docs/api.md, OpenAPI), or, for a route that is not the"
    " API, an entry with its reason in openapi.NOT_IN_DOCUMENT"
)
# Operations that answer without a body schema, by (method, OpenAPI path), and why. The
# websockets answer 101 and then speak their own frames (their x-websocket note says).
NO_ANSWER_SCHEMA: dict[tuple[str, str], str] = {}


def _app(data_dir: Path) -> Any:
    return create_app(HostSettings(data_dir=str(data_dir)), name=f"oa_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _app(tmp_path_factory.mktemp("openapi-app"))


@pytest.fixture(scope="module")
def doc(app: Any) -> dict[str, Any]:
    return document(app)


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def test_every_route_is_in_the_document(app: Any, doc: dict[str, Any]) -> None:
    documented = {(m, p) for m, p, _ in _operations(doc)}
    missing = sorted(
        f"{method} {path}"
        for method, path, _ in registered(app)
        if (method, path) not in NOT_IN_DOCUMENT and (method, openapi_path(path)) not in documented
    )
    assert not missing, f"routes missing from the OpenAPI document: {missing}; {HOW_TO_ADD}"
    # And nothing is documented that the app does not serve.
    served = {(m, openapi_path(p)) for m, p, _ in registered(app)}
    assert documented <= served, sorted(documented - served)
    # The excluded routes are real routes (a stale entry would hide a new one).
    assert set(NOT_IN_DOCUMENT) <= {(m, p) for m, p, _ in registered(app)}


def test_a_route_without_a_declaration_is_left_out_and_named(tmp_path: Path) -> None:
    """What the test above relies on: an undeclared route does not reach the document."""
    app = _app(tmp_path)
    route = next(r for r in app.router.routes if r.path == "api/whoami")
    handler = route.handler
    delattr(handler, "__hakuriver_api__")
    try:
        assert api_of(route.handler) is None
        assert "/api/whoami" not in document(app)["paths"]
    finally:
        api("Who the caller is", response=Whoami)(handler)


def test_every_answer_and_body_has_a_schema(doc: dict[str, Any]) -> None:
    without = []
    for method, path, operation in _operations(doc):
        if operation.get("x-websocket") or (method, path) in NO_ANSWER_SCHEMA:
            continue
        successes = [s for s in operation["responses"] if s.startswith("2")]
        assert len(successes) == 1, (method, path, successes)
        content = operation["responses"][successes[0]].get("content", {})
        schemas = [c.get("schema") for c in content.values()]
        if not schemas or any(not s for s in schemas):
            without.append(f"{method} {path}")
        for body in operation.get("requestBody", {}).get("content", {}).values():
            assert body.get("schema"), (method, path)
    assert not without, f"answers without a schema: {without}; {HOW_TO_ADD}"


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "$ref":
                yield inner
            else:
                yield from _refs(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _refs(inner)


def test_the_document_holds_together(app: Any, doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.1.0" and doc["info"]["title"] and doc["info"]["version"]
    for ref in set(_refs(doc)):
        assert ref.startswith("#/"), ref
        node: Any = doc
        for part in ref[2:].split("/"):
            assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
            node = node[part]
    ids = [op["operationId"] for _, _, op in _operations(doc)]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    schemes = set(doc["components"]["securitySchemes"])
    rules = {(m, openapi_path(p)): rule_of(r.handler) for m, p, r in registered(app)}
    for method, path, operation in _operations(doc):
        in_path = set(re.findall(r"\{([^}]+)\}", path))
        declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
        assert in_path == declared, (method, path, declared)
        names = [(p["in"], p["name"]) for p in operation["parameters"]]
        assert len(names) == len(set(names)), (method, path, names)
        assert operation["responses"]["default"] == {"$ref": "#/components/responses/Error"}
        assert operation["x-access"] == rules[(method, path)], (method, path)
        for requirement in operation["security"]:
            assert set(requirement) <= schemes, (method, path, requirement)
        # A public route asks for nothing; every other one for a credential.
        assert (operation["security"] == []) == (operation["x-access"] == "public")
    ws = doc["paths"]["/api/agents/ws"]["get"]
    assert ws["x-websocket"] is True and "101" in ws["responses"]
    error = doc["components"]["schemas"]["ErrorDoc"]
    assert set(error["required"]) == {"error", "message"}


# The original HakuRiver's routes (control_plane/routes/compat.py), by OpenAPI path.
ORIGINAL_PATHS = {
    ("POST", "/submit"),
    ("GET", "/status/{ident}"),
    ("POST", "/kill/{ident}"),
    ("POST", "/command/{ident}/{command}"),
    ("GET", "/tasks"),
    ("GET", "/nodes"),
    ("GET", "/health"),
    ("GET", "/task/{ident}/stdout"),
    ("GET", "/task/{ident}/stderr"),
    ("GET", "/vps/status"),
}


def test_the_original_api_is_marked_as_the_compatibility_layer(doc: dict[str, Any]) -> None:
    compat = {(m, p): op for m, p, op in _operations(doc) if "compat" in op["tags"]}
    assert set(compat) == ORIGINAL_PATHS
    for (method, path), operation in compat.items():
        assert operation["summary"].startswith("Original API: "), (method, path)
    tags = {t["name"]: t for t in doc["tags"]}
    assert "original HakuRiver's API" in tags["compat"]["description"]
    assert {t for _, _, op in _operations(doc) for t in op["tags"]} == set(tags)
    # The dashboard's page addresses say that a browser's navigation gets the page.
    for path in ("/tasks", "/nodes"):
        assert "browser's navigation" in doc["paths"][path]["get"]["description"], path
    for stream in ("stdout", "stderr"):
        answer = doc["paths"][f"/task/{{ident}}/{stream}"]["get"]["responses"]["200"]
        assert answer["content"] == {"text/plain; charset=utf-8": {"schema": {"type": "string"}}}
    submit = doc["paths"]["/submit"]["post"]
    body = submit["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/OriginalSubmit"}
    assert "202" in submit["responses"]
    health = doc["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]
    assert len(health["schema"]["anyOf"]) == 2  # the cluster's document, or [entry]


def test_a_type_written_in_two_declarations_is_one_schema(tmp_path: Path) -> None:
    """``list[T]`` in two ``@api`` is two equal objects: both operations get its schema."""
    app = _app(tmp_path)

    async def one(request: Any) -> None: ...

    async def two(request: Any) -> None: ...

    for handler, path in ((one, "/extra/one"), (two, "/extra/two")):
        rule("user")(api("extra", response=list[ErrorDoc])(handler))
        app.add_route(handler, path, name=f"extra_{handler.__name__}")
    paths = document(app)["paths"]
    answers = [paths[p]["get"]["responses"]["200"]["content"] for p in ("/extra/one", "/extra/two")]
    assert answers[0] == answers[1]
    assert answers[0]["application/json"]["schema"]["items"] == {
        "$ref": "#/components/schemas/ErrorDoc"
    }


# -- against a running host ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("openapi"), agents=()) as c:
        yield c


def test_users_read_the_served_document_and_anonymous_callers_do_not(
    cluster: Cluster, doc: dict[str, Any]
) -> None:
    with cluster.client_as(None) as anonymous:
        refused = anonymous.get("/api/openapi.json")
    assert refused.status_code == 401, refused.text
    with cluster.client_as(cluster.add_user("reader")) as reader:
        served = reader.get("/api/openapi.json")
    assert served.status_code == 200, served.text
    assert served.headers["content-type"].startswith("application/json")
    # The host's app is the one built here, so the two documents are the same.
    assert served.json() == msgspec.json.decode(msgspec.json.encode(doc))


def _check_answer(app: Any, method: str, path: str, status: int, body: bytes) -> None:
    """Decode ``body`` with the type the route declared; its top-level keys must all be
    fields of that type (an answer with a field the document does not name fails)."""
    route = next(r for m, p, r in registered(app) if m == method and openapi_path(p) == path)
    operation = api_of(route.handler)
    assert operation is not None and operation.status == status, (path, status)
    kind = operation.response
    decoded = msgspec.json.decode(body, type=kind)
    fields = {f.encode_name for f in msgspec.structs.fields(kind)}
    extra = set(msgspec.json.decode(body)) - fields
    assert not extra, f"{method} {path} answers fields its type does not name: {extra}"
    assert decoded is not None


def test_real_answers_decode_with_the_documented_types(cluster: Cluster, app: Any) -> None:
    http = cluster.http
    submitted = http.post(
        "/api/tasks", json={"command": "sleep", "args": ["60"], "container": "NULL"}
    )
    assert submitted.status_code == 201, submitted.text
    task_id = submitted.json()["task_ids"][0]
    token = http.post("/api/tokens", json={"name": "oa"})
    assert token.status_code == 201, token.text
    calls = [
        ("POST", "/api/tasks", submitted),
        ("POST", "/api/tokens", token),
        ("GET", "/api/health", http.get("/api/health")),
        ("GET", "/api/whoami", http.get("/api/whoami")),
        ("GET", "/api/summary", http.get("/api/summary")),
        ("GET", "/api/nodes", http.get("/api/nodes")),
        ("GET", "/api/tasks", http.get("/api/tasks")),
        ("GET", "/api/tasks/{ident}", http.get(f"/api/tasks/{task_id}")),
        ("GET", "/api/tokens", http.get("/api/tokens")),
        ("GET", "/api/users", http.get("/api/users")),
        ("GET", "/api/ssh", http.get("/api/ssh")),
        ("GET", "/api/jobs", http.get("/api/jobs")),
        ("GET", "/api/volumes", http.get("/api/volumes")),
        ("GET", "/api/state", http.get("/api/state")),
        ("POST", "/api/tasks/{ident}/kill", http.post(f"/api/tasks/{task_id}/kill")),
    ]
    for method, path, answer in calls:
        assert answer.status_code < 300, (path, answer.text)
        _check_answer(app, method, path, answer.status_code, answer.content)
    # A refusal answers the error model the document names as every route's default.
    refused = http.get("/api/tasks/999999")
    assert refused.status_code == 404
    error = msgspec.json.decode(refused.content, type=ErrorDoc)
    assert error.error == "not_found" and error.field == "task_id"
