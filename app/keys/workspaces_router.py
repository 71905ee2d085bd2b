"""Workspaces and their members (admin); a member sees the workspaces it belongs to."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from app.access import workspaces
from app.core.auth import Admin, CurrentActor
from app.core.db import SessionDep
from app.core.openapi import errors
from app.keys.schemas import (
    MemberIn,
    MemberList,
    MemberOut,
    MemberRemoved,
    WorkspaceCreate,
    WorkspaceList,
    WorkspaceOut,
)

router = APIRouter(prefix="/v1/workspaces", tags=["keys"])


@router.post("", status_code=201, response_model=WorkspaceOut, responses=errors(409))
def create_workspace(data: WorkspaceCreate, session: SessionDep, actor: Admin) -> dict[str, Any]:
    return workspaces.view(workspaces.create(session, name=data.name, actor=actor))


@router.get("", response_model=WorkspaceList)
def list_workspaces(session: SessionDep, actor: CurrentActor) -> dict[str, Any]:
    """Admin: every workspace; any other key: those it is a member of."""
    return {"items": [workspaces.view(w) for w in workspaces.listing(session)]}


@router.get("/{workspace_id}/members", response_model=MemberList)
def list_members(workspace_id: str, session: SessionDep, actor: Admin) -> dict[str, Any]:
    return {"items": workspaces.members(session, workspaces.get(session, workspace_id))}


@router.post("/{workspace_id}/members", status_code=201, response_model=MemberOut)
def add_member(workspace_id: str, data: MemberIn, session: SessionDep, actor: Admin) -> dict[str, Any]:
    """Gives the key `role` in the workspace (sets it again when it is a member already)."""
    w = workspaces.get(session, workspace_id)
    m = workspaces.add_member(session, workspace=w, key_id=data.key_id, role=data.role, actor=actor)
    return {"key_id": str(m.key_id), "role": m.role, "created_at": None, "created_by": m.created_by}


@router.delete("/{workspace_id}/members/{key_id}", response_model=MemberRemoved)
def remove_member(workspace_id: str, key_id: uuid.UUID, session: SessionDep, actor: Admin) -> dict[str, Any]:
    """Ends the key's access to the workspace on its next request."""
    w = workspaces.get(session, workspace_id)
    workspaces.remove_member(session, workspace=w, key_id=key_id, actor=actor)
    return {"workspace_id": str(w.id), "key_id": str(key_id), "removed": True}
