from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.schemas import IsoTime, Out

Trigger = Literal["pii_engine", "spacy_model", "recognizers", "dedup_policy", "age"]


class RevalidationIn(BaseModel):
    """What to revalidate: the examples whose record differs from the current versions on these triggers
    (default: the dataset's `governance_policy.revalidate_on`, plus `age` when `revalidate_after_days` is
    set), or `scope: all` for every settled example."""

    model_config = ConfigDict(extra="forbid")

    triggers: list[Trigger] | None = Field(None, min_length=1)
    scope: Literal["changed", "all"] = "changed"


class RevalidationOut(Out):
    id: str
    dataset_id: str
    status: str = Field(description="queued, running, done, superseded or failed")
    phase: str = Field(description="pii (re-scrub batches), dedup (rebuild under a changed policy), done")
    triggers: list[str]
    scope: str
    requested_by: str
    target: dict[str, Any] | None = Field(description="the versions examples are brought to (set when it starts)")
    total: int = Field(description="candidates counted when it started")
    done: int
    changed: int = Field(description="examples whose output changed: a new revision, back through the pipeline")
    unchanged: int = Field(description="examples validated as they are (no revision, approvals kept)")
    approvals_reset: int = Field(description="approved examples whose content changed and went back to review")
    skipped: int = Field(description="edited by a reviewer after their scrub: not re-scrubbed, counted")
    batches: int
    plan: dict[str, Any]
    created_at: IsoTime
    started_at: IsoTime | None
    finished_at: IsoTime | None
    superseded_by: str | None
    error: str | None


class RevalidationPage(Out):
    items: list[RevalidationOut]
