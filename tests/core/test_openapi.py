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
