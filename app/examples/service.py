from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.core.auth import Actor
from app.core.errors import NotFound, NotWired, ValidationFailed
from app.core.pagination import decode_cursor, encode_cursor
from app.examples import privacy
from app.models.example import STATUSES, DuplicateLink, Example, ExampleRevision

# Extension point: other domains (PII findings, dedup, review state) add keys to the example view
# without this module importing them. Each hook gets (session, example, view, actor). Installed by
# app.wiring, in a fixed order, never at import time.
VIEW_HOOKS: list[Callable[[Session, Example, dict[str, Any], Actor], None]] = []
_hooks_installed = False


def install_view_hooks(hooks: Sequence[Callable[[Session, Example, dict[str, Any], Actor], None]]) -> None:
    global _hooks_installed
    VIEW_HOOKS[:] = hooks
    _hooks_installed = True


def get(session: Session, example_id: str | uuid.UUID) -> Example:
    try:
        ex = session.get(Example, uuid.UUID(str(example_id)))
    except ValueError:
        ex = None
    missing = NotFound(f"example {example_id} not found", details={"example": str(example_id)})
    if ex is None:
        raise missing
    from app.datasets.service import check_dataset_id

    check_dataset_id(session, ex.dataset_id, missing)
    return ex


def provenance(ex: Example, actor: Actor | None) -> dict[str, Any]:
    """Provenance as `actor` may see it: identifiers pseudonymised for roles without the raw grant
    (app/examples/privacy.py)."""
    return {
        "source": ex.source,
        "collected_at": ex.collected_at.isoformat() if ex.collected_at else None,
        "license": ex.license, "legal_basis": ex.legal_basis,
        **privacy.provenance_fields(actor, source_ref=ex.source_ref, metadata=ex.meta, tags=ex.tags),
        "ingest_batch_id": str(ex.ingest_batch_id) if ex.ingest_batch_id else None,
        "ingested_by": ex.ingested_by, "ingested_at": ex.created_at.isoformat(),
    }


def revision_view(rev: ExampleRevision, *, withheld: str | None = None) -> dict[str, Any]:
    out = {
        "id": str(rev.id), "seq": rev.seq, "content": None if withheld else rev.content,
        "content_sha256": rev.content_sha256,
        "reason": rev.reason, "author": rev.author, "parent_id": str(rev.parent_id) if rev.parent_id else None,
        "created_at": rev.created_at.isoformat(),
    }
    if withheld:
        out["content_withheld"] = withheld
    return out


def duplicates_of(session: Session, example_id: uuid.UUID) -> list[dict[str, Any]]:
    links = session.scalars(
        select(DuplicateLink).where(
            or_(DuplicateLink.example_id == example_id, DuplicateLink.canonical_example_id == example_id)
        ).order_by(DuplicateLink.created_at)
    )
    out = []
    for ln in links:
        is_dup = ln.example_id == example_id
        out.append({
            "example_id": str(ln.canonical_example_id if is_dup else ln.example_id),
            "relation": "canonical" if is_dup else "duplicate",
            "method": ln.method, "similarity": ln.similarity,
        })
    return out


def _quality_of(session: Session, rev: ExampleRevision | None) -> dict[str, Any]:
    """Quality flags of a revision, or of its nearest checked ancestor: a scrub replaces values with
    placeholders but does not change what the checks look at, and a re-check may still be queued."""
    hops = 0
    while rev is not None and rev.quality is None and rev.parent_id is not None and hops < 16:
        rev = session.get(ExampleRevision, rev.parent_id)
        hops += 1
    return (rev.quality if rev is not None else None) or {}


def view(session: Session, ex: Example, actor: Actor) -> dict[str, Any]:
    if not _hooks_installed:
        raise NotWired("the example view has no hooks: the entry point must call app.wiring.wire() first")
    rev = session.get(ExampleRevision, ex.current_revision_id) if ex.current_revision_id else None
    quality = _quality_of(session, rev)
    out: dict[str, Any] = {
        "id": str(ex.id), "dataset_id": str(ex.dataset_id), "status": ex.status, "stage": ex.stage,
        "provenance": provenance(ex, actor),
        "revision": revision_view(rev, withheld=privacy.content_withheld(ex.stage, ex.status)) if rev else None,
        "quality": {k: v for k, v in quality.items() if k != "flags"} or None,
        "quality_flags": quality.get("flags", []),
        "pii_findings": [],
        "duplicates": duplicates_of(session, ex.id),
        "created_at": ex.created_at.isoformat(), "updated_at": ex.updated_at.isoformat(),
        "last_validated_at": ex.last_validated_at.isoformat() if ex.last_validated_at else None,
    }
    for hook in VIEW_HOOKS:
        hook(session, ex, out, actor)
    return out


def list_page(session: Session, *, dataset_id: uuid.UUID, status: str | None, source_ref: str | None,
              cursor: str | None, limit: int) -> tuple[list[Example], str | None]:
    if status is not None and status not in STATUSES:
        raise ValidationFailed("unknown status",
                               details=[{"field": "status", "code": "invalid", "message": f"one of {', '.join(STATUSES)}"}])
    q = select(Example).where(Example.dataset_id == dataset_id)
    if status:
        q = q.where(Example.status == status)
    if source_ref:
        q = q.where(Example.source_ref == source_ref)
    if cursor:
        q = q.where(Example.id > decode_cursor(cursor))
    rows = list(session.scalars(q.order_by(Example.id).limit(limit + 1)))
    nxt = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], nxt
