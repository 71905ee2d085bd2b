"""Workspaces and per-workspace roles (docs/security.md, "Workspaces")."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Actor, check_workspace, visible_workspaces
from app.core.errors import Conflict, NotFound, ValidationFailed
from app.core.ids import by_id_or_name
from app.core.sql import iso
from app.models.auth import ApiKey, Workspace, WorkspaceMember

DEFAULT = "default"
# Admin is global: a membership names one of the others.
MEMBER_ROLES = ("curator", "reviewer", "trainer", "auditor")


def view(w: Workspace) -> dict[str, Any]:
    return {"id": str(w.id), "name": w.name, "created_at": iso(w.created_at), "created_by": w.created_by}


def get(session: Session, ref: str | uuid.UUID | None, *, scoped: bool = True) -> Workspace:
    """By id or name (None: `default`); outside the caller's workspaces it is not found, like a missing one."""
    ref = DEFAULT if ref is None else ref
    w = by_id_or_name(session, Workspace, ref)
    missing = NotFound(f"workspace {ref} not found", details={"workspace": str(ref)})
    if w is None:
        raise missing
    if scoped:
        check_workspace(session, w.id, missing)
    return w


def listing(session: Session) -> list[Workspace]:
    q = select(Workspace).order_by(Workspace.name)
    visible = visible_workspaces(session)
    if visible is not None:
        q = q.where(Workspace.id.in_(visible))
    return list(session.scalars(q))


def create(session: Session, *, name: str, actor: Actor) -> Workspace:
    if session.scalar(select(Workspace.id).where(Workspace.name == name)):
        raise Conflict(f"a workspace named {name!r} already exists", code="name_taken", details={"field": "name"})
    w = Workspace(name=name, created_by=actor.ref)
    session.add(w)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"a workspace named {name!r} already exists", code="name_taken") from None
    audit.record(session, actor=actor.ref, action="workspace.created", entity_type="workspace", entity_id=w.id,
                 payload={"name": name})
    return w


def add_member(session: Session, *, workspace: Workspace, key_id: uuid.UUID, role: str, actor: Actor) -> WorkspaceMember:
    """Sets the key's role in the workspace (a second call changes it)."""
    key = session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None:
        raise ValidationFailed("no such active key", details=[{"field": "key_id", "code": "not_found",
                                                               "message": "no active API key has this id"}])
    if key.role == "admin":
        raise ValidationFailed("admin keys are global", details=[
            {"field": "key_id", "code": "admin", "message": "an admin key sees every workspace; it holds no membership"}])
    if role not in MEMBER_ROLES:
        raise ValidationFailed(f"unknown member role {role!r}", details=[
            {"field": "role", "code": "invalid", "message": f"one of {', '.join(MEMBER_ROLES)}"}])
    m = session.get(WorkspaceMember, (workspace.id, key.id))
    if m is None:
        m = WorkspaceMember(workspace_id=workspace.id, key_id=key.id, role=role, created_by=actor.ref)
        session.add(m)
    else:
        m.role = role
    session.flush()
    audit.record(session, actor=actor.ref, action="workspace.member_set", entity_type="workspace",
                 entity_id=workspace.id, payload={"key_id": str(key.id), "role": role})
    return m


def remove_member(session: Session, *, workspace: Workspace, key_id: uuid.UUID, actor: Actor) -> None:
    m = session.get(WorkspaceMember, (workspace.id, key_id))
    if m is None:
        raise NotFound(f"key {key_id} is not a member of workspace {workspace.name}")
    session.delete(m)
    session.flush()
    audit.record(session, actor=actor.ref, action="workspace.member_removed", entity_type="workspace",
                 entity_id=workspace.id, payload={"key_id": str(key_id)})


def members(session: Session, workspace: Workspace) -> list[dict[str, Any]]:
    rows = session.scalars(select(WorkspaceMember).where(WorkspaceMember.workspace_id == workspace.id)
                           .order_by(WorkspaceMember.created_at))
    return [{"key_id": str(m.key_id), "role": m.role, "created_at": iso(m.created_at), "created_by": m.created_by}
            for m in rows]
