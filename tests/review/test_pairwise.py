"""Pairwise review of preference examples through the API, on SQLite and PostgreSQL: blind per-reviewer order,
picks that approve under the policy, the settled verdict (a majority against the stored order swaps the
answers in a new revision), the pair_unusable snapshot rule, stats (agreement, position bias), refusals."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import select

from app.core.db import session_scope
from app.models.audit import AuditEvent
from app.models.example import ExampleRevision
from app.models.review import PairwiseJudgment
from tests.factories import get_example, new_dataset

PAIRS = [{"prompt": f"Question {i}: how do I reset my password?", "chosen": f"Open settings, then security ({i}).",
          "rejected": f"I cannot help with that ({i})."} for i in range(8)]


def _dataset(api, pairs=PAIRS, approvals=2):
    ds = new_dataset(api, "preference", review_policy={"required_approvals": approvals})
    r = api.as_("curator").post(f"/v1/datasets/{ds['id']}/examples", json=pairs)
    assert r.status_code == 201, r.text
    return ds, [it["id"] for it in r.json()["items"]]


def _queue(api, role, ds, limit=50):
    r = api.as_(role).get("/v1/review/queue", params={"dataset": ds["id"], "limit": limit})
    assert r.status_code == 200, r.text
    return {it["example_id"]: it for it in r.json()["items"]}


def _pick_for(item, want):
    """The side (a/b) that shows the stored `want` answer in this reviewer's item."""
    content = item["revision"]["content"]
    return "a" if item["pairwise"]["a"] == content[want] else "b"


def _compare(api, role, item, pick, reason="more_helpful"):
    return api.as_(role).post(f"/v1/examples/{item['example_id']}/comparisons",
                              json={"revision_id": item["revision_id"], "pick": pick, "reason_code": reason})


def test_order_is_blind_random_per_reviewer_and_recorded(api):
    ds, ids = _dataset(api)
    q1, q2 = _queue(api, "reviewer", ds), _queue(api, "reviewer2", ds)
    assert set(q1) == set(ids) and not q2  # reviewer holds every lease
    lefts1 = {}
    for eid, it in q1.items():
        pw, content = it["pairwise"], it["revision"]["content"]
        assert pw["prompt"] == content["prompt"] and {pw["a"], pw["b"]} == {content["chosen"], content["rejected"]}
        lefts1[eid] = "chosen" if pw["a"] == content["chosen"] else "rejected"
        assert "more_helpful" in pw["reason_codes"]
    # The same reviewer sees the same order again (a reload keeps it).
    again = _queue(api, "reviewer", ds)
    assert {e: it["pairwise"]["a"] for e, it in again.items()} == {e: it["pairwise"]["a"] for e, it in q1.items()}
    for it in q1.values():
        r = _compare(api, "reviewer", it, "a")
        assert r.status_code == 201, r.text
        assert r.json()["left"] == lefts1[it["example_id"]] and r.json()["preferred"] == lefts1[it["example_id"]]
        assert r.json()["example"]["status"] == "pending_review"  # one of two approvals
    q2 = _queue(api, "reviewer2", ds)
    lefts2 = {e: "chosen" if it["pairwise"]["a"] == it["revision"]["content"]["chosen"] else "rejected"
              for e, it in q2.items()}
    assert set(lefts2) == set(ids)
    with session_scope() as s:
        rows = s.execute(select(PairwiseJudgment.example_id, PairwiseJudgment.left, PairwiseJudgment.pick)).all()
    assert {str(e): left for e, left, _ in rows} == lefts1 and {p for *_, p in rows} == {"a"}


def test_the_order_is_balanced_and_drawn_per_reviewer():
    # Deterministic ids: the API test above uses random key ids, where "both orders among eight items"
    # would fail once in 128 runs; the draw's balance and independence are properties of left_answer.
    from app.review.pairwise import left_answer

    keys = [uuid.uuid5(uuid.NAMESPACE_OID, f"key{i}") for i in range(2)]
    examples = [uuid.uuid5(uuid.NAMESPACE_OID, f"ex{i}") for i in range(2000)]
    for k in keys:
        share = sum(left_answer(k, e) == "chosen" for e in examples) / len(examples)
        assert 0.46 < share < 0.54, share
    agree = sum(left_answer(keys[0], e) == left_answer(keys[1], e) for e in examples) / len(examples)
    assert 0.46 < agree < 0.54, agree  # two reviewers' orders are independent draws
    # The same draw from the ids as the API hands them (strings): a reload shows the same order.
    assert all(left_answer(keys[0], e) == left_answer(str(keys[0]), str(e)) for e in examples[:50])


