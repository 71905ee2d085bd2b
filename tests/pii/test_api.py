"""The pii stage and its API, end to end through the app, on SQLite and PostgreSQL."""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import select, text

from tests.factories import new_dataset, reveal_grant

CHAT = {
    "messages": [
        {"role": "user", "content": "Hi, I'm John Smith. Mail john.smith@acme.io or call 212-555-0187."},
        {"role": "assistant", "content": "Thanks John Smith, I wrote to john.smith@acme.io."},
    ],
    "provenance": {"source": "crm", "source_ref": "t-1"},
}


def _ingest(api, ds, items):
    body = b"\n".join(orjson.dumps(i) for i in items)
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples:import", content=body,
                                headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    return r.json()


def _only_example(api, ds):
    items = api.as_("reviewer").get(f"/v1/datasets/{ds['id']}/examples").json()["items"]
    assert len(items) == 1
    return items[0]


def test_scrubbed_revision_findings_and_vault(api, db):
    ds = new_dataset(api, "chat")
    _ingest(api, ds, [CHAT])
    ex = _only_example(api, ds)
    assert ex["status"] == "pending_review"
    rev = ex["revision"]
    assert rev["reason"] == "pii_scrub" and rev["seq"] == 1
    assert rev["content"]["messages"][0]["content"] == (
        "Hi, I'm <PERSON>. Mail <EMAIL_ADDRESS> or call <PHONE_NUMBER>.")
    body = orjson.dumps(ex).decode()
    assert "John" not in body and "acme.io" not in body and "555-0187" not in body
    types = sorted(f["entity_type"] for f in ex["pii_findings"])
    assert types == ["EMAIL_ADDRESS", "EMAIL_ADDRESS", "PERSON", "PERSON", "PHONE_NUMBER"]
    f = ex["pii_findings"][0]
    assert {"field_path", "start", "end", "scrubbed_start", "scrubbed_end", "score", "recognizer", "operator",
            "engine", "model"} <= set(f)
    assert ex["pii"]["model"] == "en_core_web_md==3.8.0"

    # The raw text is nowhere in the database in clear: revision 0 keeps a marker, the vault a ciphertext.
    from app.core.db import get_engine

    with get_engine().connect() as conn:
        dump = " ".join(str(r) for r in conn.execute(text("SELECT content FROM example_revisions")))
        assert "John" not in dump and "_pii_vault" in dump
        blobs = [bytes(r[0]) for r in conn.execute(text("SELECT ciphertext FROM pii_vault"))]
        assert len(blobs) == 1 and b"John" not in blobs[0]


def test_raw_is_admin_only_and_audited(api, db):
    ds = new_dataset(api, "chat")
    _ingest(api, ds, [CHAT])
    ex = _only_example(api, ds)
    for role in ("reviewer", "curator", "auditor", "trainer"):
        assert api.as_(role).get(f"/v1/examples/{ex['id']}/raw").status_code == 403
    r = api.as_("admin").get(f"/v1/examples/{ex['id']}/raw")
    assert r.status_code == 403 and r.json()["error"]["code"] == "no_grant"  # admin too, without a grant
    grant = reveal_grant(api, ds["id"])
    r = api.as_("admin").get(f"/v1/examples/{ex['id']}/raw")
    assert r.status_code == 200
    assert r.json()["content"]["messages"][0]["content"].startswith("Hi, I'm John Smith.")
    from app.core.db import session_scope
    from app.models.audit import AuditEvent

    with session_scope() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "example.raw_revealed")).all()
        assert len(events) == 1 and events[0].entity_id == ex["id"] and events[0].actor.startswith("test-admin")
        assert events[0].payload["grant_id"] == grant["id"]
    assert api.as_("auditor").get("/v1/audit/verify").json()["ok"]


def test_false_positive_restores_the_span_and_missed_span_is_scrubbed(api, db):
    # Public places scrubbed too, so "the Paris office" is a finding a reviewer can call a false positive.
    ds = new_dataset(api, "instruction", pii_policy={"public_entities": "scrub"})
    _ingest(api, ds, [{"instruction": "Ask Paris Hilton about the Paris office. Mail ann@example.org",
                       "output": "Contact ann@example.org; ticket QX-99812 is open."}])
    ex = _only_example(api, ds)
    findings = ex["pii_findings"]
    loc = next(f for f in findings if f["entity_type"] in ("LOCATION", "PERSON") and f["field_path"] == "instruction"
               and f["start"] > 20)
    r = api.as_("reviewer").post(f"/v1/examples/{ex['id']}/pii-findings/{loc['id']}/verdict",
                                 json={"verdict": "false_positive"})
    assert r.status_code == 200, r.text
    ex2 = api.as_("reviewer").get(f"/v1/examples/{ex['id']}").json()
    assert ex2["revision"]["reason"] == "pii_verdict"
    assert "the Paris office" in ex2["revision"]["content"]["instruction"]
    assert "ann@example.org" not in orjson.dumps(ex2["revision"]).decode()
    # Remaining findings moved with the text: each still points at its placeholder.
    for f in ex2["pii_findings"]:
        field = ex2["revision"]["content"][f["field_path"]]
        assert field[f["scrubbed_start"]:f["scrubbed_end"]].startswith("<")
    # Judging it again is a conflict; judging an old revision's finding too.
    again = api.as_("reviewer").post(f"/v1/examples/{ex['id']}/pii-findings/{loc['id']}/verdict",
                                     json={"verdict": "false_positive"})
    assert again.status_code == 409

    out = ex2["revision"]["content"]["output"]
    start = out.index("QX-99812")
    r = api.as_("reviewer").post(f"/v1/examples/{ex['id']}/pii-findings",
                                 json={"field_path": "output", "start": start, "end": start + 8,
                                       "entity_type": "TICKET_ID"})
    assert r.status_code == 201, r.text
    ex3 = api.as_("reviewer").get(f"/v1/examples/{ex['id']}").json()
    assert "QX-99812" not in orjson.dumps(ex3["revision"]["content"]).decode()
    assert "<TICKET_ID>" in ex3["revision"]["content"]["output"]
    for f in ex3["pii_findings"]:
        field = ex3["revision"]["content"][f["field_path"]]
        assert field[f["scrubbed_start"]:f["scrubbed_end"]].startswith("<"), f

    report = api.as_("curator").get(f"/v1/datasets/{ds['id']}/pii-report").json()
    assert report["false_positives"] == 1 and report["missed_added"] == 1
    assert report["examples_scrubbed"] == 1 and report["findings"] == len(findings)
    assert report["by_entity"]["TICKET_ID"]["added"] == 1
    assert api.as_("trainer").post(f"/v1/examples/{ex['id']}/pii-findings",
                                   json={"field_path": "output", "start": 0, "end": 3,
                                         "entity_type": "X_ID"}).status_code == 403


