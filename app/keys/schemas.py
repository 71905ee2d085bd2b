from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.schemas import IsoTime, Out

Role = Literal["admin", "curator", "reviewer", "trainer", "auditor"]


def _aware_future(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("give a time zone (e.g. 2027-01-31T00:00:00Z)")
    if value <= dt.datetime.now(dt.UTC):
        raise ValueError("must be in the future")
    return value


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    role: Role
    is_human: bool = True
    expires_at: dt.datetime | None = Field(None, description="the key stops working at this time (401 key_expired)")
    workspace: str | None = Field(None, min_length=1, max_length=200,
                                  description="id or name; the key becomes a member with its role (default `default`; "
                                              "admin keys are global and join none)")

    _future = field_validator("expires_at")(_aware_future)


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_s: float | None = Field(
        None, ge=0, le=30 * 86400,
        description="how long the old secret keeps working; default PEDIGREE_KEY_ROTATION_OVERLAP_S (24 h); 0 ends it now")


class KeyOut(Out):
    id: str
    name: str
    role: Role
    prefix: str
    is_human: bool
    created_at: IsoTime | None
    created_by: str | None
    revoked_at: IsoTime | None
    expires_at: IsoTime | None = None
    last_used_at: IsoTime | None = Field(None, description="accurate to PEDIGREE_KEY_LAST_USED_INTERVAL_S (5 min)")
    rotated_at: IsoTime | None = None


class KeyCreated(KeyOut):
    key: str = Field(description="the secret, shown once")


class KeyRotated(KeyOut):
    key: str = Field(description="the new secret, shown once")
    previous_valid_until: IsoTime = Field(description="the old secret is refused (401 key_rotated) from this time")


class KeyList(Out):
    items: list[KeyOut]


class WhoAmI(Out):
    name: str
    role: Role
    ref: str
    is_human: bool


GrantStatus = Literal["pending", "approved", "revoked", "expired"]


class GrantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_id: uuid.UUID = Field(description="the key that will reveal (an admin key)")
    dataset: str = Field(min_length=1, max_length=200, description="dataset id or name")
    purpose: str = Field(min_length=3, max_length=2000, description="why raw text is needed; kept in the audit log")
    expires_at: dt.datetime = Field(description="the grant stops at this time; at most 30 days ahead")

    @field_validator("expires_at")
    @classmethod
    def _bounded(cls, value: dt.datetime) -> dt.datetime:
        value = _aware_future(value)
        if value > dt.datetime.now(dt.UTC) + dt.timedelta(days=30):
            raise ValueError("at most 30 days ahead: ask again for longer work")
        return value


class GrantRevoke(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=2000)


class GrantOut(Out):
    id: str
    key_id: str
    dataset_id: str
    purpose: str
    expires_at: IsoTime
    status: GrantStatus = Field(description="expired is computed from expires_at at each read and each reveal")
    created_at: IsoTime | None
    requested_by: str
    approved_by: str | None
    approved_at: IsoTime | None
    revoked_by: str | None
    revoked_at: IsoTime | None
    revoke_reason: str | None


class GrantList(Out):
    items: list[GrantOut]


class WorkspaceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class WorkspaceOut(Out):
    id: str
    name: str
    created_at: IsoTime | None
    created_by: str | None


class WorkspaceList(Out):
    items: list[WorkspaceOut]


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_id: uuid.UUID
    role: Literal["curator", "reviewer", "trainer", "auditor"] = Field(description="admin is global, never a member")


class MemberOut(Out):
    key_id: str
    role: str
    created_at: IsoTime | None
    created_by: str | None


class MemberList(Out):
    items: list[MemberOut]


class MemberRemoved(Out):
    workspace_id: str
    key_id: str
    removed: bool