def test_majority_against_the_stored_order_swaps_through_a_new_revision(api, dispatched, base_model, artifact_root):
    ds, ids = _dataset(api, PAIRS[:3])
    q1 = _queue(api, "reviewer", ds)
    swap, tie, keep = ids
    for eid, it in q1.items():
        pick = {swap: _pick_for(it, "rejected"), tie: "tie", keep: _pick_for(it, "chosen")}[eid]
        assert _compare(api, "reviewer", it, pick, "equally_good" if pick == "tie" else "more_accurate").status_code == 201
    q2 = _queue(api, "reviewer2", ds)
    out = {}
    for eid, it in q2.items():
        pick = {swap: _pick_for(it, "rejected"), tie: "tie", keep: "both_bad"}[eid]
        r = _compare(api, "reviewer2", it, pick, "safer")
        assert r.status_code == 201, r.text
        out[eid] = r.json()
    assert out[swap]["verdict"]["verdict"] == "swapped" and out[swap]["example"]["status"] == "approved"
    assert out[tie]["verdict"]["verdict"] == "tie"
    assert out[keep]["verdict"]["verdict"] == "no_majority"  # chosen once, both bad once
    ex = get_example(api, swap)
    original = PAIRS[0]
    assert ex["status"] == "approved" and ex["revision"]["reason"] == "pairwise_swap"
    assert (ex["revision"]["content"]["chosen"], ex["revision"]["content"]["rejected"]) == (
        original["rejected"], original["chosen"])
    with session_scope() as s:
        new = s.get(ExampleRevision, uuid.UUID(ex["revision"]["id"]))
        old = s.get(ExampleRevision, new.parent_id)
        assert old.content["chosen"] == original["chosen"]  # the judged revision is kept
        acts = [a for (a,) in s.execute(select(AuditEvent.action).order_by(AuditEvent.seq))]
    assert "review.compared" in acts and "review.pairwise_settled" in acts and "example.revised" in acts
    assert api.as_("auditor").get("/v1/audit/verify").json()["ok"]

    # Snapshot: the tie is left out (pair_unusable), the swapped pair goes in as swapped.
    r = api.as_("curator").post("/v1/snapshots", json={"dataset_id": ds["id"], "name": "dpo-1",
                                                       "validation_fraction": 0.0})
    assert r.status_code == 201, r.text
    snap = r.json()
    assert snap["counts"]["excluded"]["pair_unusable"] == 1 and snap["member_count"] == 2
    recs = [json.loads(x) for x in api.as_("trainer").get(
        f"/v1/snapshots/{snap['id']}/export").content.splitlines()]
    by_ex = {x["example_id"]: x["content"] for x in recs}
    assert by_ex[swap]["chosen"] == original["rejected"]
    sheet = api.as_("auditor").get(f"/v1/snapshots/{snap['id']}/datasheet").text
    assert "pair_unusable" in sheet
    r = api.as_("curator").post("/v1/snapshots", json={"dataset_id": ds["id"], "name": "all-pairs",
                                                       "filter": {"include_unusable_pairs": True}})
    assert r.json()["member_count"] == 3
    # The swap revision counts the approvals of the revision its reviewers judged.
    r = api.as_("curator").post("/v1/snapshots", json={"dataset_id": ds["id"], "name": "two-approvals",
                                                       "filter": {"min_approvals": 2}})
    assert r.status_code == 201 and r.json()["member_count"] == 2, r.text

    # Stats: agreement over the four labels, position bias per reviewer.
    st = api.as_("auditor").get("/v1/review/stats", params={"dataset": ds["id"]}).json()["pairwise"]
    assert st["judgments"] == 6 and st["items"] == 3
    assert st["agreement"]["items_with_several_reviews"] == 3
    assert abs(st["agreement"]["percent_agreement"] - 2 / 3) < 1e-4  # swap and tie agreed, keep did not
    assert st["verdicts"] == {"swapped": 1, "tie": 1, "no_majority": 1}
    for rv in st["reviewers"]:
        sided = rv["picks"]["a"] + rv["picks"]["b"]
        assert rv["left_share"] == (rv["picks"]["a"] / sided if sided else None)
    from typer.testing import CliRunner

    from app.cli import app as cli

    out = CliRunner().invoke(cli, ["review", "stats", ds["id"]], env={"COLUMNS": "220"})
    assert out.exit_code == 0, out.output
    assert "pairwise" in out.output and "left share (position bias)" in out.output

    # A DPO run's model card says the method and the comparisons behind its pairs, by pick and by reviewer.
    r = api.as_("curator").post("/v1/training-runs", json={"snapshot_id": snap["id"], "base_model": base_model,
                                                           "model_name": "dpo-card", "method": "dpo"})
    assert r.status_code == 201, r.text
    card = api.as_("auditor").get(f"/v1/training-runs/{r.json()['id']}", params={"model_card": True}).json()["model_card"]
    assert card["method"] == "dpo"
    compared = card["pairwise comparisons (by pick, by reviewer)"]
    assert compared["comparisons"] == 4  # the two members' judgments (the tie's pair is not a member)
    assert compared["by_pick"] == {"rejected": 2, "chosen": 1, "both_bad": 1}
    assert len(compared["by_reviewer"]) == 2

    # The registered version's lineage counts the picks behind what it trained on, the swapped pair's
    # picks included (they are on its parent revision).
    from tests.factories import complete_body, fake_artifact

    run_id = r.json()["id"]
    assert api.as_("trainer").post(f"/v1/training-runs/{run_id}/start", json={"worker_host": "h"}).status_code == 200
    uri, sha = fake_artifact(artifact_root, "dpo-card", run_id)
    r = api.as_("trainer").post(f"/v1/training-runs/{run_id}/complete", json=complete_body(recs, uri, sha))
    assert r.status_code == 200, r.text
    lin = api.as_("auditor").get("/v1/lineage/models/dpo-card/versions/1").json()
    assert lin["run"]["method"] == "dpo"
    by_cmp = lin["summary"]["by_comparison"]
    assert sum(n for per in by_cmp.values() for n in per.values()) == 4
    assert sum(per.get("rejected", 0) for per in by_cmp.values()) == 2  # the swapped pair's two picks


