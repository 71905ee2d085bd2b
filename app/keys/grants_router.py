"""PII reveal grants: requested and approved by two different admins, listed for auditors."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from app.access import grants
from app.core.auth import Admin, Auditor
from app.core.db import SessionDep
from app.core.openapi import errors
from app.datasets import service as datasets
from app.keys.schemas import GrantCreate, GrantList, GrantOut, GrantRevoke, GrantStatus

router = APIRouter(prefix="/v1/pii-grants", tags=["keys"])


@router.post("", status_code=201, response_model=GrantOut, responses=errors(404))
def request_grant(data: GrantCreate, session: SessionDep, actor: Admin) -> dict[str, Any]:
    """Ask for a grant (pending until another admin approves it)."""
    ds = datasets.get(session, data.dataset)
    return grants.view(grants.request(session, key_id=data.key_id, dataset_id=ds.id, purpose=data.purpose,
                                      expires_at=data.expires_at, actor=actor))


@router.post("/{grant_id}/approve", response_model=GrantOut, responses=errors(409))
def approve_grant(grant_id: uuid.UUID, session: SessionDep, actor: Admin) -> dict[str, Any]:
    """By an admin other than the requester and the grantee (403 `four_eyes`); only a pending, unexpired grant."""
    return grants.view(grants.approve(session, grant=grants.get(session, grant_id), actor=actor))


@router.post("/{grant_id}/revoke", response_model=GrantOut)
def revoke_grant(grant_id: uuid.UUID, session: SessionDep, actor: Admin,
                 data: Annotated[GrantRevoke | None, Body()] = None) -> dict[str, Any]:
    """Ends the grant at once (pending or approved); revoking twice is a no-op."""
    return grants.view(grants.revoke(session, grant=grants.get(session, grant_id), actor=actor,
                                     reason=data.reason if data is not None else None))


@router.get("", response_model=GrantList, responses=errors(404))
def list_grants(session: SessionDep, actor: Auditor, key_id: uuid.UUID | None = None,
                dataset: Annotated[str | None, Query(max_length=200)] = None,
                status: GrantStatus | None = None) -> dict[str, Any]:
    ds_id = datasets.get(session, dataset).id if dataset else None
    return {"items": [grants.view(g) for g in grants.listing(session, key_id=key_id, dataset_id=ds_id, status=status)]}


@router.get("/{grant_id}", response_model=GrantOut)
def get_grant(grant_id: uuid.UUID, session: SessionDep, actor: Auditor) -> dict[str, Any]:
    return grants.view(grants.get(session, grant_id))
