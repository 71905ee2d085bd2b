from sqlalchemy import select

from app.core.db import session_scope
from app.models.auth import ApiKey


def test_every_endpoint_needs_a_key(api):
    for method, path in [("GET", "/v1/datasets"), ("POST", "/v1/datasets"), ("GET", "/v1/audit/verify"),
                         ("GET", "/v1/examples/00000000-0000-0000-0000-000000000000")]:
        r = api.client.request(method, path)
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["error"]["code"] == "unauthorized"
    r = api.client.get("/v1/datasets", headers={"Authorization": "Bearer pdg_nope_nope"})
    assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"
    r = api.client.get("/v1/datasets", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401


def test_wrong_role_is_403_with_the_error_shape(api):
    r = api.as_("reviewer").post("/v1/datasets", json={"name": "x", "format": "chat"})
    assert r.status_code == 403
    body = r.json()["error"]
    assert body["code"] == "forbidden" and body["details"]["role"] == "reviewer"
    assert api.as_("curator").get("/v1/audit/verify").status_code == 403
    assert api.as_("auditor").get("/v1/audit/verify").status_code == 200
    assert api.as_("curator").post("/v1/keys", json={"name": "k", "role": "admin"}).status_code == 403


def test_keys_are_hashed_shown_once_and_revocable(api):
    r = api.as_("admin").post("/v1/keys", json={"name": "ci", "role": "auditor"})
    assert r.status_code == 201
    key, key_id = r.json()["key"], r.json()["id"]
    with session_scope() as s:
        stored = [(k.key_sha256, k.prefix) for k in s.scalars(select(ApiKey))]
    assert all(key not in h and len(h) == 64 for h, _ in stored)
    listed = api.as_("admin").get("/v1/keys").json()["items"]
    assert all("key" not in k for k in listed)
    assert api.client.get("/v1/audit/verify", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert api.as_("admin").delete(f"/v1/keys/{key_id}").status_code == 200
    r = api.client.get("/v1/audit/verify", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_unknown_role_is_422_naming_the_field(api):
    r = api.as_("admin").post("/v1/keys", json={"name": "x", "role": "superuser"})
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "role"
