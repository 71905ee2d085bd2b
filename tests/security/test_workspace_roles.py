"""Workspaces (issue 21): per-workspace roles, membership changes taking effect at once, datasets and
keys created into a workspace, audit events carrying the workspace, and the migration's `default`."""

from __future__ import annotations

import uuid

from tests.factories import key_id


def _key(api, role: str, workspace: str | None = None) -> tuple[str, str]:
    body = {"name": f"{role}-{workspace}", "role": role} | ({"workspace": workspace} if workspace else {})
    r = api.as_("admin").post("/v1/keys", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["key"]


def _as(api, key: str):
    return {"Authorization": f"Bearer {key}"}


def test_roles_are_per_workspace_and_memberships_act_at_once(api):
    admin = api.as_("admin")
    onc = admin.post("/v1/workspaces", json={"name": "oncology"})
    assert onc.status_code == 201 and onc.json()["name"] == "oncology"
    assert admin.post("/v1/workspaces", json={"name": "oncology"}).status_code == 409
    bank = admin.post("/v1/workspaces", json={"name": "bank"}).json()
    cur_id, cur = _key(api, "curator", "oncology")
    ds = api.client.post("/v1/datasets", json={"name": "notes", "format": "instruction", "workspace": "oncology"},
                         headers=_as(api, cur))
    assert ds.status_code == 201 and ds.json()["workspace_id"] == onc.json()["id"], ds.text
    # Not a member of bank: its name is not found, like a missing workspace.
    r = api.client.post("/v1/datasets", json={"name": "calls", "format": "chat", "workspace": "bank"},
                        headers=_as(api, cur))
    assert r.status_code == 404
    calls = api.as_("curator").post("/v1/datasets", json={"name": "calls", "format": "chat", "workspace": "bank"})
    assert calls.status_code == 404  # the default workspace's curator is not a member of bank either
    calls = admin.post("/v1/datasets", json={"name": "calls", "format": "chat", "workspace": bank["id"]}).json()
    assert api.client.get(f"/v1/datasets/{calls['id']}", headers=_as(api, cur)).status_code == 404
    assert [d["name"] for d in api.client.get("/v1/datasets", headers=_as(api, cur)).json()["items"]] == ["notes"]
    assert api.client.get("/v1/workspaces", headers=_as(api, cur)).json()["items"][0]["name"] == "oncology"

    # A reviewer role in bank: the curator key reads bank's dataset, but may not curate there (403: it
    # is a member, so the 403 confirms nothing it cannot see).
    r = admin.post(f"/v1/workspaces/{bank['id']}/members", json={"key_id": cur_id, "role": "reviewer"})
    assert r.status_code == 201 and r.json()["role"] == "reviewer"
    assert api.client.get(f"/v1/datasets/{calls['id']}", headers=_as(api, cur)).status_code == 200
    r = api.client.patch(f"/v1/datasets/{calls['id']}", json={"description": "x"}, headers=_as(api, cur))
    assert r.status_code == 403 and r.json()["error"]["details"]["role"] == "reviewer"
    r = api.client.get("/v1/review/queue", params={"dataset": calls["id"]}, headers=_as(api, cur))
    assert r.status_code == 200, r.text  # a reviewer in bank, though the key's own role is curator
    r = api.client.get("/v1/review/queue", params={"dataset": ds.json()["id"]}, headers=_as(api, cur))
    assert r.status_code == 403  # a curator in oncology does not review there
    # Removing the membership ends the access on the next request.
    r = admin.delete(f"/v1/workspaces/{bank['id']}/members/{cur_id}")
    assert r.status_code == 200 and r.json()["removed"] is True
    assert api.client.get(f"/v1/datasets/{calls['id']}", headers=_as(api, cur)).status_code == 404


def test_bad_memberships_are_refused(api):
    admin = api.as_("admin")
    ws = admin.post("/v1/workspaces", json={"name": "w"}).json()
    kid, _ = _key(api, "auditor", "w")
    assert admin.delete(f"/v1/keys/{kid}").status_code == 200
    r = admin.post(f"/v1/workspaces/{ws['id']}/members", json={"key_id": kid, "role": "auditor"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "key_id"  # a revoked key
    r = admin.post(f"/v1/workspaces/{ws['id']}/members", json={"key_id": key_id(api.keys["admin2"]), "role": "curator"})
    assert r.status_code == 422  # admin is global
    r = admin.post(f"/v1/workspaces/{ws['id']}/members", json={"key_id": kid, "role": "admin"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "role"
    assert admin.post("/v1/workspaces/nope/members", json={"key_id": kid, "role": "auditor"}).status_code == 404
    assert api.as_("curator").post("/v1/workspaces", json={"name": "x"}).status_code == 403


def test_audit_events_carry_the_workspace_and_filter_by_it(api):
    admin = api.as_("admin")
    ws = admin.post("/v1/workspaces", json={"name": "team-a"}).json()
    _, a_cur = _key(api, "curator", "team-a")
    _, a_aud = _key(api, "auditor", "team-a")
    ds = api.client.post("/v1/datasets", json={"name": "a-set", "format": "instruction", "workspace": "team-a"},
                         headers=_as(api, a_cur)).json()
    api.as_("curator").post("/v1/datasets", json={"name": "default-set", "format": "instruction"})
    r = api.as_("auditor").get("/v1/audit/events", params={"workspace": "team-a"})
    assert r.status_code == 404  # the default workspace's auditor is not a member of team-a
    events = admin.get("/v1/audit/events", params={"workspace": "team-a"}).json()["items"]
    # The two keys made into team-a and its dataset; the workspace's own creation is about no workspace's data.
    assert [e["action"] for e in events] == ["api_key.created", "api_key.created", "dataset.created"]
    assert events[-1]["entity_id"] == ds["id"] and {e["workspace_id"] for e in events} == {ws["id"]}
    # team-a's auditor sees team-a's events only: not the default workspace's, nor those about no workspace.
    mine = api.client.get("/v1/audit/events", headers=_as(api, a_aud)).json()["items"]
    assert {e["workspace_id"] for e in mine} == {ws["id"]}
    seen_by_default = api.as_("auditor").get("/v1/audit/events").json()["items"]
    assert ds["id"] not in {e["entity_id"] for e in seen_by_default}
    assert "workspace.created" in {e["action"] for e in seen_by_default}  # about no workspace: default's
    assert admin.get("/v1/audit/verify").json()["ok"]


def test_the_migration_puts_existing_data_into_default_with_todays_roles(tmp_path, monkeypatch):
    """A database at priv02 with keys and a dataset, upgraded: everything in `default`, every non-admin key
    a member with its role, admin none; the old keys keep working on the old dataset."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from app.core.config import reset_settings
    from app.core.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    monkeypatch.setenv("PEDIGREE_DATABASE_URL", url)
    reset_settings()
    command.upgrade(alembic_config(), "priv02")
    engine = create_engine(url)
    ids = {r: uuid.uuid4() for r in ("admin", "reviewer", "auditor")}
    ds_id = uuid.uuid4()
    with engine.begin() as conn:
        for role, i in ids.items():
            conn.execute(text("INSERT INTO api_keys (id, name, role, prefix, key_sha256, is_human, created_at) "
                              "VALUES (:id, :n, :r, :p, :h, 1, CURRENT_TIMESTAMP)"),
                         {"id": i.hex, "n": role, "r": role, "p": i.hex[:12], "h": "0" * 64})
        conn.execute(text("INSERT INTO datasets (id, name, format, description, review_policy, pii_policy, pii_profile, "
                          "dedup_policy, quality_rules, is_eval_set, governance_policy, documentation, created_at) "
                          "VALUES (:id, 'old', 'chat', '', '{}', '{}', 'default', '{}', '{}', 0, '{}', '{}', "
                          "CURRENT_TIMESTAMP)"), {"id": ds_id.hex})
    command.upgrade(alembic_config(), "head")
    with engine.connect() as conn:
        default = conn.execute(text("SELECT id FROM workspaces WHERE name = 'default'")).scalar_one()
        assert conn.execute(text("SELECT workspace_id FROM datasets")).scalar_one() == default
        members = dict(conn.execute(text("SELECT key_id, role FROM workspace_members WHERE workspace_id = :w"),
                                    {"w": default}).all())
    engine.dispose()
    assert members == {ids["reviewer"].hex: "reviewer", ids["auditor"].hex: "auditor"}


def test_review_decisions_are_audited_in_their_examples_workspace(api):
    """The review committer decides batches that may span workspaces and resolves the examples itself:
    each decision's events name the example's workspace. They named none, so they counted as
    `default`'s: its auditors read another team's decisions, the team's own auditors did not."""
    admin = api.as_("admin")
    ws = admin.post("/v1/workspaces", json={"name": "team-r"}).json()
    _, cur = _key(api, "curator", "team-r")
    _, rev = _key(api, "reviewer", "team-r")
    _, aud = _key(api, "auditor", "team-r")
    ds = api.client.post("/v1/datasets", json={"name": "r-set", "format": "instruction", "workspace": "team-r",
                                               "review_policy": {"required_approvals": 1}},
                         headers=_as(api, cur)).json()
    r = api.client.post(f"/v1/datasets/{ds['id']}/examples", headers=_as(api, cur), json=[
        {"instruction": "Explain the tides briefly.", "input": "", "output": "The moon's pull lifts the sea twice a day."}])
    eid = r.json()["items"][0]["id"]
    (item,) = api.client.get("/v1/review/queue", params={"dataset": ds["id"]}, headers=_as(api, rev)).json()["items"]
    r = api.client.post(f"/v1/examples/{eid}/reviews", headers=_as(api, rev),
                        json={"decision": "approve", "revision_id": item["revision_id"]})
    assert r.status_code == 201 and r.json()["status"] == "approved", r.text
    mine = api.client.get("/v1/audit/events", params={"workspace": "team-r"}, headers=_as(api, aud)).json()["items"]
    decided = {e["action"]: e for e in mine if e["entity_id"] == eid}
    assert decided["review.decided"]["workspace_id"] == ws["id"]
    assert decided["review.decided"]["actor"].startswith("reviewer-team-r#")
    assert decided["example.status_changed"]["payload"]["to"] == "approved"
    seen_by_default = api.as_("auditor").get("/v1/audit/events").json()["items"]
    assert not [e for e in seen_by_default if e["entity_id"] == eid and e["action"].startswith("review.")]
    assert admin.get("/v1/audit/verify").json()["ok"]
