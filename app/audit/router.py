from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from app.audit import service
from app.audit.schemas import AuditEventList, VerifyOut
from app.core.auth import Auditor, check_workspace, visible_workspaces
from app.core.db import BIGINT_MAX, SessionDep
from app.core.errors import NotFound
from app.core.openapi import errors
from app.core.sql import iso
from app.models.audit import AuditEvent
from app.models.auth import Workspace

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("/verify", response_model=VerifyOut)
def verify(session: SessionDep, actor: Auditor,
           mode: Annotated[str, Query(pattern="^(auto|incremental|full)$")] = "auto",
           full: bool = False) -> dict[str, Any]:
    # Advancing the verification checkpoint is bookkeeping, not a change to audited data, so the
    # read-only auditor role may trigger it.
    return service.verify(session, mode=mode, full=full).to_dict()


def _workspace_id(session, ref: str) -> uuid.UUID:
    try:
        w = session.get(Workspace, uuid.UUID(ref))
    except ValueError:
        w = session.scalar(select(Workspace).where(Workspace.name == ref))
    missing = NotFound(f"workspace {ref} not found", details={"workspace": ref})
    if w is None:
        raise missing
    check_workspace(session, w.id, missing)
    return w.id


@router.get("/events", response_model=AuditEventList, responses=errors(404))  # an unknown ?workspace=
def events(
    session: SessionDep,
    actor: Auditor,
    entity_id: str | None = None,
    action: str | None = None,
    after: Annotated[int, Query(ge=0, le=BIGINT_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    workspace: Annotated[str | None, Query(max_length=200, description="workspace id or name")] = None,
) -> dict[str, Any]:
    """Events in order. An auditor sees the events of its workspaces; events about no workspace (keys,
    workspaces, grants, history from before workspaces) count as `default`'s."""
    q = select(AuditEvent).where(AuditEvent.seq > after)
    visible = visible_workspaces(session)
    if visible is not None:
        default = session.scalar(select(Workspace.id).where(Workspace.name == "default"))
        cond = AuditEvent.workspace_id.in_(visible)
        q = q.where(cond | AuditEvent.workspace_id.is_(None)) if default in visible else q.where(cond)
    if workspace:
        q = q.where(AuditEvent.workspace_id == _workspace_id(session, workspace))
    if entity_id:
        q = q.where(AuditEvent.entity_id == entity_id)
    if action:
        q = q.where(AuditEvent.action == action)
    rows = list(session.scalars(q.order_by(AuditEvent.seq).limit(limit)))
    return {
        "items": [
            {"seq": e.seq, "occurred_at": iso(e.occurred_at), "actor": e.actor, "action": e.action,
             "entity_type": e.entity_type, "entity_id": e.entity_id, "payload": e.payload,
             "workspace_id": str(e.workspace_id) if e.workspace_id else None,
             "prev_hash": e.prev_hash, "hash": e.hash}
            for e in rows
        ],
        "next_after": rows[-1].seq if len(rows) == limit else None,
    }
