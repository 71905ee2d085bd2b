"""Review workflow through the HTTP API, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from sqlalchemy import func, select, update

from app.core.db import session_scope
from app.models.audit import AuditEvent
from app.models.review import Review, ReviewLease
from tests.factories import get_example as example
from tests.factories import ingest_for_review as ingest
from tests.factories import new_dataset


def decide(api, role, eid, decision="approve", revision_id=None, **kw):
    rid = revision_id or example(api, eid)["revision"]["id"]
    return api.as_(role).post(f"/v1/examples/{eid}/reviews", json={"decision": decision, "revision_id": rid, **kw})


def review_count(eid=None):
    with session_scope() as s:
        q = select(func.count()).select_from(Review)
        if eid:
            q = q.where(Review.example_id == eid)
        return s.scalar(q)


def audit_actions():
    with session_scope() as s:
        return [a for (a,) in s.execute(select(AuditEvent.action).order_by(AuditEvent.seq))]


# --- policy ------------------------------------------------------------------------------------------------

def test_policy_is_validated_and_patch_merges(api):
    r = api.as_("curator").post("/v1/datasets", json={"name": "bad-policy", "format": "chat",
                                                      "review_policy": {"required_approvals": 0}})
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "review_policy.required_approvals"
    r = api.as_("curator").post("/v1/datasets", json={"name": "bad-policy", "format": "chat",
                                                      "review_policy": {"conflict_resolution": "coin_flip"}})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "review_policy.conflict_resolution"
    r = api.as_("curator").post("/v1/datasets", json={"name": "bad-policy", "format": "chat",
                                                      "review_policy": {"no_such_knob": 1}})
    assert r.status_code == 422
    ds = new_dataset(api, review_policy={"required_approvals": 2, "reason_codes": ["wrong", "style"]})
    assert ds["review_policy"] == {"required_approvals": 2, "reason_codes": ["wrong", "style"]}
    r = api.as_("curator").patch(f"/v1/datasets/{ds['id']}", json={"review_policy": {"four_eyes": False}})
    assert r.status_code == 200, r.text
    assert r.json()["review_policy"] == {"required_approvals": 2, "reason_codes": ["wrong", "style"], "four_eyes": False}
    r = api.as_("curator").patch(f"/v1/datasets/{ds['id']}", json={"review_policy": {"reason_codes": ["Bad Code"]}})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "review_policy.reason_codes"


# --- queue and leases --------------------------------------------------------------------------------------

def test_queue_hands_each_item_to_one_reviewer(api):
    ds = new_dataset(api)
    ids = ingest(api, ds, 3)
    a = api.as_("reviewer").get(f"/v1/review/queue?dataset={ds['id']}&limit=2").json()["items"]
    b = api.as_("reviewer2").get(f"/v1/review/queue?dataset={ds['id']}&limit=2").json()["items"]
    assert len(a) == 2 and len(b) == 1
    assert {i["example_id"] for i in a}.isdisjoint({i["example_id"] for i in b})
    assert {i["example_id"] for i in a + b} == set(ids)
    first = a[0]
    assert {"example_id", "revision_id", "lease_expires_at", "revision", "quality_flags"} <= set(first)
    assert first["revision"]["content"]["instruction"].startswith("Explain")
    # Asking again returns the caller's own leases (a reload does not lose the item).
    again = api.as_("reviewer").get(f"/v1/review/queue?dataset={ds['id']}&limit=2").json()["items"]
    assert [i["example_id"] for i in again] == [i["example_id"] for i in a]
    assert api.as_("reviewer2").get(f"/v1/review/queue?dataset={ds['id']}&limit=5").json()["items"][0][
        "example_id"] == b[0]["example_id"]
    # Releasing puts the item back for others; renewing one's own lease extends it.
    r = api.as_("reviewer").post(f"/v1/review/leases/{first['example_id']}/renew")
    assert r.status_code == 200 and r.json()["lease_expires_at"] >= first["lease_expires_at"]
    assert api.as_("reviewer2").post(f"/v1/review/leases/{first['example_id']}/renew").status_code == 409
    assert api.as_("reviewer").delete(f"/v1/review/leases/{first['example_id']}").json()["released"] is True
    got = api.as_("reviewer2").get(f"/v1/review/queue?dataset={ds['id']}&limit=5").json()["items"]
    assert first["example_id"] in {i["example_id"] for i in got}
    # A role that may not review gets 403.
    assert api.as_("auditor").get(f"/v1/review/queue?dataset={ds['id']}").status_code == 403


def test_queue_refuses_in_order_key_then_role_then_dataset(api):
    """The queue checks the key, the role and the dataset in one statement; the answers must be
    those of separate checks: a bad or revoked key is 401 whatever the dataset, a role that may
    not review is 403 even for a dataset that does not exist, and only then an unknown one is 404."""
    ds = new_dataset(api)
    ingest(api, ds, 1)
    missing = str(uuid.uuid4())

    def get(key: str, ref: str):
        return api.client.get(f"/v1/review/queue?dataset={ref}", headers={"Authorization": f"Bearer {key}"})

    forged = api.keys["reviewer"][:-4] + "AAAA"
    for key in ("not-a-key", forged, "pdg_000000000000_" + "x" * 43):
        for ref in (ds["id"], missing):
            r = get(key, ref)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", (key, ref, r.text)
    r = get(api.keys["auditor"], missing)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    for ref in (missing, "no-such-dataset"):
        r = get(api.keys["reviewer"], ref)
        assert r.status_code == 404 and r.json()["error"]["details"] == {"dataset": ref}
    # By name as well as by id; then the caller's own live lease comes back on the next call.
    (item,) = get(api.keys["reviewer"], ds["name"]).json()["items"]
    assert get(api.keys["reviewer"], ds["id"]).json()["items"][0]["example_id"] == item["example_id"]
    key_id = next(k["id"] for k in api.as_("admin").get("/v1/keys").json()["items"] if k["name"] == "test-reviewer")
    assert api.as_("admin").delete(f"/v1/keys/{key_id}").status_code == 200
    r = get(api.keys["reviewer"], ds["id"])
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_expired_and_foreign_leases_refuse_a_decision(api):
    ds = new_dataset(api)
    ingest(api, ds, 1)
    item = api.as_("reviewer").get(f"/v1/review/queue?dataset={ds['id']}").json()["items"][0]
    eid = item["example_id"]
    r = decide(api, "reviewer2", eid, revision_id=item["revision_id"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "leased"
    with session_scope() as s:
        s.execute(update(ReviewLease).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    r = decide(api, "reviewer", eid, revision_id=item["revision_id"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "lease_expired"
    assert review_count() == 0 and example(api, eid)["status"] == "pending_review"
    # The expired lease is free for the next reviewer, who gets it from the queue.
    again = api.as_("reviewer2").get(f"/v1/review/queue?dataset={ds['id']}").json()["items"]
    assert [i["example_id"] for i in again] == [eid]
    assert decide(api, "reviewer2", eid, revision_id=item["revision_id"]).status_code == 201


# --- decisions ---------------------------------------------------------------------------------------------

def test_two_approvals_then_approved_and_audited(api):
    ds = new_dataset(api, review_policy={"required_approvals": 2})
    (eid,) = ingest(api, ds, 1)
    r = decide(api, "reviewer", eid, comment="looks right")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["example"] == {"id": eid, "status": "pending_review", "revision_id": body["review"]["revision_id"],
                               "approvals": 1, "required_approvals": 2, "escalated": False}
    again = decide(api, "reviewer", eid)
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_decided"
    r = decide(api, "reviewer2", eid)
    assert r.status_code == 201 and r.json()["example"]["status"] == "approved"
    ex = example(api, eid)
    assert ex["status"] == "approved" and ex["review"]["approvals"] == 2
    assert [d["decision"] for d in ex["review"]["decisions"]] == ["approve", "approve"]
    late = decide(api, "admin", eid)
    assert late.status_code == 409
    assert late.json()["error"]["code"] == "not_pending" and late.json()["error"]["details"]["status"] == "approved"
    actions = audit_actions()
    assert actions.count("review.decided") == 2 and actions.count("example.status_changed") == 1
    assert api.as_("auditor").get("/v1/audit/verify").json()["ok"] is True


def test_reject_needs_a_known_reason_and_follows_the_policy(api):
    ds = new_dataset(api, review_policy={"reason_codes": ["factual_error", "tone"]})
    a, b = ingest(api, ds, 2)
    r = decide(api, "reviewer", a, "reject")
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "reason_code"
    r = decide(api, "reviewer", a, "reject", reason_code="formatting")
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_reason_code"
    assert review_count() == 0
    r = decide(api, "reviewer", a, "reject", reason_code="tone", comment="<b>rude</b>")
    assert r.status_code == 201 and r.json()["example"]["status"] == "rejected"
    api.as_("curator").patch(f"/v1/datasets/{ds['id']}", json={"review_policy": {"rejection": "changes_requested"}})
    r = decide(api, "reviewer", b, "reject", reason_code="factual_error")
    assert r.status_code == 201 and r.json()["example"]["status"] == "changes_requested"


def test_stale_revision_and_wrong_role_change_nothing(api):
    ds = new_dataset(api)
    (eid,) = ingest(api, ds, 1)
    ex = example(api, eid)
    r = decide(api, "reviewer", eid, revision_id="00000000-0000-7000-8000-000000000000")
    assert r.status_code == 409 and r.json()["error"]["code"] == "stale_revision"
    for role in ("curator", "auditor", "trainer"):
        assert decide(api, role, eid).status_code == 403
    assert review_count() == 0 and example(api, eid)["status"] == ex["status"] == "pending_review"
    assert api.as_("reviewer").post("/v1/examples/not-an-id/reviews",
                                    json={"decision": "approve", "revision_id": ex["revision"]["id"]}).status_code == 404


def test_four_eyes_refuses_own_items(api):
    ds = new_dataset(api)
    (mine,) = ingest(api, ds, 1, role="admin")
    r = decide(api, "admin", mine)
    assert r.status_code == 403 and r.json()["error"]["code"] == "four_eyes"
    # The queue does not offer it to its ingester either.
    assert api.as_("admin").get(f"/v1/review/queue?dataset={ds['id']}").json()["items"] == []
    # An edit makes the editor an author too.
    (eid,) = ingest(api, ds, 1)
    ex = example(api, eid)
    content = {**ex["revision"]["content"], "output": "A better, corrected answer that is complete."}
    assert api.as_("reviewer").post(f"/v1/examples/{eid}/revisions", json={"content": content}).status_code == 201
    r = decide(api, "reviewer", eid)
    assert r.status_code == 403 and r.json()["error"]["code"] == "four_eyes"
    assert decide(api, "reviewer2", eid).status_code == 201
    api.as_("curator").patch(f"/v1/datasets/{ds['id']}", json={"review_policy": {"four_eyes": False}})
    assert decide(api, "admin", mine).status_code == 201


def test_machine_keys_suggest_but_do_not_decide(api):
    ds = new_dataset(api)
    (eid,) = ingest(api, ds, 1)
    key = api.as_("admin").post("/v1/keys", json={"name": "llm-judge", "role": "reviewer", "is_human": False}).json()["key"]
    api.keys["judge"] = key
    r = decide(api, "judge", eid)
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_human"
    r = api.as_("judge").post(f"/v1/examples/{eid}/suggestions",
                              json={"model": "judge-7b", "label": "approve", "score": 0.91, "comment": "fine"})
    assert r.status_code == 201, r.text
    ex = example(api, eid)
    assert ex["suggestions"][0]["label"] == "approve" and ex["review"]["approvals"] == 0
    assert ex["status"] == "pending_review"


def test_conflicts_majority_and_escalation(api):
    ds = new_dataset(api, review_policy={"required_approvals": 2, "conflict_resolution": "escalate"})
    (eid,) = ingest(api, ds, 1)
    assert decide(api, "reviewer", eid).status_code == 201
    r = decide(api, "reviewer2", eid, "reject", reason_code="tone")
    assert r.status_code == 201 and r.json()["example"]["escalated"] is True
    assert example(api, eid)["review"]["escalated"] is True
    assert api.as_("reviewer").get(f"/v1/review/queue?dataset={ds['id']}").json()["items"] == []
    got = api.as_("admin").get(f"/v1/review/queue?dataset={ds['id']}&view=full").json()["items"]
    assert [i["example_id"] for i in got] == [eid] and got[0]["example"]["review"]["escalated"] is True
    r = decide(api, "admin", eid, "reject", revision_id=got[0]["revision_id"], reason_code="tone")
    assert r.status_code == 201 and r.json()["example"]["status"] == "rejected"
    assert "review.escalated" in audit_actions()

    ds = new_dataset(api, review_policy={"required_approvals": 2, "conflict_resolution": "majority"})
    (eid,) = ingest(api, ds, 1)
    decide(api, "reviewer", eid)
    assert decide(api, "reviewer2", eid, "reject", reason_code="tone").json()["example"]["status"] == "pending_review"
    assert decide(api, "admin", eid).json()["example"]["status"] == "approved"


def test_bulk_decisions_apply_per_item(api):
    ds = new_dataset(api)
    ids = ingest(api, ds, 3)
    items = [{"example_id": i, "revision_id": example(api, i)["revision"]["id"]} for i in ids]
    items[1]["revision_id"] = "00000000-0000-7000-8000-000000000000"
    r = api.as_("reviewer").post("/v1/reviews:bulk", json={"decision": "approve", "items": items, "atomic": True})
    assert r.status_code == 409 and review_count() == 0
    r = api.as_("reviewer").post("/v1/reviews:bulk", json={"decision": "approve", "items": items})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["decided"] == 2 and out["refused"] == 1
    assert out["items"][1]["error"]["code"] == "stale_revision"
    assert [example(api, i)["status"] for i in ids] == ["approved", "pending_review", "approved"]


# --- edits -------------------------------------------------------------------------------------------------

def test_edit_makes_a_revision_resets_approvals_and_reruns_the_pipeline(api):
    ds = new_dataset(api, review_policy={"required_approvals": 2})
    (eid,) = ingest(api, ds, 1)
    before = example(api, eid)
    assert decide(api, "reviewer2", eid).status_code == 201
    bad = api.as_("reviewer").post(f"/v1/examples/{eid}/revisions",
                                   json={"content": {**before["revision"]["content"], "output": "   "}})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "content.output"
    bad = api.as_("reviewer").post(f"/v1/examples/{eid}/revisions", json={"content": {"instruction": "x"}})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "content.output"
    stale = api.as_("reviewer").post(f"/v1/examples/{eid}/revisions", json={
        "content": {**before["revision"]["content"], "output": "New."},
        "base_revision_id": "00000000-0000-7000-8000-000000000000"})
    assert stale.status_code == 409
    assert example(api, eid)["revision"]["id"] == before["revision"]["id"]
    new = {**before["revision"]["content"], "output": "A corrected answer, with <script>alert(1)</script> kept as text."}
    r = api.as_("reviewer").post(f"/v1/examples/{eid}/revisions", json={"content": new, "comment": "fix"})
    assert r.status_code == 201, r.text
    rev = r.json()["revision"]
    assert rev["reason"] == "reviewer_edit" and rev["parent_id"] == before["revision"]["id"]
    after = example(api, eid)
    assert after["status"] == "pending_review" and after["stage"] is None  # the pipeline ran again
    assert after["review"]["approvals"] == 0 and after["quality"] is not None
    assert "<script>" in str(after["revision"]["content"])
    assert "example.revised" in audit_actions()
    # Reviewers may be barred from editing by the policy.
    api.as_("curator").patch(f"/v1/datasets/{ds['id']}", json={"review_policy": {"reviewers_may_edit": False}})
    r = api.as_("reviewer").post(f"/v1/examples/{eid}/revisions",
                                 json={"content": {**new, "output": "Another answer entirely."}})
    assert r.status_code == 403 and r.json()["error"]["code"] == "edits_disabled"


def test_edit_of_a_rejected_example_is_refused(api):
    ds = new_dataset(api)
    (eid,) = ingest(api, ds, 1)
    decide(api, "reviewer", eid, "reject", reason_code="tone")
    r = api.as_("curator").post(f"/v1/examples/{eid}/revisions",
                                json={"content": {"instruction": "A", "output": "B is the answer."}})
    assert r.status_code == 409 and r.json()["error"]["details"]["status"] == "rejected"


# --- stats -------------------------------------------------------------------------------------------------

def test_stats_with_agreement(api):
    ds = new_dataset(api, review_policy={"required_approvals": 2, "conflict_resolution": "majority"})
    ids = ingest(api, ds, 4)
    plan = [("approve", "approve"), ("approve", "reject"), ("reject", "reject"), ("approve", "approve")]
    for eid, (d1, d2) in zip(ids, plan, strict=True):
        for role, d in (("reviewer", d1), ("reviewer2", d2)):
            kw = {"reason_code": "tone"} if d == "reject" else {}
            assert decide(api, role, eid, d, **kw).status_code == 201
    r = api.as_("auditor").get(f"/v1/review/stats?dataset={ds['id']}")
    assert r.status_code == 200, r.text
    st = r.json()
    assert st["dataset"]["decisions"] == 8 and st["dataset"]["approved"] == 2 and st["dataset"]["rejected"] == 1
    assert st["dataset"]["pending"] == 1
    ag = st["agreement"]
    assert ag["items_with_several_reviews"] == 4 and ag["percent_agreement"] == 0.75
    assert ag["cohen_kappa_pairs"][0]["kappa"] == pytest.approx(0.5)
    assert ag["krippendorff_alpha"] is not None
    assert len(st["reviewers"]) == 2
    assert all(r["decisions"] == 4 for r in st["reviewers"])
    # The operator's view of the same figures: `pedigree review stats` (by name or id; --json is the API's).
    from typer.testing import CliRunner

    from app.cli import app as cli

    runner = CliRunner()
    r = runner.invoke(cli, ["review", "stats", ds["name"]], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "pending 1  approved 2  rejected 1" in r.output and "percent agreement 0.75" in r.output
    assert "test-reviewer-2" in r.output and "Cohen's kappa" in r.output
    r = runner.invoke(cli, ["review", "stats", ds["id"], "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["agreement"] == st["agreement"]
    assert runner.invoke(cli, ["review", "stats", "no-such-dataset"]).exit_code == 4
