"""Pairwise review of preference examples: a reviewer sees the prompt and the two answers blind, as A (left)
and B (right), and picks A, B, tie or both bad with a reason code.

- The order is drawn per reviewer and example (a keyed hash: stable across reloads, independent between
  reviewers, nothing stored before the pick) and recorded with the judgment (`left`).
- A pick is also an approval of the revision under the dataset's review policy (four eyes, leases, stale
  revisions and the other refusals are the decision's own, `app.review.decisions`): the comparison is the
  reviewer's work on the item, and the pair's usability is decided by the verdict, not by a reject.
- When the policy approves the example, its judgments are settled into a verdict: the label more than half
  of them gave (`chosen`, `rejected`, `tie`, `both_bad`) or `no_majority`. A majority for the stored
  rejected answer swaps the answers through a new revision (reason `pairwise_swap`, the judged revision kept
  as its parent, audited); tie and both_bad verdicts are left out of snapshots by the `pair_unusable` rule.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Actor, check_workspace
from app.core.errors import InvalidState, NotFound, ValidationFailed
from app.core.ids import new_id
from app.examples.formats import content_sha256
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.example import Example, ExampleRevision
from app.models.review import PairwiseJudgment, PairwiseVerdict
from app.review import decisions
from app.review.schemas import PAIRWISE_REASON_CODES, PairwiseIn, ReviewIn

LABELS = ("chosen", "rejected", "tie", "both_bad")
SWAP_REASON = "pairwise_swap"


def left_answer(key_id: uuid.UUID | str, example_id: uuid.UUID | str) -> str:
    """Which stored answer this reviewer sees on the left for this example."""
    h = hashlib.sha256(f"pairwise:{key_id}:{example_id}".encode()).digest()
    return "chosen" if h[0] & 1 else "rejected"


def blind_view(content: dict[str, Any], key_id: uuid.UUID | str, example_id: uuid.UUID | str) -> dict[str, Any]:
    left = left_answer(key_id, example_id)
    right = "rejected" if left == "chosen" else "chosen"
    return {"prompt": content["prompt"], "a": content[left], "b": content[right]}


def preferred_of(pick: str, left: str) -> str:
    if pick == "a":
        return left
    if pick == "b":
        return "rejected" if left == "chosen" else "chosen"
    return pick


def compare(session: Session, *, example_id: str | uuid.UUID, actor: Actor, data: PairwiseIn) -> dict[str, Any]:
    try:
        eid = uuid.UUID(str(example_id))
    except ValueError:
        raise NotFound(f"example {example_id} not found") from None
    row = session.execute(select(Dataset.format, Dataset.workspace_id)
                          .join(Example, Example.dataset_id == Dataset.id).where(Example.id == eid)).first()
    missing = NotFound(f"example {example_id} not found", details={"example": str(example_id)})
    if row is None:
        raise missing
    check_workspace(session, row.workspace_id, missing)  # another workspace's example: 404 before its format
    fmt = row.format
    if fmt != "preference":
        raise InvalidState(f"pairwise review is for preference examples; this one is {fmt}", code="not_preference")
    if data.reason_code not in PAIRWISE_REASON_CODES:
        raise ValidationFailed(f"unknown reason code {data.reason_code!r}", code="unknown_reason_code",
                               details=[{"field": "reason_code", "code": "unknown",
                                         "message": f"one of {', '.join(PAIRWISE_REASON_CODES)}"}])
    # The approval carries every refusal of an ordinary decision (lease, four eyes, stale, decided).
    result = decisions.decide(session, example_id=eid, actor=actor,
                              data=ReviewIn(decision="approve", revision_id=data.revision_id, comment=data.comment))
    left = left_answer(actor.key_id, eid)
    preferred = preferred_of(data.pick, left)
    ex = result["example"]
    session.execute(insert(PairwiseJudgment.__table__), [{
        "id": new_id(), "example_id": eid, "dataset_id": session.scalar(select(Example.dataset_id).where(Example.id == eid)),
        "revision_id": data.revision_id, "review_id": uuid.UUID(result["review"]["id"]), "reviewer": actor.ref,
        "reviewer_key_id": actor.key_id, "left": left, "pick": data.pick, "preferred": preferred,
        "reason_code": data.reason_code, "comment": data.comment, "created_at": utcnow()}])
    audit.record(session, actor=actor.ref, action="review.compared", entity_type="example", entity_id=eid,
                 payload={"revision_id": str(data.revision_id), "pick": data.pick, "left": left,
                          "preferred": preferred, "reason_code": data.reason_code})
    verdict = settle(session, example_id=eid, actor=actor) if ex["status"] == "approved" else None
    return {"example_id": str(eid), "revision_id": str(data.revision_id), "pick": data.pick, "left": left,
            "preferred": preferred, "reason_code": data.reason_code, "review": result["review"],
            "example": {**ex, "revision_id": verdict["current_revision_id"] if verdict else ex["revision_id"]},
            "verdict": verdict}


def _majority(counts: Counter[str]) -> str:
    n = sum(counts.values())
    for label in LABELS:
        if counts[label] * 2 > n:
            return label
    return "no_majority"


def settle(session: Session, *, example_id: uuid.UUID, actor: Actor) -> dict[str, Any]:
    """The verdict of an approved example's judgments on its current revision; a majority for the stored
    rejected answer swaps the answers in a new revision, which stays approved (it holds the same pair)."""
    ex = session.get(Example, example_id)
    rid = ex.current_revision_id
    counts = Counter(dict(session.execute(
        select(PairwiseJudgment.preferred, func.count()).where(PairwiseJudgment.revision_id == rid)
        .group_by(PairwiseJudgment.preferred)).all()))
    label = _majority(counts)
    now = utcnow()
    current = rid
    verdict = label
    if label == "rejected":
        old = session.get(ExampleRevision, rid)
        content = {**old.content, "chosen": old.content["rejected"], "rejected": old.content["chosen"]}
        seq = (session.scalar(select(func.max(ExampleRevision.seq)).where(ExampleRevision.example_id == ex.id)) or 0) + 1
        new = ExampleRevision(id=new_id(), example_id=ex.id, seq=seq, content=content,
                              content_sha256=content_sha256(content), parent_id=rid, reason=SWAP_REASON,
                              author="system:pairwise", quality=old.quality,
                              comment=f"majority of {sum(counts.values())} comparisons preferred the stored rejected "
                                      "answer", created_at=now)
        session.add(new)
        session.flush()
        session.execute(update(Example).where(Example.id == ex.id).values(current_revision_id=new.id, updated_at=now))
        current, verdict = new.id, "swapped"
        audit.record(session, actor="system:pairwise", action="example.revised", entity_type="example",
                     entity_id=ex.id, payload={"revision_id": str(new.id), "parent_id": str(rid), "seq": seq,
                                               "content_sha256": new.content_sha256, "reason": SWAP_REASON,
                                               "counts": dict(counts)})
    row = {"example_id": ex.id, "dataset_id": ex.dataset_id, "revision_id": rid, "current_revision_id": current,
           "verdict": verdict, "counts": dict(counts), "settled_at": now}
    session.execute(PairwiseVerdict.__table__.delete().where(PairwiseVerdict.example_id == ex.id))
    session.execute(insert(PairwiseVerdict.__table__), [row])
    audit.record(session, actor=actor.ref, action="review.pairwise_settled", entity_type="example", entity_id=ex.id,
                 payload={"revision_id": str(rid), "current_revision_id": str(current), "verdict": verdict,
                          "counts": dict(counts)})
    return {"verdict": verdict, "counts": dict(counts), "revision_id": str(rid), "current_revision_id": str(current)}


def stats(session: Session, *, dataset_id: uuid.UUID) -> dict[str, Any] | None:
    """Agreement over the four labels (percent and Krippendorff's alpha, nominal) and each reviewer's
    position bias: the share of their A/B picks that went to the left answer (0.5 = none)."""
    from app.review.agreement import summarise

    rows = session.execute(
        select(PairwiseJudgment.revision_id, PairwiseJudgment.reviewer, PairwiseJudgment.pick,
               PairwiseJudgment.preferred).where(PairwiseJudgment.dataset_id == dataset_id)).all()
    if not rows:
        return None
    by_rev: dict[Any, list[str]] = defaultdict(list)
    per: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        by_rev[r.revision_id].append(r.preferred)
        per[r.reviewer][r.pick] += 1
        per[r.reviewer]["_" + r.preferred] += 1
    verdicts = Counter(v for (v,) in session.execute(
        select(PairwiseVerdict.verdict).where(PairwiseVerdict.dataset_id == dataset_id)))
    agree = summarise([(str(r.revision_id), r.reviewer, r.preferred) for r in rows],
                      codes={k: i for i, k in enumerate(LABELS)})
    reviewers = []
    for name, c in sorted(per.items()):
        sided = c["a"] + c["b"]
        reviewers.append({"reviewer": name, "judgments": c["a"] + c["b"] + c["tie"] + c["both_bad"],
                          "picks": {k: c[k] for k in ("a", "b", "tie", "both_bad")},
                          "preferred": {k: c["_" + k] for k in LABELS},
                          "left_share": c["a"] / sided if sided else None,
                          "agreement_with_others": agree["per_reviewer"].get(name)})
    return {
        "judgments": len(rows), "items": len(by_rev),
        "preferred": {k: sum(1 for r in rows if r.preferred == k) for k in LABELS},
        # Over what the picks mean (the four labels against the stored order), not the sides pressed.
        "agreement": {k: v for k, v in agree.items() if k != "per_reviewer"},
        "verdicts": dict(verdicts), "reviewers": reviewers,
    }