def test_identical_answers_are_left_out_of_preference_snapshots(api):
    """Identical answers, and answers that differ only by what PII scrubbing replaced with one placeholder."""
    ds, _ = _dataset(api, [{"prompt": "p?", "chosen": "same answer", "rejected": "same answer"},
                           {"prompt": "Who do I write to?", "chosen": "Write to ann.lee@example.org today.",
                            "rejected": "Write to bob.stone@example.com today."},
                           {"prompt": "q?", "chosen": "good", "rejected": "bad"}], approvals=1)
    for it in _queue(api, "reviewer", ds).values():
        assert _compare(api, "reviewer", it, "a").status_code == 201
    r = api.as_("curator").post("/v1/snapshots", json={"dataset_id": ds["id"], "name": "s"})
    assert r.status_code == 201 and r.json()["counts"]["excluded"]["pair_unusable"] == 2, r.text
    assert r.json()["member_count"] == 1


def test_refusals(api):
    ds, _ = _dataset(api, PAIRS[:2])
    held = _queue(api, "reviewer2", ds, limit=1)
    (eid, item), = held.items()
    r = _compare(api, "reviewer", item, "a")
    assert r.status_code == 409 and r.json()["error"]["code"] == "leased", r.text
    r = _compare(api, "reviewer2", item, "a", reason="no_such_reason")
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "reason_code"
    r = api.as_("reviewer2").post(f"/v1/examples/{eid}/comparisons",
                                  json={"revision_id": item["revision_id"], "pick": "left", "reason_code": "safer"})
    assert r.status_code == 422
    assert _compare(api, "reviewer2", item, "b").status_code == 201
    r = _compare(api, "reviewer2", item, "a")
    assert r.status_code == 409 and r.json()["error"]["code"] == "already_decided"
    chat = new_dataset(api, "instruction")
    r = api.as_("curator").post(f"/v1/datasets/{chat['id']}/examples",
                                json=[{"instruction": "Say hi to the team.", "output": "Hi team, hello!"}])
    cid = r.json()["items"][0]["id"]
    r = api.as_("reviewer").post(f"/v1/examples/{cid}/comparisons",
                                 json={"revision_id": get_example(api, cid)["revision"]["id"], "pick": "a",
                                       "reason_code": "safer"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_preference"
