"""The API's OpenAPI 3.1 document, made from the routes' own declarations.

Each route handler declares what it takes and answers with ``@api(...)``, next to its
``@rule(...)`` (control_plane/access.py): a summary, the JSON body's type, the answer's
type (the msgspec Structs the handlers decode and encode with, or a ``shape(...)`` for
an answer the handler writes as a dict), its query parameters and its status.
``document(app)`` walks the app's router (every route of every blueprint, websockets
too) and writes the document; ``msgspec.json.schema_components`` turns the types into
JSON Schema 2020-12, which OpenAPI 3.1 uses as it is. The document is built once per
app, on its first request (``GET /api/openapi.json``), not at start-up: a host that
nobody asks for it pays nothing.

A route with no ``@api`` is left out of the document, and tests/control_plane/
test_openapi.py fails naming it; the dashboard's page and file routes are left out on
purpose (``NOT_IN_DOCUMENT``, they answer HTML and files, not the API).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from msgspec import Struct

from control_plane.access import rule_of
from control_plane.dashboard.sessions import COOKIE
from control_plane.errors import ERROR_CODE

API_ATTRIBUTE = "__hakuriver_api__"
JSON = "application/json"
REF = "#/components/schemas/{name}"
VERSION = "1"  # the API's version (routes are added, never renamed: docs/api.md)

# Routes that are not the API: the dashboard's page shell and its static files answer
# HTML, scripts and styles to a browser (docs/dashboard.md), not JSON to a client.
NOT_IN_DOCUMENT: dict[tuple[str, str], str] = {
    ("GET", "/"): "the dashboard's page shell (HTML)",
    ("GET", "/<page:[a-z]+>"): "the dashboard's page shell (HTML)",
    ("GET", "/<page:[a-z]+>/<ident:str>"): "the dashboard's page shell (HTML)",
    ("GET", "/static/<name:path>"): "the dashboard's files (scripts, styles, images)",
}

F = TypeVar("F", bound=Callable[..., object])

# What a tag (a route's blueprint) stands for, where its name does not say it: the
# document's top-level ``tags`` (tools group the operations by them).
TAG_DESCRIPTIONS: dict[str, str] = {
    "compat": "The original HakuRiver's API (0.3.x), served at the root for the scripts"
    " written against it: its request bodies and JSON shapes, behind our tokens"
    " (docs/api.md, Compatibility layer)",
}


@dataclass(frozen=True)
class Query:
    """A query parameter a route reads (``request.args``; ``query_int`` for integers)."""

    name: str
    type: Any = str
    description: str = ""
    required: bool = False
    repeated: bool = False  # given several times (``?kind=a&kind=b``)


@dataclass(frozen=True)
class Operation:
    """What one route takes and answers (``@api``)."""

    summary: str
    request: Any = None  # the JSON body's type (None: no body)
    response: Any = None  # the answer's type (a Struct, a ``shape``, ``str`` for text)
    status: int = 200
    content_type: str = JSON  # of the answer; anything but JSON is described as text
    request_content_type: str = JSON
    query: tuple[Query, ...] = ()
    description: str = ""
    extra_statuses: Mapping[int, str] = field(default_factory=dict)


def api(
    summary: str,
    *,
    request: Any = None,
    response: Any = None,
    status: int = 200,
    content_type: str = JSON,
    request_content_type: str = JSON,
    query: tuple[Query, ...] = (),
    description: str = "",
    extra_statuses: Mapping[int, str] | None = None,
) -> Callable[[F], F]:
    """Declare what a route takes and answers, for the OpenAPI document."""
    operation = Operation(
        summary=summary,
        request=request,
        response=response,
        status=status,
        content_type=content_type,
        request_content_type=request_content_type,
        query=query,
        description=description,
        extra_statuses=dict(extra_statuses or {}),
    )

    def mark(handler: F) -> F:
        setattr(handler, API_ATTRIBUTE, operation)
        return handler

    return mark


def api_of(handler: object) -> Operation | None:
    """The declaration of a route handler (websockets: inside Sanic's partial)."""
    found = getattr(handler, API_ATTRIBUTE, None)
    if found is None and isinstance(handler, functools.partial):
        for inner in handler.args[:1]:
            found = getattr(inner, API_ATTRIBUTE, None)
    return found


def flag(name: str, description: str) -> Query:
    """A yes/no query parameter: the routes read 1, true or yes as yes, anything else no."""
    return Query(name, bool, f"{description} (1, true or yes)")


def shape(name: str, /, **fields: Any) -> type[Struct]:
    """A Struct describing an answer a handler writes as a dict: ``shape("Revoked",
    id=str, revoked=bool)``. Only the document uses it (the handler's dict is the
    answer); tests decode real answers with it, so the two cannot drift apart."""
    return msgspec.defstruct(name, list(fields.items()), kw_only=True, module=__name__)


class ErrorDoc(Struct, kw_only=True, omit_defaults=True):
    """Every refusal's answer (control_plane/errors.py; app.py writes it)."""

    error: str
    message: str
    field: str | None = None


# -- the document ---------------------------------------------------------------------------

_PARAM = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)(?::([^>]+))?>")


def openapi_path(sanic_path: str) -> str:
    """``/api/tasks/<ident:str>`` → ``/api/tasks/{ident}``."""
    return _PARAM.sub(lambda m: "{" + m.group(1) + "}", sanic_path)


