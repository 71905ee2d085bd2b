from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.core.errors import ValidationFailed
from app.dedup.lsh import IndexConfig
from app.dedup.minhash import MinHashSpec


class DedupPolicy(BaseModel):
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
