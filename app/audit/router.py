from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from app.audit import service
from app.audit.schemas import AuditEventList, VerifyOut
from app.core.auth import Auditor
from app.core.db import BIGINT_MAX, SessionDep
from app.core.sql import iso
from app.models.audit import AuditEvent

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("/verify", response_model=VerifyOut)
def verify(session: SessionDep, actor: Auditor,
           mode: Annotated[str, Query(pattern="^(auto|incremental|full)$")] = "auto",
           full: bool = False) -> dict[str, Any]:
    # Advancing the verification checkpoint is bookkeeping, not a change to audited data, so the
    # read-only auditor role may trigger it.
    return service.verify(session, mode=mode, full=full).to_dict()


@router.get("/events", response_model=AuditEventList)
def events(
    session: SessionDep,
    actor: Auditor,
    entity_id: str | None = None,
    action: str | None = None,
    after: Annotated[int, Query(ge=0, le=BIGINT_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    q = select(AuditEvent).where(AuditEvent.seq > after)
    if entity_id:
        q = q.where(AuditEvent.entity_id == entity_id)
    if action:
        q = q.where(AuditEvent.action == action)
    rows = list(session.scalars(q.order_by(AuditEvent.seq).limit(limit)))
    return {
        "items": [
            {"seq": e.seq, "occurred_at": iso(e.occurred_at), "actor": e.actor, "action": e.action,
             "entity_type": e.entity_type, "entity_id": e.entity_id, "payload": e.payload,
             "prev_hash": e.prev_hash, "hash": e.hash}
            for e in rows
        ],
        "next_after": rows[-1].seq if len(rows) == limit else None,
    }
