"""Review: what the queue, the decisions and the edits share (the tables, the example lock, the
dataset's policy, the lease checks), the review block of the example view, and reviewer-page
sign-outs. The workflow itself is in `queue` (leases), `decisions`, `edits` (revisions and machine
suggestions) and `stats`.

Every mutating function takes the example's row lock first (FOR UPDATE on PostgreSQL; on SQLite a
no-op write that takes the database's write lock), then checks, then writes. A refused request
raises before its first real write and the request's transaction rolls back, so nothing changes.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import delete, false, select, update
from sqlalchemy.orm import Session

from app.core.auth import Actor
from app.core.errors import Conflict, NotFound, ValidationFailed
from app.core.sql import aware, dialect_insert, is_pg, iso
from app.datasets.policies import ReviewPolicy
from app.datasets.service import check_dataset_id
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.example import Example, ExampleRevision
from app.models.review import Review, ReviewEscalation, ReviewLease, ReviewSessionRevocation, ReviewSuggestion

E = Example.__table__
R = Review.__table__
L = ReviewLease.__table__
REV = ExampleRevision.__table__
ESC = ReviewEscalation.__table__

EDITABLE = ("pending_review", "changes_requested", "approved")
REV_COLS = (REV.c.seq, REV.c.reason, REV.c.author, REV.c.content, REV.c.content_sha256, REV.c.quality)
# Revisions whose author wrote the content; a pii_scrub or erasure revision is the system's.
AUTHORED = ("ingest", "reviewer_edit")


def serialize_writers(session: Session) -> None:
    """On SQLite, take the write lock before reading state we are about to act on: pysqlite opens
    the transaction at the first write, so reads before it could be stale by the time we write."""
    if not is_pg(session):
        session.execute(update(L).where(false()).values(holder=L.c.holder))


def policy_of(dataset: Any) -> ReviewPolicy:
    return ReviewPolicy.effective(dataset.review_policy)


def lock_example(session: Session, example_id: str | uuid.UUID) -> Example:
    try:
        eid = uuid.UUID(str(example_id))
    except ValueError:
        raise NotFound(f"example {example_id} not found", details={"example": str(example_id)}) from None
    serialize_writers(session)
    q = select(Example).where(Example.id == eid)
    if is_pg(session):
        q = q.with_for_update()
    # populate_existing: the row may sit in the identity map from before the lock was taken.
    ex = session.scalars(q.execution_options(populate_existing=True)).one_or_none()
    missing = NotFound(f"example {example_id} not found", details={"example": str(example_id)})
    if ex is None:
        raise missing
    check_dataset_id(session, ex.dataset_id, missing)
    return ex


def check_reason(policy: ReviewPolicy, decision: str, reason_code: str | None) -> None:
    if reason_code is None:
        if decision != "approve":
            raise ValidationFailed(
                f"a {decision} needs a reason_code", code="reason_required",
                details=[{"field": "reason_code", "code": "missing",
                          "message": f"one of {', '.join(policy.reason_codes)}"}])
        return
    if reason_code not in policy.reason_codes:
        raise ValidationFailed(
            f"unknown reason code {reason_code!r}", code="unknown_reason_code",
            details=[{"field": "reason_code", "code": "unknown",
                      "message": f"one of {', '.join(policy.reason_codes)}"}])


def lease_row(session: Session, example_id: uuid.UUID) -> Any:
    return session.execute(select(L).where(L.c.example_id == example_id)).one_or_none()


def check_lease(lease: Any, actor: Actor, now: dt.datetime) -> None:
    """A decision needs no lease (API clients may decide directly), but it must not cut across one:
    someone else's live lease, or the caller's own lease that ran out (the item may be back in the
    queue and in another reviewer's hands a moment later)."""
    if lease is None:
        return
    live = aware(lease.expires_at) > now
    mine = lease.holder_key_id == actor.key_id
    if mine and not live:
        raise Conflict("your lease on this example expired; fetch it from the queue again", code="lease_expired",
                       details={"expired_at": iso(lease.expires_at)})
    if not mine and live:
        raise Conflict("another reviewer holds this example", code="leased",
                       details={"holder": lease.holder, "expires_at": iso(lease.expires_at)})


def suggestion_out(s: ReviewSuggestion) -> dict[str, Any]:
    return {"id": str(s.id), "revision_id": str(s.revision_id), "source": s.source, "model": s.model,
            "label": s.label, "score": s.score, "reason_code": s.reason_code, "comment": s.comment,
            "created_at": iso(s.created_at)}


def review_view(session: Session, ex: Example, out: dict[str, Any], actor: Actor) -> None:
    """Example view hook (installed by app.wiring): what a reviewer needs next to the content."""
    ds = session.get(Dataset, ex.dataset_id)
    policy = policy_of(ds)
    rid = ex.current_revision_id
    reviews = session.execute(
        select(R.c.id, R.c.reviewer, R.c.decision, R.c.reason_code, R.c.comment, R.c.created_at, R.c.revision_id)
        .where(R.c.example_id == ex.id).order_by(R.c.created_at)).all()
    lease = lease_row(session, ex.id)
    sugg = session.scalars(select(ReviewSuggestion).where(ReviewSuggestion.example_id == ex.id)
                           .order_by(ReviewSuggestion.created_at.desc()).limit(5)).all()
    out["review"] = {
        "approvals": sum(1 for r in reviews if r.revision_id == rid and r.decision == "approve"),
        "required_approvals": policy.required_approvals,
        "four_eyes": policy.four_eyes,
        "reason_codes": policy.reason_codes,
        "escalated": session.get(ReviewEscalation, ex.id) is not None,
        "lease": None if lease is None else {"holder": lease.holder, "expires_at": iso(lease.expires_at),
                                             "live": aware(lease.expires_at) > utcnow()},
        "decisions": [{"id": str(r.id), "reviewer": r.reviewer, "decision": r.decision, "reason_code": r.reason_code,
                       "comment": r.comment, "created_at": iso(r.created_at), "revision_id": str(r.revision_id),
                       "current": r.revision_id == rid} for r in reviews],
    }
    out["suggestions"] = [suggestion_out(s) for s in sugg]



_REVOKED = ReviewSessionRevocation.__table__


# Reviewer-page sessions ended by sign-out

def page_session_revoked(session: Session, session_id: str) -> bool:
    return session.connection().execute(
        select(_REVOKED.c.session_id).where(_REVOKED.c.session_id == session_id)).first() is not None


def revoke_page_session(session: Session, *, session_id: str, expires_at: dt.datetime) -> None:
    conn = session.connection()
    # Past its lifetime a cookie is refused when unsealed anyway, so its row can go; sign-outs are rare
    # enough that this is all the cleaning the table needs.
    conn.execute(delete(_REVOKED).where(_REVOKED.c.expires_at < utcnow()))
    # Two tabs signing one session out at once: the second insert is a no-op, not a 500.
    conn.execute(dialect_insert(conn, _REVOKED).values(session_id=session_id, expires_at=expires_at).on_conflict_do_nothing())
