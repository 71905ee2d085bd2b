"""Reviewer edits (a new immutable revision that re-enters the pipeline) and machine suggestions."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Actor
from app.core.config import get_settings
from app.core.errors import Conflict, Forbidden, InvalidState, ValidationFailed
from app.core.ids import new_id
from app.core.sql import aware, iso
from app.examples import service as examples
from app.examples.formats import FieldError, content_sha256, normalize
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.example import ExampleRevision
from app.models.review import ReviewSuggestion
from app.pipeline import service as pipeline
from app.pipeline import stages
from app.review.schemas import RevisionIn, SuggestionIn
from app.review.service import EDITABLE, ESC, REV, E, L, lease_row, lock_example, policy_of, suggestion_out


def edit(session: Session, *, example_id: str | uuid.UUID, actor: Actor, data: RevisionIn) -> dict[str, Any]:
    """A new immutable revision (reason reviewer_edit). Approvals are per revision, so they reset;
    the example re-enters the pipeline (quality, PII, dedup) and comes back to pending_review."""
    ex = lock_example(session, example_id)
    ds = session.get(Dataset, ex.dataset_id)
    policy = policy_of(ds)
    if actor.role == "reviewer" and not policy.reviewers_may_edit:
        raise Forbidden("this dataset's policy does not let reviewers edit", code="edits_disabled")
    if ex.status not in EDITABLE or ex.stage is not None:
        raise InvalidState(f"example is {ex.status}; only {', '.join(EDITABLE)} examples can be edited",
                           code="not_editable", details={"status": ex.status, "stage": ex.stage})
    if data.base_revision_id is not None and data.base_revision_id != ex.current_revision_id:
        raise Conflict("the revision you edited is no longer current", code="stale_revision",
                       details={"base_revision_id": str(data.base_revision_id),
                                "current_revision_id": str(ex.current_revision_id)})
    now = utcnow()
    lease = lease_row(session, ex.id)
    if lease is not None and lease.holder_key_id != actor.key_id and aware(lease.expires_at) > now:
        raise Conflict("another reviewer holds this example", code="leased",
                       details={"holder": lease.holder, "expires_at": iso(lease.expires_at)})
    s = get_settings()
    try:
        content = normalize(ds.format, data.content, max_chars=s.max_field_chars, max_messages=s.max_messages)
    except FieldError as fe:
        raise ValidationFailed(f"content.{fe.field}: {fe.message}",
                               details=[{"field": f"content.{fe.field}", "code": fe.code, "message": fe.message}]) from None
    current = session.get(ExampleRevision, ex.current_revision_id)
    sha = content_sha256(content)
    if current is not None and sha == current.content_sha256:
        raise ValidationFailed("the edit does not change the content", code="unchanged",
                               details=[{"field": "content", "code": "unchanged", "message": "same as the current revision"}])
    seq = (session.scalar(select(func.max(REV.c.seq)).where(REV.c.example_id == ex.id)) or 0) + 1
    rev = ExampleRevision(id=new_id(), example_id=ex.id, seq=seq, content=content, content_sha256=sha,
                          parent_id=ex.current_revision_id, reason="reviewer_edit", author=actor.ref,
                          comment=data.comment, created_at=now)
    session.add(rev)
    session.flush()
    before = ex.status
    first = stages.next_stage(None)
    session.execute(update(E).where(E.c.id == ex.id).values(current_revision_id=rev.id, status="ingested",
                                                            stage=first, updated_at=now))
    ex.current_revision_id, ex.status, ex.stage = rev.id, "ingested", first
    session.execute(delete(L).where(L.c.example_id == ex.id))
    session.execute(delete(ESC).where(ESC.c.example_id == ex.id))
    audit.record(session, actor=actor.ref, action="example.revised", entity_type="example", entity_id=ex.id,
                 payload={"revision_id": str(rev.id), "parent_id": str(rev.parent_id), "seq": seq,
                          "content_sha256": sha, "reason": "reviewer_edit"})
    audit.record(session, actor=actor.ref, action="example.status_changed", entity_type="example",
                 entity_id=ex.id, payload={"from": before, "to": "ingested", "why": "edited; re-enters the pipeline",
                                           "revision_id": str(rev.id)})
    pipeline.enqueue_stage(session, first, [ex.id])
    revision = examples.revision_view(rev) | {"comment": rev.comment}
    # The new revision at the top level (it is what was created), the example's state beside it.
    return {**revision, "example_id": str(ex.id), "status": "ingested", "stage": first, "revision": revision}


# --- suggestions -------------------------------------------------------------------------------------------

def add_suggestion(session: Session, *, example_id: str | uuid.UUID, actor: Actor,
                   data: SuggestionIn) -> dict[str, Any]:
    ex = examples.get(session, example_id)
    rid = data.revision_id or ex.current_revision_id
    if data.revision_id is not None and not session.scalar(
            select(REV.c.id).where(REV.c.id == rid, REV.c.example_id == ex.id)):
        raise ValidationFailed("revision_id is not a revision of this example",
                               details=[{"field": "revision_id", "code": "invalid", "message": "unknown revision"}])
    s = ReviewSuggestion(id=new_id(), example_id=ex.id, revision_id=rid, source=actor.ref, model=data.model,
                         label=data.label, score=data.score, reason_code=data.reason_code, comment=data.comment,
                         created_at=utcnow())
    session.add(s)
    session.flush()
    audit.record(session, actor=actor.ref, action="review.suggestion_added", entity_type="example", entity_id=ex.id,
                 payload={"suggestion_id": str(s.id), "revision_id": str(rid), "model": data.model,
                          "label": data.label, "score": data.score})
    return suggestion_out(s)