def path_parameters(sanic_path: str) -> list[dict[str, Any]]:
    """The path's parameters, typed as Sanic matches them."""
    params = []
    for found in _PARAM.finditer(sanic_path):
        name, label = found.group(1), found.group(2) or "str"
        schema: dict[str, Any] = {"type": "string"}
        if label == "int":
            schema = {"type": "integer"}
        elif label == "path":
            schema = {"type": "string", "description": "may contain slashes"}
        elif label not in ("str", "strorempty"):
            schema = {"type": "string", "pattern": f"^{label}$"}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return params


def registered(app: Any) -> list[tuple[str, str, Any]]:
    """Every (method, Sanic path, route) of the app; a websocket's method is GET."""
    found = []
    for route in app.router.routes:
        for method in sorted(route.methods):
            found.append((method, "/" + route.path.lstrip("/"), route))
    return found


def _security(access: str | None) -> list[dict[str, list[str]]]:
    if access == "public":
        return []
    if access in ("agent", "join"):
        return [{"bearer": []}]
    return [{"bearer": []}, {"session": [], "csrf": []}]


def document(app: Any) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s routes (those with ``@api``)."""
    operations: list[tuple[str, str, Any, Operation]] = []
    for method, path, route in registered(app):
        operation = api_of(route.handler)
        if operation is None or (method, path) in NOT_IN_DOCUMENT:
            continue
        operations.append((method, path, route, operation))
    types: list[Any] = [ErrorDoc]
    for _, _, _, operation in operations:
        for kind in (operation.request, operation.response):
            if kind is not None and operation is not None and kind not in types:
                types.append(kind)
    json_types = [t for t in types if t not in (str, bytes)]
    schemas, components = msgspec.json.schema_components(json_types, ref_template=REF)

    def schema(kind: Any, content_type: str = JSON) -> dict[str, Any]:
        if content_type != JSON or kind in (str, bytes):
            text: dict[str, Any] = {"type": "string"}
            if kind is bytes:
                text["format"] = "binary"
            return text
        # By equality, not identity: ``list[TaskOut]`` written in two declarations is
        # two objects, collected once above.
        found: dict[str, Any] = schemas[json_types.index(kind)]
        return found

    paths: dict[str, dict[str, Any]] = {}
    names: set[str] = set()
    for method, path, route, operation in operations:
        websocket = bool(route.extra.websocket)
        access = rule_of(route.handler)
        op_id = route.name.split(".", 1)[-1] if "." in route.name else route.name
        if op_id in names:
            op_id = f"{op_id}.{method.lower()}"
        names.add(op_id)
        params = path_parameters(path)
        for q in operation.query:
            q_schema = msgspec.json.schema(q.type)
            if q.repeated:
                q_schema = {"type": "array", "items": q_schema}
            param: dict[str, Any] = {"name": q.name, "in": "query", "schema": q_schema}
            if q.required:
                param["required"] = True
            if q.description:
                param["description"] = q.description
            if q.repeated:
                param["explode"] = True
            params.append(param)
        responses: dict[str, Any] = {}
        if websocket:
            responses["101"] = {"description": "switched to the websocket protocol"}
        else:
            answer: dict[str, Any] = {"description": operation.summary}
            if operation.response is not None:
                answer["content"] = {
                    operation.content_type: {
                        "schema": schema(operation.response, operation.content_type)
                    }
                }
            responses[str(operation.status)] = answer
        for status, what in operation.extra_statuses.items():
            responses[str(status)] = {"description": what}
        responses["default"] = {"$ref": "#/components/responses/Error"}
        entry: dict[str, Any] = {
            "operationId": op_id,
            "summary": operation.summary,
            "tags": [route.name.split(".")[1] if route.name.count(".") >= 2 else "api"],
            "parameters": params,
            "responses": responses,
            "security": _security(access),
            "x-access": access,
        }
        description = operation.description
        if websocket:
            entry["x-websocket"] = True
            description = ("A websocket (GET with Upgrade: websocket). " + description).strip()
        if description:
            entry["description"] = description
        if operation.request is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {
                    operation.request_content_type: {
                        "schema": schema(operation.request, operation.request_content_type)
                    }
                },
            }
        paths.setdefault(openapi_path(path), {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "HakuRiver control plane",
            "version": VERSION,
            "description": "The host's REST API (docs/api.md). Errors are "
            + "{error, message, field}; error codes: "
            + ", ".join(sorted(set(ERROR_CODE.values()) | {"method_not_allowed", "internal"})),
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": tag, "description": TAG_DESCRIPTIONS[tag]}
            if tag in TAG_DESCRIPTIONS
            else {"name": tag}
            for tag in sorted(
                {t for ops in paths.values() for op in ops.values() for t in op["tags"]}
            )
        ],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": components,
            "responses": {
                "Error": {
                    "description": "a refusal or a failure (docs/api.md, Errors)",
                    "content": {JSON: {"schema": schema(ErrorDoc)}},
                }
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token: Authorization: Bearer hkr_…",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": COOKIE,
                    "description": "a dashboard session's cookie (with its key, csrf)",
                },
                "csrf": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-CSRF-Token",
                    "description": "the dashboard session's key, sent with every request"
                    " that carries its cookie (csrf= on event streams and websockets)",
                },
            },
        },
    }


def cached_document(app: Any) -> bytes:
    """The app's document as JSON bytes, built on the first call."""
    found: bytes | None = getattr(app.ctx, "openapi_document", None)
    if found is None:
        found = msgspec.json.encode(document(app))
        app.ctx.openapi_document = found
    return found


__all__ = [
    "NOT_IN_DOCUMENT",
    "TAG_DESCRIPTIONS",
    "ErrorDoc",
    "Operation",
    "Query",
    "api",
    "api_of",
    "cached_document",
    "document",
    "flag",
    "openapi_path",
    "shape",
]
