from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.core.schemas import Items
from app.datasets.policies import DatasetDocumentation, DedupPolicyFields, GovernancePolicy, ReviewPolicy

Format = Literal["chat", "instruction", "completion", "preference"]


def _valid_pii_policy(value: dict[str, Any]) -> dict[str, Any]:
    # Validated here so a bad regex or unknown entity type is a 422 naming the field, never a worker
    # crash; stored as given, so defaults added later apply to datasets that did not set them.
    from app.pii.schemas import PiiPolicy

    PiiPolicy.model_validate(value)
    return value


def _valid_pii_profile(value: str) -> str:
    from app.pii.schemas import check_profile

    return check_profile(value)


def valid_layered(profile: str, policy: dict[str, Any]) -> None:
    # The owner's policy over the preset must still be a valid policy (e.g. an operator for a type the
    # profile scrubs but the owner's entity list drops).
    from app.pii.schemas import effective_policy

    try:
        effective_policy(profile, policy)
    except ValueError as exc:
        raise ValueError(f"pii_policy over pii_profile {profile!r}: {exc}") from None


def _valid_dedup_policy(value: dict[str, Any]) -> dict[str, Any]:
    # Same reasoning as the PII policy: refuse a bad threshold at the door rather than have the stage
    # fall back to defaults without anyone noticing.
    DedupPolicyFields.model_validate(value)
    return value


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    format: Format
    workspace: str | None = Field(None, min_length=1, max_length=200,
                                  description="workspace id or name; default `default`")
    description: str = ""
    # Policies are validated by their capability's schema and stored as given, so defaults added later
    # apply to datasets that did not set them.
    review_policy: ReviewPolicy = Field(default_factory=ReviewPolicy)
    pii_policy: dict[str, Any] = Field(default_factory=dict)
    # A preset of entities, operators and context rules (docs/pii.md, "Profiles"); pii_policy goes over it.
    pii_profile: str = Field(default="default", max_length=40)
    dedup_policy: dict[str, Any] = Field(default_factory=dict)
    quality_rules: dict[str, Any] = Field(default_factory=dict)
    is_eval_set: bool = False
    # Revalidation age and triggers, bias-report thresholds (docs/bias.md, docs/revalidation in README).
    governance_policy: GovernancePolicy = Field(default_factory=GovernancePolicy)
    documentation: DatasetDocumentation = Field(default_factory=DatasetDocumentation)

    @field_validator("pii_policy")
    @classmethod
    def _pii_policy(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _valid_pii_policy(value)

    @field_validator("pii_profile")
    @classmethod
    def _pii_profile(cls, value: str) -> str:
        return _valid_pii_profile(value)

    @model_validator(mode="after")
    def _pii_layered(self) -> DatasetCreate:
        valid_layered(self.pii_profile, self.pii_policy)
        return self

    @field_validator("dedup_policy")
    @classmethod
    def _dedup_policy(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _valid_dedup_policy(value)


class DatasetUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    review_policy: ReviewPolicy | None = None
    pii_policy: dict[str, Any] | None = None
    dedup_policy: dict[str, Any] | None = None
    quality_rules: dict[str, Any] | None = None
    is_eval_set: bool | None = None
    governance_policy: GovernancePolicy | None = None
    documentation: DatasetDocumentation | None = None

    @field_validator("pii_policy")
    @classmethod
    def _pii_policy(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else _valid_pii_policy(value)

    @field_validator("dedup_policy")
    @classmethod
    def _dedup_policy(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else _valid_dedup_policy(value)


class DatasetOut(BaseModel):
    id: uuid.UUID
    name: str
    workspace_id: uuid.UUID
    format: str
    description: str
    review_policy: dict[str, Any]
    pii_policy: dict[str, Any]
    pii_profile: str
    dedup_policy: dict[str, Any]
    quality_rules: dict[str, Any]
    is_eval_set: bool
    governance_policy: dict[str, Any] = Field(default_factory=dict)
    documentation: dict[str, Any] = Field(default_factory=dict)
    created_at: dt.datetime
    created_by: str | None
    counts: dict[str, int] | None = None


class DatasetList(Items[DatasetOut]):
    """`counts` is null in the list (a count per status per dataset is a query each)."""