def test_policy_through_the_dataset_api(api, db):
    bad = api.as_("curator").post("/v1/datasets", json={"name": "bad-policy", "format": "completion",
                                                        "pii_policy": {"entities": ["NOPE"]}})
    assert bad.status_code == 422
    ds = new_dataset(api, "completion", pii_policy={
        "operators": {"EMAIL_ADDRESS": {"type": "hash"}, "PERSON": {"type": "surrogate"}},
        "allow_list": ["support@pedigree.dev"],
        "custom_recognizers": [{"name": "cust", "entity_type": "CUSTOMER_ID",
                                "patterns": [{"regex": "\\bCUST-\\d{6}\\b", "score": 0.9}]}],
    })
    eff = api.as_("reviewer").get(f"/v1/datasets/{ds['id']}/pii-policy").json()
    assert "CUSTOMER_ID" in eff["entities"] and eff["score_threshold"] == 0.4
    _ingest(api, ds, [{"prompt": "CUST-123456 (Maria Garcia, maria@x.org) wrote to support@pedigree.dev",
                       "completion": "Maria Garcia will hear back from maria@x.org's account team."}])
    ex = _only_example(api, ds)
    c = ex["revision"]["content"]
    assert c["prompt"].startswith("<CUSTOMER_ID> (") and "support@pedigree.dev" in c["prompt"]
    assert "<EMAIL_ADDRESS:" in c["prompt"] and "Maria Garcia" not in c["prompt"]
    hashed = c["prompt"][c["prompt"].index("<EMAIL_ADDRESS:"):].split(">")[0]
    assert hashed in c["completion"]  # equal values hash equally
    fake = [f for f in ex["pii_findings"] if f["entity_type"] == "PERSON"]
    names = {c[f["field_path"]][f["scrubbed_start"]:f["scrubbed_end"]] for f in fake}
    assert len(names) == 1 and names != {"<PERSON>"}  # one consistent surrogate
    r = api.as_("curator").request("PUT", f"/v1/datasets/{ds['id']}/pii-policy", json={"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert api.as_("reviewer").request("PUT", f"/v1/datasets/{ds['id']}/pii-policy", json={}).status_code == 403
    assert api.as_("curator").request("PUT", f"/v1/datasets/{ds['id']}/pii-policy",
                                  json={"custom_recognizers": [{"name": "x", "entity_type": "X_ID",
                                                                "patterns": [{"regex": "("}]}]}).status_code == 422


def test_stage_is_idempotent(api, db):
    from app.core.db import session_scope
    from app.models.example import ExampleRevision
    from app.models.pii import PiiScrub
    from app.pii.service import scrub_handler

    ds = new_dataset(api, "chat")
    _ingest(api, ds, [CHAT])
    ex = _only_example(api, ds)
    import uuid

    with session_scope() as s:  # a redelivered batch that slipped past the runner's stage check
        scrub_handler(session=s, example_ids=[uuid.UUID(ex["id"])])
    with session_scope() as s:
        assert len(s.scalars(select(ExampleRevision)).all()) == 2
        assert len(s.scalars(select(PiiScrub)).all()) == 1


@pytest.mark.parametrize("fmt, item", [
    ("preference", {"prompt": "Who is ann@example.org?", "chosen": "ann@example.org is Ann",
                    "rejected": "No idea"}),
    ("instruction", {"instruction": "Say hello", "output": "Hello!"}),
])
def test_other_formats_and_clean_examples(api, db, fmt, item):
    ds = new_dataset(api, fmt)
    _ingest(api, ds, [item])
    ex = _only_example(api, ds)
    assert ex["status"] == "pending_review" and ex["pii"]["scrubbed"]
    if fmt == "instruction":  # nothing found: no new revision, nothing vaulted
        assert ex["revision"]["reason"] == "ingest" and ex["pii_findings"] == []
        reveal_grant(api, ds["id"])
        raw = api.as_("admin").get(f"/v1/examples/{ex['id']}/raw").json()
        assert raw["source"] == "revision" and raw["content"]["output"] == "Hello!"
    else:
        assert "ann@example.org" not in orjson.dumps(ex["revision"]["content"]).decode()
