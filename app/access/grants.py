"""PII reveal grants: raw text is revealed only under an approved, unexpired, unrevoked grant for the
caller's key and the dataset, and every reveal's audit event names the grant (docs/security.md,
"Revealing raw PII").

Four eyes: the admin who approves is neither the one who asked nor the key the grant is for. Expiry is
read from `expires_at` at each reveal and revocation is a status read at each reveal, so both take
effect at the second. A refused reveal is audited too, in its own transaction (the request's is
rolled back with the 403).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Actor, check_workspace, visible_workspaces
from app.core.db import session_scope
from app.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.core.sql import aware, iso
from app.models.access import PiiGrant
from app.models.auth import ApiKey
from app.models.base import utcnow
from app.models.dataset import Dataset

# Only admins read raw text (app/core/auth.py RAW_PII_READERS); a grant narrows that to one purpose,
# one dataset and a time, it never widens it to another role.
GRANTEE_ROLES = ("admin",)


def status_of(g: PiiGrant, now: dt.datetime | None = None) -> str:
    if g.status != "revoked" and aware(g.expires_at) <= (now or utcnow()):
        return "expired"
    return g.status


def view(g: PiiGrant) -> dict[str, Any]:
    return {"id": str(g.id), "key_id": str(g.key_id), "dataset_id": str(g.dataset_id), "purpose": g.purpose,
            "expires_at": iso(g.expires_at), "status": status_of(g), "created_at": iso(g.created_at),
            "requested_by": g.requested_by, "approved_by": g.approved_by, "approved_at": iso(g.approved_at),
            "revoked_by": g.revoked_by, "revoked_at": iso(g.revoked_at), "revoke_reason": g.revoke_reason}


def get(session: Session, grant_id: uuid.UUID | str) -> PiiGrant:
    try:
        g = session.get(PiiGrant, uuid.UUID(str(grant_id)))
    except ValueError:
        g = None
    missing = NotFound(f"PII grant {grant_id} not found")
    if g is None:
        raise missing
    _check_visible(session, g.dataset_id, missing)
    return g


def _check_visible(session: Session, dataset_id: uuid.UUID, missing: Exception) -> None:
    # Grants sit below the datasets domain, so the dataset's workspace is read here (one indexed read).
    if visible_workspaces(session) is None:
        return
    ws = session.scalar(select(Dataset.workspace_id).where(Dataset.id == dataset_id))
    if ws is None:
        raise missing
    check_workspace(session, ws, missing)


def request(session: Session, *, key_id: uuid.UUID, dataset_id: uuid.UUID, purpose: str, expires_at: dt.datetime,
            actor: Actor) -> PiiGrant:
    key = session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None:
        raise ValidationFailed("no such active key", details=[{"field": "key_id", "code": "not_found",
                                                               "message": "no active API key has this id"}])
    if key.role not in GRANTEE_ROLES:
        raise ValidationFailed(f"a {key.role} key cannot reveal raw PII", details=[
            {"field": "key_id", "code": "role", "message": f"the key must hold one of {list(GRANTEE_ROLES)}"}])
    g = PiiGrant(key_id=key.id, dataset_id=dataset_id, purpose=purpose, expires_at=expires_at, status="pending",
                 requested_by=actor.ref, requested_by_key_id=actor.key_id)
    session.add(g)
    session.flush()
    audit.record(session, actor=actor.ref, action="pii_grant.requested", entity_type="pii_grant", entity_id=g.id,
                 payload={"key_id": str(key.id), "dataset_id": str(dataset_id), "purpose": purpose,
                          "expires_at": iso(expires_at)})
    return g


def approve(session: Session, *, grant: PiiGrant, actor: Actor) -> PiiGrant:
    if actor.key_id in (grant.requested_by_key_id, grant.key_id):
        raise Forbidden("four eyes: a grant is approved by an admin who neither asked for it nor holds it",
                        code="four_eyes", details={"requested_by": grant.requested_by})
    state = status_of(grant)
    if state != "pending":
        raise Conflict(f"the grant is {state}, not pending", code=f"grant_{state}", details={"status": state})
    grant.status, grant.approved_by, grant.approved_by_key_id, grant.approved_at = (
        "approved", actor.ref, actor.key_id, utcnow())
    audit.record(session, actor=actor.ref, action="pii_grant.approved", entity_type="pii_grant", entity_id=grant.id,
                 payload={"key_id": str(grant.key_id), "dataset_id": str(grant.dataset_id)})
    return grant


def revoke(session: Session, *, grant: PiiGrant, actor: Actor, reason: str | None) -> PiiGrant:
    if grant.status == "revoked":
        return grant
    grant.status, grant.revoked_by, grant.revoked_at, grant.revoke_reason = "revoked", actor.ref, utcnow(), reason
    audit.record(session, actor=actor.ref, action="pii_grant.revoked", entity_type="pii_grant", entity_id=grant.id,
                 payload={"key_id": str(grant.key_id), "dataset_id": str(grant.dataset_id), "reason": reason})
    return grant


def listing(session: Session, *, key_id: uuid.UUID | None = None, dataset_id: uuid.UUID | None = None,
            status: str | None = None) -> list[PiiGrant]:
    q = select(PiiGrant).order_by(PiiGrant.created_at.desc(), PiiGrant.id)
    if (visible := visible_workspaces(session)) is not None:
        q = q.where(PiiGrant.dataset_id.in_(select(Dataset.id).where(Dataset.workspace_id.in_(visible))))
    if key_id is not None:
        q = q.where(PiiGrant.key_id == key_id)
    if dataset_id is not None:
        q = q.where(PiiGrant.dataset_id == dataset_id)
    rows = list(session.scalars(q))
    return [g for g in rows if status is None or status_of(g) == status]


def require_active(session: Session, *, actor: Actor, dataset_id: uuid.UUID, what: str,
                   entity_type: str, entity_id: Any) -> PiiGrant:
    """The grant this reveal happens under, or 403 `no_grant` (audited `pii.reveal_refused`). Of several,
    the one that ends last."""
    now = utcnow()
    rows = list(session.scalars(select(PiiGrant).where(PiiGrant.key_id == actor.key_id,
                                                       PiiGrant.dataset_id == dataset_id)))
    live = [g for g in rows if g.status == "approved" and aware(g.expires_at) > now]
    if live:
        return max(live, key=lambda g: (aware(g.expires_at), str(g.id)))
    # Say why, naming the nearest miss: an expired or revoked grant, or one still waiting for approval.
    latest = max(rows, key=lambda g: aware(g.created_at), default=None)
    reason = status_of(latest, now) if latest is not None else "none"
    with session_scope() as s:
        audit.record(s, actor=actor.ref, action="pii.reveal_refused", entity_type=entity_type, entity_id=entity_id,
                     payload={"what": what, "dataset_id": str(dataset_id), "reason": reason,
                              "grant_id": str(latest.id) if latest is not None else None})
    raise Forbidden(f"revealing raw PII needs an approved, unexpired PII grant for this key and dataset ({reason})",
                    code="no_grant", details={"reason": reason,
                                              "grant_id": str(latest.id) if latest is not None else None})


def audit_fields(g: PiiGrant) -> dict[str, Any]:
    return {"grant_id": str(g.id), "purpose": g.purpose}
