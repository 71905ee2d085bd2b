"""Policies a dataset stores as JSON and each domain reads: defined here, below the domains that apply
them, so a dataset's schema can validate them without importing those domains (docs/ARCHITECTURE.md,
the layers contract)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

DEFAULT_REASON_CODES = ("factual_error", "formatting", "tone", "pii", "off_topic", "unsafe", "low_quality", "other")


class ReviewPolicy(BaseModel):
    """A dataset's review policy. Stored as given (only the knobs a curator set), read through
    `effective()`, so a default improved later reaches every dataset that did not pin it."""

    model_config = ConfigDict(extra="forbid")

    # Distinct human reviewers who must approve the current revision.
    required_approvals: int = Field(default=1, ge=1, le=10)
    # Nobody approves an example they ingested or a revision they wrote.
    four_eyes: bool = True
    # What a rejection does: final, or send the example back for an edit.
    rejection: Literal["final", "changes_requested"] = "final"
    # When reviewers disagree on one revision: any reject wins, the majority wins (a tie waits for
    # another reviewer), or an admin decides.
    conflict_resolution: Literal["any_reject", "majority", "escalate"] = "any_reject"
    reviewers_may_edit: bool = True
    # Rejections and change requests must name one of these.
    reason_codes: list[str] = Field(default_factory=lambda: list(DEFAULT_REASON_CODES), min_length=1, max_length=50)
    lease_seconds: int = Field(default=600, ge=10, le=24 * 3600)

    @field_validator("reason_codes")
    @classmethod
    def _slugs(cls, codes: list[str]) -> list[str]:
        import re

        for c in codes:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", c):
                raise ValueError(f"reason code {c!r} must be a lower-case slug (a-z, 0-9, _)")
        if len(set(codes)) != len(codes):
            raise ValueError("reason codes must be unique")
        return codes

    @model_serializer(mode="wrap")
    def _only_set(self, handler: Any) -> dict[str, Any]:
        # Dumped into datasets.review_policy: keep only what the curator chose (see the docstring).
        data = handler(self)
        return {k: v for k, v in data.items() if k in self.model_fields_set}

    @classmethod
    def effective(cls, stored: dict[str, Any] | None) -> ReviewPolicy:
        return cls.model_validate(stored or {})

    def full(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}


class DedupPolicyFields(BaseModel):
    """A dataset's ``dedup_policy``. Which text is compared: the trainable text, i.e. every text field of
    the format joined (instruction + input + output; all turns of a chat; prompt + completion; prompt +
    chosen + rejected), after PII scrubbing, because that is what a model would be trained on."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    threshold: float = Field(0.8, gt=0.0, lt=1.0, description="Jaccard on shingle sets")
    shingle_size: int = Field(5, ge=1, le=20, description="words per shingle")
    char_shingle_size: int = Field(5, ge=1, le=20, description="characters per shingle (CJK, Thai, ...)")
    num_perm: int = Field(128, ge=16, le=1024)
    max_chars: int = Field(200_000, ge=1_000, description="longer texts are compared on this prefix (flagged)")
    # Only meaningful for training sets: check their examples against every evaluation set.
    eval_guard: bool = True
    # Only meaningful for evaluation sets: also flag a training example when one of the two texts holds
    # this share of the other's word n-grams (an evaluation item pasted inside a longer text, which
    # Jaccard misses); null turns it off. See app/dedup/containment.py.
    eval_containment: float | None = Field(0.8, gt=0.0, le=1.0, description="overlap coefficient of word n-grams")
    eval_ngram: int = Field(8, ge=3, le=50, description="words per n-gram for eval_containment")


REVALIDATION_TRIGGERS = ("pii_engine", "spacy_model", "recognizers", "dedup_policy")


class BiasPolicy(BaseModel):
    """When the snapshot bias report flags a group (docs/bias.md): its share of its dimension's mentions
    differs by more than `share_difference` (absolute) between train and validation, or between one source
    and the rest of the snapshot, where both sides have at least `min_mentions` mentions of the dimension."""

    model_config = ConfigDict(extra="forbid")

    share_difference: float = Field(0.10, gt=0.0, lt=1.0)
    min_mentions: int = Field(30, ge=1, le=10_000_000)


class GovernancePolicy(BaseModel):
    """A dataset's ``governance_policy``: how old a validation may get and what makes it stale, and the
    bias report's thresholds. Stored as given, read with defaults, like the other policies."""

    model_config = ConfigDict(extra="forbid")

    # An example validated longer ago than this is stale: snapshots leave it out (rule `stale`). Null: never.
    revalidate_after_days: int | None = Field(None, ge=1, le=3650)
    # Which changes make an example's validation stale (and re-queue it): the PII engine version, the spaCy
    # model, the recognizer set, the dataset's dedup policy.
    revalidate_on: list[Literal["pii_engine", "spacy_model", "recognizers", "dedup_policy"]] = Field(
        default_factory=lambda: list(REVALIDATION_TRIGGERS))
    bias: BiasPolicy = Field(default_factory=BiasPolicy)

    @classmethod
    def effective(cls, stored: dict[str, Any] | None) -> GovernancePolicy:
        return cls.model_validate(stored or {})


class DatasetDocumentation(BaseModel):
    """What only a curator can say about a dataset (Croissant RAI fields, the datasheet, the technical
    documentation): Pedigree's records cannot answer these, so they are asked for, never guessed."""

    model_config = ConfigDict(extra="forbid")

    intended_uses: str = Field("", max_length=20_000)
    out_of_scope_uses: str = Field("", max_length=20_000)
    limitations: str = Field("", max_length=20_000)
    collection_notes: str = Field("", max_length=20_000)
    maintainer: str = Field("", max_length=500)
