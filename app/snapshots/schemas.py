from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.core.schemas import IsoTime, JsonObject, Out, Page
from app.models.example import STATUSES

EXPORT_FORMATS = ("pedigree", "openai-chat", "alpaca", "completion", "parquet", "openai-dpo", "trl")
Split = Literal["train", "validation", "all"]


class SnapshotFilter(BaseModel):
    """What goes in. extra="forbid": a misspelt field is a 422, never a silently wider snapshot."""

    model_config = ConfigDict(extra="forbid")

    statuses: list[str] = Field(default_factory=lambda: ["approved"], min_length=1)
    # An example is selected when it carries any of these tags (all of them with tags_mode="all").
    tags: list[str] | None = None
    tags_mode: Literal["any", "all"] = "any"
    sources: list[str] | None = None
    licenses: list[str] | None = None
    collected_after: dt.datetime | None = None
    collected_before: dt.datetime | None = None
    min_approvals: int | None = Field(default=None, ge=0, le=1000)
    # The three default exclusions; each can be lifted explicitly, never by accident.
    include_duplicates: bool = False
    include_contaminating: bool = False
    # Preference datasets: pairs with identical answers, and pairs whose pairwise verdict is a tie or both
    # bad, stay out (rule pair_unusable) unless this is set.
    include_unusable_pairs: bool = False

    @field_validator("statuses")
    @classmethod
    def _known_statuses(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in STATUSES]
        if bad:
            raise ValueError(f"unknown status; one of {', '.join(STATUSES)}")
        if "erased" in v:
            # Erased content is a tombstone: there is nothing left to train on.
            raise ValueError("erased examples cannot be selected")
        return sorted(set(v))

    @model_validator(mode="after")
    def _range(self) -> SnapshotFilter:
        if self.collected_after and self.collected_before and self.collected_after >= self.collected_before:
            raise ValueError("collected_after must be earlier than collected_before")
        return self


class SnapshotCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, description="dataset id or name")
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    filter: SnapshotFilter = Field(default_factory=SnapshotFilter)
    validation_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    seed: int | str = 0
    # A tag prefix such as "lang": the stratum of an example is its first tag "lang:<value>".
    stratify_by: str | None = Field(default=None, min_length=1, max_length=100)
    description: str = ""

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int | str) -> int | str:
        if isinstance(v, str) and len(v) > 100:
            raise ValueError("seed is at most 100 characters")
        return v


class SnapshotOut(BaseModel):
    id: uuid.UUID
    dataset_id: uuid.UUID
    name: str
    format: str
    manifest_sha256: str
    merkle_root: str | None = None
    split_manifests: dict[str, str]
    counts: dict[str, Any]
    filter: dict[str, Any]
    validation_fraction: float
    seed: str
    stratify_by: str | None
    member_count: int
    contains_erased: bool
    created_by: str
    created_at: dt.datetime
    stats: dict[str, Any] | None = None


MAX_PROOFS = 10_000


class ProofsRequest(BaseModel):
    """Members to prove, by example id or by revision id (one of the two), at most MAX_PROOFS."""

    model_config = ConfigDict(extra="forbid")

    example_ids: list[uuid.UUID] | None = Field(None, min_length=1, max_length=MAX_PROOFS)
    revision_ids: list[uuid.UUID] | None = Field(None, min_length=1, max_length=MAX_PROOFS)

    @model_validator(mode="after")
    def _one(self) -> ProofsRequest:
        if (self.example_ids is None) == (self.revision_ids is None):
            raise ValueError("give exactly one of example_ids and revision_ids")
        return self


# -- the bias report (app/snapshots/bias.py, docs/bias.md) --------------------------------------------------


class _Pmi(BaseModel):
    members: int
    pmi: float | None = Field(description="log2 PMI over members; null below the minimum joint count")


class BiasOccupation(_Pmi):
    occupation: str


class BiasSentiment(BaseModel):
    positive: _Pmi
    negative: _Pmi
    mean_valence: float | None = Field(description="mean VADER valence of sentiment words in members naming the group")


