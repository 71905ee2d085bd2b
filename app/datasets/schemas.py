from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.review.schemas import ReviewPolicy

Format = Literal["chat", "instruction", "completion", "preference"]


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    format: Format
    description: str = ""
    # Later capabilities give these their own schemas (review, PII, dedup); stored as given for now.
    review_policy: ReviewPolicy = Field(default_factory=ReviewPolicy)
    pii_policy: dict[str, Any] = Field(default_factory=dict)
    dedup_policy: dict[str, Any] = Field(default_factory=dict)
    quality_rules: dict[str, Any] = Field(default_factory=dict)
    is_eval_set: bool = False


class DatasetUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    review_policy: ReviewPolicy | None = None
    pii_policy: dict[str, Any] | None = None
    dedup_policy: dict[str, Any] | None = None
    quality_rules: dict[str, Any] | None = None
    is_eval_set: bool | None = None


class DatasetOut(BaseModel):
    id: uuid.UUID
    name: str
    format: str
    description: str
    review_policy: dict[str, Any]
    pii_policy: dict[str, Any]
    dedup_policy: dict[str, Any]
    quality_rules: dict[str, Any]
    is_eval_set: bool
    created_at: dt.datetime
    created_by: str | None
    counts: dict[str, int] | None = None
