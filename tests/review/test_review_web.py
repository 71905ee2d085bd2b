"""The reviewer page's session and CSRF handling, without a browser (both databases)."""

from __future__ import annotations

import re

from tests.factories import ingest_for_review as ingest
from tests.factories import new_dataset


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


def test_sign_out_revokes_the_sealed_cookie_everywhere(api):
    """Sign-out used to delete only the browser's copy: the same sealed value, replayed from anywhere,
    stayed good for its 12 h lifetime."""
    import datetime as dt

    from sqlalchemy import text

    from app.core.db import session_scope
    from app.review import web

    ds = new_dataset(api)
    sign_in(api)
    stolen = api.client.cookies.get("pedigree_review")
    page = api.client.get(f"/review?dataset={ds['id']}")
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    assert api.client.get(f"/review/api/next?dataset={ds['id']}").status_code == 200
    # A second, independent session of the same key survives the first one's sign-out.
    api.client.cookies.clear()
    sign_in(api)
    other = api.client.cookies.get("pedigree_review")
    with session_scope() as s:  # an expired revocation is cleaned up by the next sign-out
        s.execute(text("INSERT INTO review_session_revocations (session_id, expires_at) VALUES ('old', :t)"),
                  {"t": dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)})

    api.client.cookies.clear()
    api.client.cookies.set("pedigree_review", stolen, path="/review")
    assert api.client.post("/review/session/delete", data={"csrf": token}, follow_redirects=False).status_code == 303
    for _ in range(2):  # a second sign-out of the same session (another tab) is harmless
        api.client.cookies.set("pedigree_review", stolen, path="/review")
        api.client.post("/review/session/delete", data={"csrf": token}, follow_redirects=False)

    api.client.cookies.set("pedigree_review", stolen, path="/review")  # the replay
    r = api.client.get(f"/review/api/next?dataset={ds['id']}")
    assert r.status_code == 401 and r.json()["error"]["code"] == "signed_out"
    assert "Sign in" in api.client.get("/review").text
    assert api.client.post(f"/review/api/examples/{ds['id']}/release",
                           headers={"X-CSRF-Token": token}).status_code == 401
    with session_scope() as s:
        rows = s.execute(text("SELECT session_id, expires_at FROM review_session_revocations")).all()
    assert len(rows) == 1 and rows[0][0] != "old"
    assert web.unseal(stolen)["s"] == rows[0][0]

    api.client.cookies.set("pedigree_review", other, path="/review")
    assert api.client.get(f"/review/api/next?dataset={ds['id']}").status_code == 200
    # A cookie sealed before sessions had ids cannot be revoked, so it is not accepted either.
    legacy = web.seal({"k": api.keys["reviewer"], "c": "x", "iat": int(dt.datetime.now(dt.UTC).timestamp())})
    api.client.cookies.set("pedigree_review", legacy, path="/review")
    assert api.client.get(f"/review/api/next?dataset={ds['id']}").status_code == 401


def test_the_dataset_list_shows_only_workspaces_where_the_person_reviews(api):
    from tests.factories import key_id

    admin = api.as_("admin")
    notes = new_dataset(api)  # the default workspace, where the reviewer key reviews
    bank = admin.post("/v1/workspaces", json={"name": "bank"}).json()
    calls = admin.post("/v1/datasets", json={"name": "calls", "format": "chat", "workspace": bank["id"]}).json()
    r = admin.post(f"/v1/workspaces/{bank['id']}/members",
                   json={"key_id": key_id(api.keys["reviewer"]), "role": "curator"})
    assert r.status_code == 201, r.text
    sign_in(api)
    page = api.client.get("/review")
    options = re.findall(r'<option value="([^"]+)"', page.text)
    assert options == [notes["id"]]  # not bank's `calls`, whose queue would answer 403
    assert api.client.get(f"/review/api/next?dataset={calls['id']}").status_code == 403

    # Made a reviewer in bank, the person sees its dataset at once.
    admin.delete(f"/v1/workspaces/{bank['id']}/members/{key_id(api.keys['reviewer'])}")
    r = admin.post(f"/v1/workspaces/{bank['id']}/members",
                   json={"key_id": key_id(api.keys["reviewer"]), "role": "reviewer"})
    assert r.status_code == 201, r.text
    options = re.findall(r'<option value="([^"]+)"', api.client.get("/review").text)
    assert sorted(options) == sorted([notes["id"], calls["id"]])
    assert api.client.get(f"/review/api/next?dataset={calls['id']}").status_code == 200
