from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from app.audit import service as audit
from app.core import auth
from app.core.auth import Admin, CurrentActor
from app.core.db import SessionDep
from app.core.errors import NotFound
from app.core.sql import iso
from app.models.auth import ApiKey
from app.models.base import utcnow

router = APIRouter(prefix="/v1/keys", tags=["keys"])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    role: Literal["admin", "curator", "reviewer", "trainer", "auditor"]
    is_human: bool = True


def _out(k: ApiKey) -> dict[str, Any]:
    return {"id": str(k.id), "name": k.name, "role": k.role, "prefix": k.prefix, "is_human": k.is_human,
            "created_at": iso(k.created_at), "created_by": k.created_by,
            "revoked_at": iso(k.revoked_at)}


@router.post("", status_code=201)
def create_key(data: KeyCreate, session: SessionDep, actor: Admin) -> dict[str, Any]:
    row, key = auth.create_key(session, name=data.name, role=data.role, created_by=actor.ref, is_human=data.is_human)
    audit.record(session, actor=actor.ref, action="api_key.created", entity_type="api_key", entity_id=row.id,
                 payload={"name": data.name, "role": data.role, "prefix": row.prefix})
    return {**_out(row), "key": key}


@router.get("")
def list_keys(session: SessionDep, actor: Admin) -> dict[str, Any]:
    return {"items": [_out(k) for k in session.scalars(select(ApiKey).order_by(ApiKey.created_at))]}


@router.get("/me")
def whoami(actor: CurrentActor) -> dict[str, Any]:
    return {"name": actor.name, "role": actor.role, "ref": actor.ref, "is_human": actor.is_human}


@router.delete("/{key_id}")
def revoke_key(key_id: uuid.UUID, session: SessionDep, actor: Admin) -> dict[str, Any]:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit.record(session, actor=actor.ref, action="api_key.revoked", entity_type="api_key", entity_id=row.id,
                     payload={"name": row.name, "role": row.role})
    return _out(row)
