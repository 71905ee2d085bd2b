"""The OpenAPI document, made to say what the server does.

FastAPI's generated document is the starting point; this module adds what it cannot see:
- the bearer scheme, on every operation that needs a key (those whose dependencies authenticate, and
  the two hot review routes that authenticate by hand and say so with `BEARER`);
- the error answers every operation can give, all in the one `Error` shape: 400 where a JSON body is
  read, 401 where a key is needed, 403 where a role is checked, 404 where a path names something, 422
  where anything is parsed, and what a route declares itself with `errors(...)` (404 for what a query
  or body names, 409, 413);
- FastAPI's own 422 schema (`HTTPValidationError`, `{"detail": [...]}`) is gone: the server never
  sends it (app.main turns validation errors into `Error`).

`docs/openapi.json` is this document, committed (`pedigree openapi` writes it, `--check` compares); a
test fails when the served one differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import TypeAdapter

from app.core.auth import ROLES, current_actor
from app.core.schemas import Error

REF = "#/components/schemas/{model}"
SCHEME = "bearer"
# For a route that reads the key itself instead of through a dependency.
BEARER: dict[str, Any] = {"security": [{SCHEME: []}]}

DESCRIPTIONS = {
    400: "The body could not be parsed as its media type (not JSON, or not UTF-8)",
    401: "No key, a malformed key, or a revoked one (`Authorization: Bearer <key>`)",
    403: "The key's role may not do this",
    404: "What the request names (in its path, query or body) does not exist",
    409: "The request conflicts with the current state (code names it: name_taken, lease_expired, ...)",
    413: "The body is larger than the route accepts",
    422: "Validation failed; `details` names each field or line",
}
DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route's own error answers (the module docstring lists those added for all)."""
    return {s: {"model": Error, "description": DESCRIPTIONS[s]} for s in statuses}


def binary(*media_types: str, description: str) -> dict[str, Any]:
    """A `responses=` entry for a success body that is not JSON (an export, an artifact, a datasheet):
    its real media types, so a generated client reads bytes instead of trying to parse JSON. text/* are
    strings; the rest, JSON lines included (streamed, of any size), binary."""
    return {"description": description, "content": {
        m: {"schema": {"type": "string"} if m.startswith("text/") else {"type": "string", "format": "binary"}}
        for m in media_types}}


# Schemas of models that only documented request bodies name (routes that read their body raw).
_BODY_DEFS: dict[str, Any] = {}


def request_body(content: dict[str, Any], *, description: str) -> dict[str, Any]:
    """`openapi_extra=` for a route that reads its body itself: `content` maps each media type it accepts
    to a pydantic type (its schema goes into components) or to a JSON schema."""
    out: dict[str, Any] = {}
    for media, spec in content.items():
        if not isinstance(spec, dict):
            spec = TypeAdapter(spec).json_schema(ref_template=REF)
            _BODY_DEFS.update(spec.pop("$defs", {}))
        out[media] = {"schema": spec}
    return {"requestBody": {"required": True, "description": description, "content": out}}


def _calls(dep: Dependant) -> list[Any]:
    out = [dep.call]
    for d in dep.dependencies:
        out.extend(_calls(d))
    return out


def _parses_input(route: Any) -> bool:
    d = route.dependant

    def params(dep: Dependant) -> bool:
        return bool(dep.path_params or dep.query_params or dep.header_params or dep.cookie_params
                    or dep.body_params) or any(params(x) for x in dep.dependencies)

    return params(d) or route.body_field is not None


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}}


def build(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for name, schema in _BODY_DEFS.items():
        schemas.setdefault(name, schema)
    error_schema = Error.model_json_schema(ref_template=REF)
    schemas.update(error_schema.pop("$defs", {}))
    schemas["Error"] = error_schema
    components["securitySchemes"] = {SCHEME: {
        "type": "http", "scheme": "bearer",
        "description": "An API key (`pdg_...`), made with `pedigree keys create --role ROLE --name NAME` "
                       "or `POST /v1/keys`; the role decides what the key may do (docs/security.md)."}}
    everyone = frozenset(ROLES)
    # Routers included into routers are route contexts in FastAPI's own walk: the same walk here.
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        calls = _calls(route.dependant)
        checked = [c.roles for c in calls if hasattr(c, "roles")]
        for method in route.methods:
            op = doc["paths"][route.path_format][method.lower()]
            statuses: set[int] = set()
            if current_actor in calls or op.get("security"):
                op["security"] = [{SCHEME: []}]
                statuses.add(401)
            if any(frozenset(r) != everyone for r in checked):
                statuses.add(403)
            if route.dependant.path_params:
                statuses.add(404)
            if _parses_input(route):
                statuses.add(422)
            if route.body_field is not None:
                # FastAPI's own answer to a body it cannot decode, before validation (app.main maps it).
                statuses.add(400)
            responses = op.setdefault("responses", {})
            for status in sorted(statuses):
                # A route's own description is kept; FastAPI's 422 is replaced whole.
                said = responses.get(str(status), {}).get("description")
                responses[str(status)] = _error_response(
                    said if said and said != "Validation Error" else DESCRIPTIONS[status])
            for status, body in responses.items():
                # Every error answer, added here or declared by the route, is the one Error shape.
                if status[0] in "45" and "application/json" in body.get("content", {}):
                    body["content"]["application/json"]["schema"] = {"$ref": REF.format(model="Error")}
    return doc


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
