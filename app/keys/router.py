from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body
from sqlalchemy import select

from app.access import workspaces
from app.audit import service as audit
from app.core import auth
from app.core.auth import Admin, CurrentActor
from app.core.config import get_settings
from app.core.db import SessionDep
from app.core.errors import Conflict, NotFound
from app.core.openapi import errors
from app.core.sql import iso
from app.keys.schemas import KeyCreate, KeyCreated, KeyList, KeyOut, KeyRotate, KeyRotated, WhoAmI
from app.models.auth import ApiKey

router = APIRouter(prefix="/v1/keys", tags=["keys"])


def _out(k: ApiKey) -> dict[str, Any]:
    return {"id": str(k.id), "name": k.name, "role": k.role, "prefix": k.prefix, "is_human": k.is_human,
            "created_at": iso(k.created_at), "created_by": k.created_by,
            "revoked_at": iso(k.revoked_at), "expires_at": iso(k.expires_at), "last_used_at": iso(k.last_used_at),
            "rotated_at": iso(k.rotated_at)}


def _key(session, key_id: uuid.UUID) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    return row


@router.post("", status_code=201, response_model=KeyCreated, responses=errors(404))  # an unknown workspace
def create_key(data: KeyCreate, session: SessionDep, actor: Admin) -> dict[str, Any]:
    ws = workspaces.get(session, data.workspace) if data.role != "admin" else None
    row, key = auth.create_key(session, name=data.name, role=data.role, created_by=actor.ref, is_human=data.is_human,
                               expires_at=data.expires_at, workspace_id=ws.id if ws else None)
    audit.record(session, actor=actor.ref, action="api_key.created", entity_type="api_key", entity_id=row.id,
                 payload={"name": data.name, "role": data.role, "prefix": row.prefix,
                          "expires_at": iso(data.expires_at), "workspace_id": str(ws.id) if ws else None})
    return {**_out(row), "key": key}


@router.get("", response_model=KeyList)
def list_keys(session: SessionDep, actor: Admin) -> dict[str, Any]:
    return {"items": [_out(k) for k in session.scalars(select(ApiKey).order_by(ApiKey.created_at))]}


@router.get("/me", response_model=WhoAmI)
def whoami(actor: CurrentActor) -> dict[str, Any]:
    return {"name": actor.name, "role": actor.role, "ref": actor.ref, "is_human": actor.is_human}


@router.delete("/{key_id}", response_model=KeyOut)
def revoke_key(key_id: uuid.UUID, session: SessionDep, actor: Admin) -> dict[str, Any]:
    row = _key(session, key_id)
    if row.revoked_at is None:
        row.revoked_at = auth.utcnow()
        audit.record(session, actor=actor.ref, action="api_key.revoked", entity_type="api_key", entity_id=row.id,
                     payload={"name": row.name, "role": row.role})
    return _out(row)


@router.post("/{key_id}/rotate", response_model=KeyRotated, responses=errors(409))
def rotate_key(key_id: uuid.UUID, session: SessionDep, actor: Admin,
               data: Annotated[KeyRotate | None, Body()] = None) -> dict[str, Any]:
    """A new secret for the key (same id, role, memberships and grants); the old secret keeps working for
    `overlap_s` seconds, then 401 `key_rotated`. Shown once, like at creation."""
    row = _key(session, key_id)
    if row.revoked_at is not None:
        raise Conflict("a revoked key cannot be rotated", code="key_revoked")
    asked = data.overlap_s if data is not None else None
    overlap = get_settings().key_rotation_overlap_s if asked is None else asked
    old_prefix = row.prefix
    key, until = auth.rotate_key(session, row, overlap_s=overlap)
    audit.record(session, actor=actor.ref, action="api_key.rotated", entity_type="api_key", entity_id=row.id,
                 payload={"old_prefix": old_prefix, "prefix": row.prefix, "previous_valid_until": iso(until)})
    return {**_out(row), "key": key, "previous_valid_until": iso(until)}
