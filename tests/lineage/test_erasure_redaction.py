"""Erasure redacts the free text people wrote about the erased examples (review and pairwise comments,
machine suggestions' comments, edit comments), in the batch's own transaction, on both databases: the
records stay (decision, reviewer, reason code, time), the text becomes the marker, the request's report and
its batch audit event count what was redacted, and a batch that fails redacts nothing."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from app.core.db import session_scope
from app.models.audit import AuditEvent
from app.models.example import Example, ExampleRevision
from app.models.review import PairwiseJudgment, Review, ReviewSuggestion
from tests.factories import new_dataset

QUOTE = "Alice Quill of 12 Elm Road wrote this; her card 4111 1111 1111 1111 shows in the answer"


def _pairs():
    return [{"prompt": f"Question {i}: how do I reset my password?", "chosen": f"Open settings ({i}).",
             "rejected": f"I cannot help ({i}).",
             "provenance": {"source": "forum", "source_ref": f"p-{i}", "metadata": {"user_id": "u1" if i < 2 else f"u{i}"}}}
            for i in range(4)]


def _world(api):
    """Four preference examples (0 and 1 by subject u1), each edited with a comment by reviewer2, given a
    machine suggestion with a comment, and compared by reviewer with a comment that quotes the subject."""
    ds = new_dataset(api, "preference", review_policy={"required_approvals": 1})
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples", json=_pairs())
    assert r.status_code == 201, r.text
    ids = [it["id"] for it in r.json()["items"]]
    for i, eid in enumerate(ids):
        ex = api.as_("curator").get(f"/v1/examples/{eid}").json()
        r = api.as_("reviewer2").post(f"/v1/examples/{eid}/revisions", json={
            "content": {**ex["revision"]["content"], "chosen": f"Open settings, then security ({i})."},
            "comment": f"edit {i}: {QUOTE}", "base_revision_id": ex["revision"]["id"]})
        assert r.status_code == 201, r.text
        r = api.as_("curator").post(f"/v1/examples/{eid}/suggestions", json={
            "model": "judge-1", "label": "approve", "score": 0.9, "comment": f"suggestion {i}: {QUOTE}"})
        assert r.status_code == 201, r.text
    q = api.as_("reviewer").get("/v1/review/queue", params={"dataset": ds["id"], "limit": 50}).json()["items"]
    assert len(q) == 4
    for it in q:
        r = api.as_("reviewer").post(f"/v1/examples/{it['example_id']}/comparisons", json={
            "revision_id": it["revision_id"], "pick": "a", "reason_code": "more_helpful",
            "comment": f"compared {it['example_id']}: {QUOTE}"})
        assert r.status_code == 201, r.text
    return ds, ids


def _texts(ids: list[str]) -> dict[str, list[tuple]]:
    """Per table, (example, comment, and the columns that must not change) for the given examples."""
    eids = [uuid.UUID(i) for i in ids]
    with session_scope() as s:
        revs = dict(s.execute(select(ExampleRevision.id, ExampleRevision.example_id)
                              .where(ExampleRevision.example_id.in_(eids))).all())
        return {
            "reviews": sorted((str(r.example_id), r.comment, r.decision, r.reviewer, r.reason_code, r.created_at)
                              for r in s.scalars(select(Review).where(Review.example_id.in_(eids)))),
            "pairwise_judgments": sorted(
                (str(revs[j.revision_id]), j.comment, j.pick, j.preferred, j.reviewer, j.reason_code, j.created_at)
                for j in s.scalars(select(PairwiseJudgment).where(PairwiseJudgment.revision_id.in_(list(revs))))),
            "review_suggestions": sorted((str(x.example_id), x.comment, x.label, x.source, x.created_at)
                                         for x in s.scalars(select(ReviewSuggestion)
                                                            .where(ReviewSuggestion.example_id.in_(eids)))),
            "revisions": sorted((str(x.example_id), x.seq, x.comment, x.author, x.reason, x.content_sha256)
                                for x in s.scalars(select(ExampleRevision).where(ExampleRevision.example_id.in_(eids)))
                                if x.comment is not None),
        }


def _comment_at(table: str) -> int:
    return {"reviews": 1, "pairwise_judgments": 1, "review_suggestions": 1, "revisions": 2}[table]


def test_erasure_redacts_review_text_and_keeps_the_records(api):
    _ds, ids = _world(api)
    subject, others = ids[:2], ids[2:]
    before, before_others = _texts(subject), _texts(others)
    # Each table holds text quoting the subject (revisions also hold the pairwise swap's own comment).
    assert all(sum(QUOTE in row[_comment_at(t)] for row in rows) >= 2 for t, rows in before.items()), before

    r = api.as_("curator").post("/v1/erasure-requests", json={"selector": {"metadata": {"user_id": "u1"}},
                                                             "reason": "Art. 17 request #7"})
    assert r.status_code == 201, r.text
    done = r.json()
    marker = f"[redacted by erasure request {done['id']}]"
    after = _texts(subject)
    for table, rows in before.items():
        at = _comment_at(table)
        assert len(after[table]) == len(rows), table
        for old, new in zip(rows, after[table], strict=True):
            # Same record, same decision, reviewer, reason code and time; only the text is gone.
            assert new[at] == marker and new[:at] + new[at + 1:] == old[:at] + old[at + 1:], (table, old, new)
    assert done["comments_redacted"] == {t: len(rows) for t, rows in before.items()}
    assert _texts(others) == before_others  # the rest of the dataset keeps its comments

    # The request, its batch audit event and the example's lineage say so, and the chain still verifies.
    got = api.as_("auditor").get(f"/v1/erasure-requests/{done['id']}").json()
    assert got["comments_redacted"] == done["comments_redacted"]
    with session_scope() as s:
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "erasure.batch_executed")).one()
        assert ev.payload["comments_redacted"] == done["comments_redacted"]
    lin = api.as_("auditor").get(f"/v1/lineage/examples/{subject[0]}").json()
    assert lin["reviews"] and all(rv["comment"] == marker and rv["decision"] == "approve" for rv in lin["reviews"])
    assert QUOTE not in r.text + api.as_("auditor").get(f"/v1/lineage/examples/{subject[0]}").text
    assert api.as_("auditor").get("/v1/audit/verify").json()["ok"] is True
    # A replay redacts nothing more and reports the same.
    again = api.as_("curator").post("/v1/erasure-requests", json={"selector": {"metadata": {"user_id": "u1"}},
                                                                 "reason": "Art. 17 request #7"}).json()
    assert again["replayed"] is True and again["comments_redacted"] == done["comments_redacted"]

    # A preview reports what execution would redact, and redacts nothing.
    preview = api.as_("curator").post("/v1/erasure-requests", json={
        "selector": {"metadata": {"user_id": "u2"}}, "reason": "check", "dry_run": True}).json()
    would = _texts([ids[2]])
    assert preview["comments_redacted"] == {t: len(rows) for t, rows in would.items()}
    assert all(n >= 1 for n in preview["comments_redacted"].values()), preview["comments_redacted"]
    assert api.as_("auditor").get(f"/v1/erasure-requests/{preview['id']}").json()["comments_redacted"] \
        == preview["comments_redacted"]
    assert all(any(QUOTE in row[_comment_at(t)] for row in rows) for t, rows in would.items())
    executed = api.as_("curator").post("/v1/erasure-requests", json={
        "selector": {"metadata": {"user_id": "u2"}}, "reason": "Art. 17 request #9"}).json()
    assert executed["comments_redacted"] == preview["comments_redacted"]


def test_a_failed_batch_redacts_nothing_and_the_resumed_request_does(api, monkeypatch):
    from app.audit import service as audit

    _ds, ids = _world(api)
    before = _texts(ids[:2])
    real = audit.record

    def failing(session, **kw):
        # The batch's last write: everything before it in the batch must roll back with it.
        if kw.get("action") == "erasure.batch_executed":
            raise RuntimeError("disk full")
        return real(session, **kw)

    monkeypatch.setattr(audit, "record", failing)
    body = {"selector": {"metadata": {"user_id": "u1"}}, "reason": "Art. 17 request #8"}
    assert api.as_("curator").post("/v1/erasure-requests", json=body).status_code == 500
    assert _texts(ids[:2]) == before
    with session_scope() as s:
        assert {e.status for e in s.scalars(select(Example).where(Example.id.in_([uuid.UUID(i) for i in ids[:2]])))} \
            == {"approved"}
    monkeypatch.setattr(audit, "record", real)
    done = api.as_("curator").post("/v1/erasure-requests", json=body).json()
    assert done["status"] == "completed"
    assert done["comments_redacted"] == {t: len(rows) for t, rows in before.items()}
    assert all(row[_comment_at(t)] == f"[redacted by erasure request {done['id']}]"
               for t, rows in _texts(ids[:2]).items() for row in rows)