class BiasGroup(BaseModel):
    mentions: int
    share: float | None = Field(description="of the dimension's mentions")
    members: int = Field(description="members with at least one mention")
    member_share: float | None
    by_role: dict[str, int]
    by_split: dict[str, int]
    share_by_split: dict[str, float | None]
    by_evidence: dict[str, int] = Field(description="pronoun, term, name, nationality, ethnicity")
    by_source: dict[str, int]
    by_license: dict[str, int]
    top_terms: list[tuple[str, int]]
    occupations: list[BiasOccupation]
    sentiment: BiasSentiment


class BiasDimension(BaseModel):
    mentions: int
    by_role: dict[str, int]
    by_split: dict[str, int]
    groups: dict[str, BiasGroup]


class BiasReport(BaseModel):
    snapshot_id: str
    manifest_sha256: str
    members_examined: int
    members_by_split: dict[str, int]
    erased_excluded: int = Field(description="members erased since the freeze: left out of every count")
    dimensions: dict[str, BiasDimension]
    flags: list[dict[str, Any]] = Field(description="split_share and source_share differences over the policy's threshold")
    thresholds: dict[str, float]
    lexicons: dict[str, Any]
    method: str
    limits: list[str]


# Responses (app/core/schemas.py: what the routes return, field for field).


class SnapshotView(Out):
    """A snapshot. `stats` is null in lists; `erased_members` only in `GET /v1/snapshots/{id}`."""

    id: str
    dataset_id: str
    name: str
    format: str
    manifest_sha256: str
    merkle_root: str | None = Field(description="null until computed (right after a large freeze)")
    split_manifests: dict[str, str]
    counts: JsonObject
    filter: JsonObject
    validation_fraction: float
    seed: str
    stratify_by: str | None
    member_count: int
    contains_erased: bool
    created_by: str
    created_at: IsoTime
    stats: JsonObject | None
    erased_members: int | None = None


class SnapshotPage(Page[SnapshotView]):
    pass


class ManifestDataset(Out):
    id: str
    name: str
    format: str


class Manifest(Out):
    """manifest.json: what is needed to check an export and to cite the snapshot (docs/snapshots.md)."""

    snapshot_id: str
    name: str
    dataset: ManifestDataset
    manifest_sha256: str
    manifest_algorithm: str
    content_sha256_algorithm: str
    split_manifests: dict[str, str]
    merkle_root: str | None
    merkle_tree_size: int
    merkle_algorithm: str
    merkle_proof: str
    counts: JsonObject
    sources: JsonObject
    licenses: JsonObject
    legal_bases: JsonObject
    collected_at: JsonObject
    filter: JsonObject
    validation_fraction: float
    seed: str
    stratify_by: str | None
    split_rule: str
    created_by: str
    created_at: IsoTime
    contains_erased: bool
    erased_members: int
    erased_example_ids: list[str]
    export_manifest_sha256: str = Field(description="of what an export of split=all holds today")
    export_member_count: int


class ProofLeaf(Out):
    example_id: str
    revision_id: str
    split: str
    content_sha256: str
    line: str = Field(description='the manifest line, "{content_sha256} {split}"')


class MembershipProof(Out):
    """RFC 6962 inclusion proof of one member against the snapshot's Merkle root."""

    snapshot_id: str
    merkle_root: str
    manifest_sha256: str
    algorithm: str
    tree_size: int
    leaf_index: int
    leaf: ProofLeaf
    leaf_hash: str
    audit_path: list[str]


class RefusedProof(Out):
    """A member asked for that gets no proof; it names the example or revision it was asked by."""

    code: str = Field(description="not_a_member or member_erased")
    message: str
    example_id: str | None = None
    revision_id: str | None = None


class MembershipProofs(Out):
    snapshot_id: str
    merkle_root: str
    manifest_sha256: str
    algorithm: str
    tree_size: int
    proofs: list[MembershipProof]
    refused: list[RefusedProof]


class DiffSide(Out):
    id: str
    name: str
    manifest_sha256: str
    members: int


class DiffItem(Out):
    change: str = Field(description="added, removed, revised or split_changed")
    example_id: str
    revision_a: str | None
    revision_b: str | None
    split_a: str | None
    split_b: str | None


class SnapshotDiff(Page[DiffItem]):
    a: DiffSide
    b: DiffSide
    same_manifest: bool
    counts: dict[str, int] = Field(description="per change, and unchanged")
