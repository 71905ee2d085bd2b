"""The served OpenAPI document says what the server does: who needs a key, what a body is, what an error
looks like, and the committed copy (docs/openapi.json) is the served one."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def doc() -> dict:
    import os

    from app.core.config import reset_settings
    from app.main import create_app

    # Outside the embedded mode the document is served only when asked for.
    old = dict(os.environ)
    os.environ.update(PEDIGREE_DATABASE_URL="sqlite:///:memory:", PEDIGREE_API_DOCS="true")
    reset_settings()
    try:
        r = TestClient(create_app()).get("/openapi.json")
    finally:
        os.environ.clear()
        os.environ.update(old)
        reset_settings()
    assert r.status_code == 200, r.text
    return r.json()


def _ops(doc):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield method.upper(), path, op


def test_every_v1_operation_needs_the_bearer_key_and_declares_401(doc):
    assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"],
                                                              "type": "http", "scheme": "bearer"}
    for method, path, op in _ops(doc):
        if path.startswith("/v1/") or path == "/metrics":  # /metrics: the admin key (app/ops/router.py)
            assert op.get("security") == [{"bearer": []}], (method, path)
            assert "401" in op["responses"], (method, path)
        else:
            assert "security" not in op, (method, path)


def test_errors_are_the_one_error_shape_and_fastapis_422_is_gone(doc):
    assert "HTTPValidationError" not in json.dumps(doc)
    assert "ValidationError" not in doc["components"]["schemas"]
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    info = doc["components"]["schemas"]["ErrorInfo"]
    assert set(info["properties"]) == {"code", "message", "details"}
    seen = set()
    for method, path, op in _ops(doc):
        for status, resp in op["responses"].items():
            if status[0] in "45":
                seen.add(status)
                assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, \
                    (method, path, status)
    assert {"401", "403", "404", "409", "413", "422"} <= seen


def test_request_bodies_have_their_real_media_types(doc):
    imp = doc["paths"]["/v1/datasets/{dataset_ref}/examples:import"]["post"]["requestBody"]["content"]
    assert set(imp) == {"application/x-ndjson", "application/json"}
    create = doc["paths"]["/v1/datasets/{dataset_ref}/examples"]["post"]["requestBody"]["content"]
    assert set(create) == {"application/json"}
    one, many = create["application/json"]["schema"]["anyOf"][:4], create["application/json"]["schema"]["anyOf"][4]
    assert many["type"] == "array" and many["items"]["anyOf"] == one
    names = {r["$ref"].rsplit("/", 1)[1] for r in one}
    assert names == {"ChatExampleIn", "InstructionExampleIn", "CompletionExampleIn", "PreferenceExampleIn"}
    for name in names:
        assert name in doc["components"]["schemas"]


def _resolve(doc, schema):
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_every_success_answer_states_its_fields_or_its_media_type(doc):
    """No operation answers a bare `{}` or a free-form object: a JSON success body is a named model with
    properties; anything else is declared with its real media type (export, datasheet, artifact, metrics)."""
    untyped = []
    for method, path, op in _ops(doc):
        ok = {s: r for s, r in op["responses"].items() if s.startswith("2")}
        assert ok, (method, path)
        for status, resp in ok.items():
            content = resp.get("content", {})
            if not content:
                untyped.append(f"{method} {path} {status}: no content")
            for media, body in content.items():
                schema = body.get("schema", {})
                if media == "application/json":
                    target = _resolve(doc, schema)
                    if "$ref" not in schema or not target.get("properties"):
                        untyped.append(f"{method} {path} {status}: {schema}")
                elif media.endswith("+json"):
                    # JSON-LD in an outside vocabulary (Croissant): an object with its required keys named.
                    if schema.get("type") != "object" or not schema.get("required"):
                        untyped.append(f"{method} {path} {status} {media}: {schema}")
                elif schema.get("type") != "string":
                    untyped.append(f"{method} {path} {status} {media}: {schema}")
    assert not untyped, "\n".join(untyped)


def test_every_json_route_has_a_pydantic_response_model():
    from fastapi.routing import APIRoute, iter_route_contexts
    from pydantic import BaseModel
    from starlette.responses import JSONResponse

    from app.main import create_app

    missing = []
    for route in iter_route_contexts(create_app().routes):
        r = route.original_route
        if not isinstance(r, APIRoute) or not r.include_in_schema:
            continue
        cls = getattr(r.response_class, "value", r.response_class)
        if isinstance(cls, type) and (not issubclass(cls, JSONResponse) or cls.media_type != "application/json"):
            continue  # a stream, text or JSON-LD answer; the test above checks its media types
        if not (isinstance(r.response_model, type) and issubclass(r.response_model, BaseModel)):
            missing.append(f"{sorted(r.methods)} {route.path_format}: {r.response_model}")
    assert not missing, "\n".join(missing)


def test_real_media_types_for_what_is_not_json(doc):
    def media(path, method="get"):
        return set(doc["paths"][path][method]["responses"]["200"]["content"])

    assert media("/v1/snapshots/{snapshot_id}/export") == {"application/x-ndjson", "application/vnd.apache.parquet"}
    assert media("/v1/snapshots/{snapshot_id}/datasheet") == {"text/markdown", "text/html"}
    assert media("/v1/models/{name}/versions/{version}/artifact") == {"application/gzip"}


def test_component_names_and_operation_ids_are_unique(doc):
    ids = [op["operationId"] for _, _, op in _ops(doc)]
    assert len(ids) == len(set(ids))
    # FastAPI names two models of one name by module path; a clash shows as such a long name.
    assert not [n for n in doc["components"]["schemas"] if "__" in n]


def test_the_committed_document_is_the_served_one(doc):
    from app.core.openapi import DOC_PATH, render

    assert DOC_PATH.exists(), "docs/openapi.json is missing: run `pedigree openapi`"
    assert DOC_PATH.read_text(encoding="utf-8") == render(doc), \
        "docs/openapi.json differs from the served document: run `python -m app.cli openapi` and commit it"
