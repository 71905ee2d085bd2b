from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.core.errors import ValidationFailed
from app.core.schemas import IsoTime, JsonObject, Out
from app.datasets.policies import DedupPolicyFields
from app.dedup.lsh import IndexConfig
from app.dedup.minhash import MinHashSpec


class DedupPolicy(DedupPolicyFields):
    """The dataset's dedup policy (app.datasets.policies) with what the dedup code derives from it."""

    @property
    def spec(self) -> MinHashSpec:
        return MinHashSpec(
            num_perm=self.num_perm,
            shingle_size=self.shingle_size,
            char_shingle_size=self.char_shingle_size,
            max_chars=self.max_chars,
        )

    @property
    def index_config(self) -> IndexConfig:
        return IndexConfig(self.spec, threshold=self.threshold)


def parse_policy(raw: dict | None) -> DedupPolicy:
    try:
        return DedupPolicy.model_validate(raw or {})
    except ValidationError as e:
        raise ValidationFailed(
            "invalid dedup_policy",
            details=[
                {"field": "dedup_policy." + ".".join(map(str, err["loc"])), "code": err["type"], "message": err["msg"]}
                for err in e.errors()
            ],
        ) from None


class OverruleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["not_duplicate", "allow_eval_overlap"]
    # not_duplicate: defaults to the example's canonical; allow_eval_overlap: defaults to all its eval hits.
    other_example_id: uuid.UUID | None = None
    reason: str = Field(min_length=1, max_length=2000)


# Responses (app/core/schemas.py: what the routes return, field for field).


class ClusterMember(Out):
    example_id: str
    method: str
    similarity: float | None
    via: str | None = Field(None, description="the member it was found through, when not the canonical")


class Cluster(Out):
    canonical: str
    size: int
    members: list[ClusterMember] = Field(description="every member but the canonical")


class ClusterPage(Out):
    """One page of clusters by canonical id: pass `next_cursor` back as `cursor`; null on the last page."""

    clusters: list[Cluster]
    next_cursor: str | None


class IndexInfo(Out):
    backend: str = Field(description="redis or memory")
    bands: int
    rows: int
    spec: str
    generation: int | None


class RebuildOut(Out):
    id: str
    status: str = Field(description="queued, running, done or failed")
    done: int
    total: int
    requested_by: str
    result: JsonObject
    error: str | None
    created_at: IsoTime
    started_at: IsoTime | None
    finished_at: IsoTime | None


class DedupSummary(Out):
    dataset_id: str
    policy: JsonObject = Field(description="the effective dedup policy")
    index: IndexInfo
    duplicates: dict[str, int] = Field(description="duplicate links by method")
    clusters: int
    contaminates_eval: int
    rebuild: RebuildOut | None = Field(description="the latest rebuild")


class RebuildQueued(Out):
    rebuild: RebuildOut
    status_url: str
