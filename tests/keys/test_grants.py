"""PII reveal grants (issue 21): purpose and expiry, four eyes, revocable, every reveal (and every
refused one) in the audit log naming its grant, listed for auditors."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select, update

from app.core.db import session_scope
from app.models.access import PiiGrant
from app.models.audit import AuditEvent
from tests.factories import NDJSON, key_id, new_dataset, reveal_grant


def _example(api, ds) -> str:
    line = b'{"instruction": "Mail jane.roe@example.com today.", "output": "ok"}\n'
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=line, headers=NDJSON)
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    return api.as_("curator").get(f"/v1/datasets/{ds['id']}/examples").json()["items"][0]["id"]


def _ask(api, ds, *, who="admin", for_="admin", hours=1.0, purpose="ticket 42: verify a scrub"):
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)).isoformat()
    return api.as_(who).post("/v1/pii-grants", json={"key_id": key_id(api.keys[for_]), "dataset": ds["id"],
                                                     "purpose": purpose, "expires_at": until})


def _events(action: str) -> list[AuditEvent]:
    with session_scope() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def test_a_reveal_needs_a_grant_approved_by_a_second_admin(api):
    ds = new_dataset(api)
    ex = _example(api, ds)
    r = _ask(api, ds)
    assert r.status_code == 201 and r.json()["status"] == "pending", r.text
    grant = r.json()
    # Pending: no reveal yet, and the refusal is audited.
    r = api.as_("admin").get(f"/v1/examples/{ex}/raw")
    assert r.status_code == 403 and r.json()["error"]["details"]["reason"] == "pending"
    refused = _events("pii.reveal_refused")
    assert refused[-1].payload["grant_id"] == grant["id"] and refused[-1].entity_id == ex
    # Four eyes: neither the requester nor the grantee approves.
    r = api.as_("admin").post(f"/v1/pii-grants/{grant['id']}/approve")
    assert r.status_code == 403 and r.json()["error"]["code"] == "four_eyes"
    other = _ask(api, ds, who="admin", for_="admin2").json()
    r = api.as_("admin2").post(f"/v1/pii-grants/{other['id']}/approve")
    assert r.status_code == 403 and r.json()["error"]["code"] == "four_eyes"
    r = api.as_("admin2").post(f"/v1/pii-grants/{grant['id']}/approve")
    assert r.status_code == 200 and r.json()["status"] == "approved" and r.json()["approved_by"].startswith("test-admin-2")
    r = api.as_("admin").get(f"/v1/examples/{ex}/raw")
    assert r.status_code == 200 and "jane.roe@example.com" in r.json()["content"]["instruction"]
    revealed = _events("example.raw_revealed")[-1]
    assert revealed.payload["grant_id"] == grant["id"] and revealed.payload["purpose"] == "ticket 42: verify a scrub"
    # The grant is for this key only: admin2 has none on this dataset.
    assert api.as_("admin2").get(f"/v1/examples/{ex}/raw").json()["error"]["details"]["reason"] == "pending"
    assert api.as_("admin").post(f"/v1/pii-grants/{grant['id']}/approve").status_code in (403, 409)
    assert api.as_("admin2").post(f"/v1/pii-grants/{grant['id']}/approve").status_code == 409
    assert api.as_("auditor").get("/v1/audit/verify").json()["ok"]


def test_expiry_and_revocation_stop_reveals_at_once(api):
    ds = new_dataset(api)
    ex = _example(api, ds)
    grant = reveal_grant(api, ds["id"])
    assert api.as_("admin").get(f"/v1/examples/{ex}/raw").status_code == 200
    with session_scope() as s:
        s.execute(update(PiiGrant).where(PiiGrant.id == uuid.UUID(grant["id"]))
                  .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    r = api.as_("admin").get(f"/v1/examples/{ex}/raw")
    assert r.status_code == 403 and r.json()["error"]["details"] == {"reason": "expired", "grant_id": grant["id"]}
    assert _events("pii.reveal_refused")[-1].payload["reason"] == "expired"
    assert api.as_("auditor").get(f"/v1/pii-grants/{grant['id']}").json()["status"] == "expired"

    second = reveal_grant(api, ds["id"])
    assert api.as_("admin").get(f"/v1/examples/{ex}/raw").status_code == 200
    r = api.as_("admin2").post(f"/v1/pii-grants/{second['id']}/revoke", json={"reason": "done"})
    assert r.status_code == 200 and r.json()["status"] == "revoked" and r.json()["revoke_reason"] == "done"
    r = api.as_("admin").get(f"/v1/examples/{ex}/raw")
    assert r.status_code == 403 and r.json()["error"]["details"]["reason"] == "revoked"
    assert api.as_("admin").post(f"/v1/pii-grants/{second['id']}/approve").status_code in (403, 409)
    assert api.as_("admin2").post(f"/v1/pii-grants/{second['id']}/approve").status_code == 409


def test_a_grant_covers_its_dataset_only_and_the_report_reveal_too(api):
    a, b = new_dataset(api), new_dataset(api)
    ex_b = _example(api, b)
    _example(api, a)
    reveal_grant(api, a["id"])
    assert api.as_("admin").get(f"/v1/examples/{ex_b}/raw").json()["error"]["details"]["reason"] == "none"
    assert api.as_("admin").get(f"/v1/datasets/{b['id']}/pii-report?reveal=true").status_code == 403
    r = api.as_("admin").get(f"/v1/datasets/{a['id']}/pii-report?reveal=true")
    assert r.status_code == 200
    assert any("value" in v for vs in r.json()["top_values"].values() for v in vs)


def test_grants_are_listed_for_auditors_and_refuse_bad_requests(api):
    ds = new_dataset(api)
    g = reveal_grant(api, ds["id"], purpose="DSAR 7: confirm the subject's records")
    pending = _ask(api, ds).json()
    listed = api.as_("auditor").get("/v1/pii-grants").json()["items"]
    assert {x["id"] for x in listed} == {g["id"], pending["id"]}
    assert [x["id"] for x in api.as_("auditor").get("/v1/pii-grants", params={"status": "approved"}).json()["items"]] \
        == [g["id"]]
    assert api.as_("auditor").get("/v1/pii-grants", params={"dataset": ds["name"]}).json()["items"]
    assert api.as_("curator").get("/v1/pii-grants").status_code == 403
    assert api.as_("auditor").post("/v1/pii-grants", json={}).status_code == 403
    # Only an admin key can hold a grant; no purpose, a past or far expiry: 422 naming the field.
    r = _ask(api, ds, for_="curator")
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "key_id"
    for hours, field in ((-1, "expires_at"), (24 * 31, "expires_at")):
        r = _ask(api, ds, hours=hours)
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == field
    r = _ask(api, ds, purpose="")
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "purpose"
