"""The reviewer page's session and CSRF handling, without a browser (both databases)."""

from __future__ import annotations

import re

from tests.conftest import new_dataset
from tests.review.test_review_api import ingest


def sign_in(api, role="reviewer"):
    c = api.client
    page = c.get("/review")
    assert page.status_code == 200 and "Sign in" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    pre = re.search(r'name="pre" value="([^"]+)"', page.text).group(1)
    return c.post("/review/session", data={"api_key": api.keys[role], "pre": pre},
                  headers={"Origin": "http://testserver"}, follow_redirects=False)


def test_sign_in_sets_a_sealed_http_only_cookie_and_csrf_guards_writes(api):
    ds = new_dataset(api)
    (eid,) = ingest(api, ds, 1)
    r = sign_in(api)
    assert r.status_code == 303 and r.headers["location"] == "/review"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and api.keys["reviewer"] not in cookie
    page = api.client.get(f"/review?dataset={ds['id']}")
    assert 'data-testid="who"' in page.text
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    nxt = api.client.get(f"/review/api/next?dataset={ds['id']}").json()
    assert nxt["item"]["example_id"] == eid and nxt["progress"]["pending"] == 1
    body = {"decision": "approve", "revision_id": nxt["item"]["revision_id"]}
    url = f"/review/api/examples/{eid}/decision"
    assert api.client.post(url, json=body).json()["error"]["code"] == "csrf"
    assert api.client.post(url, json=body, headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert api.client.post(url, json=body, headers={"X-CSRF-Token": token, "Origin": "https://evil.example"}
                           ).status_code == 403
    assert api.client.get(f"/v1/examples/{eid}", headers={"Authorization": f"Bearer {api.keys['auditor']}"}
                          ).json()["status"] == "pending_review"
    r = api.client.post(url, json=body, headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.json()["example"]["status"] == "approved"
    # The /v1 API never accepts the cookie: only the Authorization header.
    assert api.client.get(f"/v1/review/queue?dataset={ds['id']}").status_code == 401
    api.client.post("/review/session/delete", data={"csrf": token})
    assert api.client.get(f"/review/api/next?dataset={ds['id']}").status_code == 401


def test_sign_in_refuses_other_roles_forged_forms_and_tampered_cookies(api):
    assert sign_in(api, "curator").headers["location"] == "/review?error=role"
    r = api.client.post("/review/session", data={"api_key": api.keys["reviewer"], "pre": "forged"},
                        follow_redirects=False)
    assert r.headers["location"] == "/review?error=expired"
    api.client.cookies.set("pedigree_review", "AAAA" * 20, path="/review")
    assert api.client.get("/review/api/next?dataset=x").status_code == 401
