"""Review decisions, set-based: a batch of decisions (one request, a bulk request, or what the
committer gathered) is checked one by one against the dataset's policy and written in a handful of
statements; a refused decision writes nothing and leaves the others unaffected."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Actor
from app.core.errors import Conflict, Forbidden, InvalidState, NotFound, PedigreeError
from app.core.ids import new_id
from app.core.sql import any_of, is_pg, iso
from app.datasets.policies import ReviewPolicy
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.review.schemas import BulkReviewIn, ReviewIn
from app.review.service import AUTHORED, ESC, REV, E, L, R, check_lease, check_reason, serialize_writers


def _outcome(policy: ReviewPolicy, tally: Counter[str], decision: str) -> str | None:
    """'approved', the rejection target, 'escalate', or None (wait for more reviewers)."""
    approvals, rejects = tally["approve"], tally["reject"]
    need = policy.required_approvals
    rejected = "rejected" if policy.rejection == "final" else "changes_requested"
    if decision == "request_changes":
        return "changes_requested"
    match policy.conflict_resolution:
        case "any_reject":
            if rejects:
                return rejected
            return "approved" if approvals >= need else None
        case "majority":
            if approvals >= need and approvals > rejects:
                return "approved"
            if rejects >= need and rejects > approvals:
                return rejected
            return None
        case "escalate":
            # Collect `need` opinions; unanimity decides, any disagreement goes to an admin.
            if approvals and rejects:
                return "escalate"
            if approvals >= need:
                return "approved"
            if rejects >= need:
                return rejected
            return None
    raise AssertionError(policy.conflict_resolution)


@dataclass
class DecisionRequest:
    example_id: str | uuid.UUID
    actor: Actor
    data: ReviewIn


@dataclass
class _Batch:
    """State of the examples a batch touches, read once and updated in memory as decisions apply,
    so a later decision in the batch sees an earlier one (two approvals of one example, say)."""

    examples: dict[uuid.UUID, Any]
    policies: dict[uuid.UUID, ReviewPolicy]
    status: dict[uuid.UUID, str]
    leases: dict[uuid.UUID, Any]
    escalated: set[uuid.UUID]
    tallies: dict[uuid.UUID, Counter[str]]
    decided: set[tuple[uuid.UUID, uuid.UUID]]
    authored: set[tuple[uuid.UUID, str]]


@functools.lru_cache(maxsize=2)
def _batch_statements(pg: bool) -> tuple[Any, Any, Any | None]:
    """The batch's three reads, built once (see any_of): the locking read with the lease and the
    escalation riding on it (both keyed by the example, so the outer joins add no rows), the current
    revisions' decisions, and which of the batch's reviewers wrote a revision of which example (on
    PostgreSQL the last two as one statement, and no third)."""
    D = Dataset.__table__
    lock = (select(E.c.id, E.c.dataset_id, E.c.status, E.c.stage, E.c.current_revision_id, E.c.ingested_by,
                   D.c.review_policy, D.c.workspace_id, L.c.holder_key_id, L.c.holder, L.c.acquired_at, L.c.expires_at,
                   ESC.c.example_id.label("escalated_id"))
            .join(D, D.c.id == E.c.dataset_id)
            .outerjoin(L, L.c.example_id == E.c.id)
            .outerjoin(ESC, ESC.c.example_id == E.c.id)
            .where(any_of(E.c.id, name="ids", pg=pg)).order_by(E.c.id))
    if pg:
        # Locked in id order, so concurrent batches queue instead of deadlocking.
        lock = lock.with_for_update(of=E)
    decisions = (select(R.c.revision_id, R.c.reviewer_key_id, R.c.decision)
                 .where(any_of(R.c.revision_id, name="rids", pg=pg)))
    authored = (select(REV.c.example_id, REV.c.author)
                .where(any_of(REV.c.example_id, name="ids", pg=pg), any_of(REV.c.author, name="refs", pg=pg),
                       any_of(REV.c.reason, name="authored", pg=pg)))
    if pg:
        # Both in one round trip, as two JSON arrays. After the lock, not inside the locking statement:
        # that one's snapshot is taken before it waits for a row another batch holds, so a decision
        # committed meanwhile would be missing from the tally; this statement's snapshot has it.
        both = select(
            select(func.json_agg(func.json_build_array(*decisions.selected_columns))).where(
                decisions.whereclause).scalar_subquery()
            .label("decisions"),
            select(func.json_agg(func.json_build_array(*authored.selected_columns))).where(authored.whereclause)
            .scalar_subquery().label("authored"))
        return lock, both, None
    return lock, decisions, authored


def _load_batch(session: Session, ids: list[uuid.UUID], refs: set[str]) -> _Batch:
    conn = session.connection()
    lock, decisions, authored_q = _batch_statements(is_pg(conn))
    examples = {r.id: r for r in conn.execute(lock, {"ids": ids})}
    leases = {e: SimpleNamespace(holder_key_id=r.holder_key_id, holder=r.holder, acquired_at=r.acquired_at,
                                 expires_at=r.expires_at)
              for e, r in examples.items() if r.holder_key_id is not None}
    escalated = {e for e, r in examples.items() if r.escalated_id is not None}
    eids = list(examples)
    rids = [r.current_revision_id for r in examples.values()]
    tallies: dict[uuid.UUID, Counter[str]] = defaultdict(Counter)
    decided: set[tuple[uuid.UUID, uuid.UUID]] = set()
    authored: set[tuple[uuid.UUID, str]] = set()
    if eids and authored_q is None:  # PostgreSQL: both reads in one statement
        row = conn.execute(decisions, {"rids": rids, "ids": eids, "refs": sorted(refs),
                                       "authored": list(AUTHORED)}).one()
        for rid, key_id, decision in row.decisions or ():
            rid = uuid.UUID(rid)
            tallies[rid][decision] += 1
            decided.add((rid, uuid.UUID(key_id)))
        authored = {(uuid.UUID(eid), author) for eid, author in row.authored or ()}
    elif eids:
        for r in conn.execute(decisions, {"rids": rids}):
            tallies[r.revision_id][r.decision] += 1
            decided.add((r.revision_id, r.reviewer_key_id))
        authored = {(r.example_id, r.author) for r in conn.execute(
            authored_q, {"ids": eids, "refs": sorted(refs), "authored": list(AUTHORED)})}
    policies: dict[uuid.UUID, ReviewPolicy] = {}
    for r in examples.values():
        if r.dataset_id not in policies:
            policies[r.dataset_id] = ReviewPolicy.effective(r.review_policy)
    return _Batch(examples=examples, policies=policies, status={e: r.status for e, r in examples.items()},
                  leases=leases, escalated=escalated, tallies=tallies, decided=decided, authored=authored)


def _check(b: _Batch, eid: uuid.UUID, rq: DecisionRequest, now: dt.datetime) -> Any:
    ex = b.examples.get(eid)
    actor, data = rq.actor, rq.data
    # Another workspace's example is not found, as a missing one (docs/security.md, "Workspaces").
    ws_role = None if ex is None else actor.scoped_role(ex.workspace_id)
    if ex is None or ws_role is None:
        raise NotFound(f"example {rq.example_id} not found", details={"example": str(rq.example_id)})
    if ws_role not in ("reviewer", "admin"):
        raise Forbidden(f"role {ws_role!r} in this workspace may not decide", details={
            "role": ws_role, "allowed": ["admin", "reviewer"]})
    policy = b.policies[ex.dataset_id]
    status = b.status[eid]
    if status != "pending_review" or ex.stage is not None:
        raise InvalidState(f"example is {status}, not pending_review", code="not_pending",
                           details={"status": status, "stage": ex.stage})
    if data.revision_id != ex.current_revision_id:
        raise Conflict("the revision you reviewed is no longer current", code="stale_revision",
                       details={"revision_id": str(data.revision_id), "current_revision_id": str(ex.current_revision_id)})
    check_reason(policy, data.decision, data.reason_code)
    if eid in b.escalated and actor.role != "admin":
        raise Forbidden("this example was escalated; an admin decides it", code="escalated")
    if policy.four_eyes and data.decision == "approve" and (
            ex.ingested_by == actor.ref or (eid, actor.ref) in b.authored):
        raise Forbidden("four eyes: you may not approve an example you ingested or edited", code="four_eyes",
                        details={"reviewer": actor.ref})
    check_lease(b.leases.get(eid), actor, now)
    if (ex.current_revision_id, actor.key_id) in b.decided:
        raise Conflict("you already decided on this revision", code="already_decided")
    return ex


@functools.lru_cache(maxsize=2)
def _write_statements(pg: bool) -> SimpleNamespace:
    return SimpleNamespace(
        add_reviews=insert(R),
        drop_leases=delete(L).where(any_of(L.c.example_id, name="ids", pg=pg)),
        drop_escalations=delete(ESC).where(any_of(ESC.c.example_id, name="ids", pg=pg)),
        add_escalations=insert(ESC),
        move=update(E).where(any_of(E.c.id, name="ids", pg=pg)).values(
            status=bindparam("new_status"), updated_at=bindparam("at", type_=E.c.updated_at.type)),
    )


def decide_many(session: Session, requests: list[DecisionRequest], *, atomic: bool = False) -> list[Any]:
    """Decide a batch set-based: a handful of statements whatever its size. Returns, per request, the
    response dict or the PedigreeError refusing it; a refused request writes nothing. With `atomic`,
    the first refusal is raised before anything is written."""
    now = utcnow()
    out: list[Any] = [None] * len(requests)
    ids: list[uuid.UUID | None] = []
    for i, rq in enumerate(requests):
        try:
            ids.append(uuid.UUID(str(rq.example_id)))
        except ValueError:
            ids.append(None)
            out[i] = NotFound(f"example {rq.example_id} not found", details={"example": str(rq.example_id)})
            continue
        if not rq.actor.is_human:
            out[i] = Forbidden("machine keys may attach suggestions but not decide", code="not_human")
    serialize_writers(session)
    b = _load_batch(session, sorted({e for e in ids if e is not None}), {rq.actor.ref for rq in requests})

    reviews, lease_gone, esc_gone, esc_new = [], set(), set(), []
    moves: dict[str, list[tuple[uuid.UUID, str, uuid.UUID, str, Actor, uuid.UUID]]] = defaultdict(list)
    for i, rq in enumerate(requests):
        if out[i] is not None:
            continue
        eid = ids[i]
        try:
            ex = _check(b, eid, rq, now)
        except PedigreeError as e:
            out[i] = e
            continue
        actor, data = rq.actor, rq.data
        policy = b.policies[ex.dataset_id]
        rid = ex.current_revision_id
        lease = b.leases.pop(eid, None)
        if lease is not None:
            lease_gone.add(eid)
        was_escalated = eid in b.escalated
        review_id = new_id()
        reviews.append({"id": review_id, "example_id": eid, "dataset_id": ex.dataset_id, "revision_id": rid,
                        "reviewer": actor.ref, "reviewer_key_id": actor.key_id, "decision": data.decision,
                        "reason_code": data.reason_code, "comment": data.comment, "created_at": now,
                        "leased_at": lease.acquired_at if lease is not None and lease.holder_key_id == actor.key_id
                        else None, "resolves_escalation": was_escalated})
        b.decided.add((rid, actor.key_id))
        tally = b.tallies[rid]
        tally[data.decision] += 1
        if was_escalated:
            outcome = "approved" if data.decision == "approve" else (
                "changes_requested" if data.decision == "request_changes" or policy.rejection != "final"
                else "rejected")
            b.escalated.discard(eid)
            esc_gone.add(eid)
        else:
            outcome = _outcome(policy, tally, data.decision)
        # The batch resolves its examples itself (no check_workspace), and may span workspaces: each
        # event names its example's.
        ws = ex.workspace_id
        audit.record(session, actor=actor.ref, action="review.decided", entity_type="example", entity_id=eid,
                     workspace_id=ws,
                     payload={"review_id": str(review_id), "revision_id": str(rid), "decision": data.decision,
                              "reason_code": data.reason_code,
                              # Comments are free text and may quote personal data; the review row keeps them.
                              "has_comment": bool(data.comment), "approvals": tally["approve"],
                              "required_approvals": policy.required_approvals, "outcome": outcome or "pending"})
        if outcome == "escalate":
            b.escalated.add(eid)
            esc_new.append({"example_id": eid, "dataset_id": ex.dataset_id, "revision_id": rid, "created_at": now,
                            "reason": f"conflicting decisions: {dict(tally)}"})
            audit.record(session, actor=actor.ref, action="review.escalated", entity_type="example", entity_id=eid,
                         workspace_id=ws,
                         payload={"revision_id": str(rid), "tally": dict(tally)})
        elif outcome is not None:
            why = ("escalation resolved by an admin" if was_escalated else
                   f"review policy ({policy.conflict_resolution}, {policy.required_approvals} approvals)")
            moves[outcome].append((eid, b.status[eid], rid, why, actor, ws))
            b.status[eid] = outcome
        review = {"id": str(review_id), "example_id": str(eid), "revision_id": str(rid), "reviewer": actor.ref,
                  "decision": data.decision, "reason_code": data.reason_code, "comment": data.comment,
                  "created_at": iso(now)}
        # The review at the top level (it is what was created), the example's new state beside it.
        out[i] = {**review, "status": b.status[eid], "review": review,
                  "example": {"id": str(eid), "status": b.status[eid], "revision_id": str(rid),
                              "approvals": tally["approve"], "required_approvals": policy.required_approvals,
                              "escalated": outcome == "escalate"}}
    if atomic:
        for i, r in enumerate(out):
            if isinstance(r, PedigreeError):
                r.details = {"example_id": str(requests[i].example_id), "cause": r.details}
                raise r
    conn = session.connection()
    w = _write_statements(is_pg(conn))
    if reviews:
        # The unique constraint backs the in-memory check up: a collision fails the whole batch, which
        # the caller then retries request by request.
        conn.execute(w.add_reviews, reviews)
    if lease_gone:
        conn.execute(w.drop_leases, {"ids": sorted(lease_gone)})
    if esc_gone:
        conn.execute(w.drop_escalations, {"ids": sorted(esc_gone)})
    if esc_new:
        conn.execute(w.add_escalations, esc_new)
    for to, rows in moves.items():
        conn.execute(w.move, {"ids": [r[0] for r in rows], "new_status": to, "at": now})
        for eid, before, rid, why, actor, ws in rows:
            audit.record(session, actor=actor.ref, action="example.status_changed", entity_type="example",
                         workspace_id=ws,
                         entity_id=eid, payload={"from": before, "to": to, "why": why, "revision_id": str(rid)})
    return out


def decide(session: Session, *, example_id: str | uuid.UUID, actor: Actor, data: ReviewIn) -> dict[str, Any]:
    (result,) = decide_many(session, [DecisionRequest(example_id, actor, data)])
    if isinstance(result, PedigreeError):
        raise result
    return result


def decide_bulk(session: Session, *, actor: Actor, data: BulkReviewIn) -> dict[str, Any]:
    """One decision for many examples; a refused item leaves no trace and the others go through,
    unless `atomic` asks for all or nothing."""
    reqs = [DecisionRequest(it.example_id, actor, ReviewIn(decision=data.decision, revision_id=it.revision_id,
                                                           reason_code=data.reason_code, comment=data.comment))
            for it in data.items]
    results = []
    for rq, r in zip(reqs, decide_many(session, reqs, atomic=data.atomic), strict=True):
        if isinstance(r, PedigreeError):
            results.append({"example_id": str(rq.example_id), "ok": False,
                            "error": {"code": r.code, "message": r.message, "details": r.details}})
        else:
            results.append({"example_id": str(rq.example_id), "ok": True, "status": r["example"]["status"],
                            "review_id": r["review"]["id"]})
    return {"decided": sum(r["ok"] for r in results), "refused": sum(not r["ok"] for r in results),
            "items": results}
