"""Request bodies of the evaluation and model-policy APIs (docs/evaluation.md)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.training.schemas import AliasName, EventIn

SUITES = ("heldout", "memorization", "pii_extraction", "membership")
# The numbers the suites produce (trainer/evaluate/suites.py), as dotted paths into the results: only
# these can be gated. A gate on anything else could never be met and would block its alias for good, so
# it is refused when the policy is written.
METRICS = (
    "heldout.validation_loss", "heldout.base_validation_loss", "heldout.validation_perplexity",
    "heldout.base_validation_perplexity", "heldout.forgetting.delta", "heldout.forgetting.reference_loss",
    "memorization.max_exposure",
    "pii_extraction.rate", "pii_extraction.extracted", "pii_extraction.greedy_extracted",
    "pii_extraction.regurgitation.longest_overlap_tokens",
    "membership.auc", "membership.min_k_auc",
)
# Per eval set: heldout.eval_sets.<dataset name>.loss, ... .generation.rouge_l.
EVAL_SET_METRIC = re.compile(r"^heldout\.eval_sets\.[A-Za-z0-9][A-Za-z0-9._-]{0,199}\."
                             r"(loss|base_loss|perplexity|generation\.(base_)?(exact_match|token_f1|rouge_l))$")


def is_metric(name: str) -> bool:
    return name in METRICS or bool(EVAL_SET_METRIC.match(name))


DatasetRef = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Checked in the service, which names the unknown suite in its 422 (code unknown_suite).
    suites: list[Annotated[str, StringConstraints(min_length=1, max_length=50)]] = Field(min_length=1, max_length=4)
    eval_sets: list[DatasetRef] = Field(default_factory=list, max_length=50)
    reference: DatasetRef | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class EvalStart(BaseModel):
    worker_host: Annotated[str, StringConstraints(min_length=1, max_length=255)]


class EvalEvents(BaseModel):
    events: list[EventIn] = Field(max_length=10_000)


class EvalComplete(BaseModel):
    results: dict[str, dict[str, Any]]


class EvalFail(BaseModel):
    code: Annotated[str, StringConstraints(min_length=1, max_length=50)]
    message: Annotated[str, StringConstraints(max_length=20_000)] = ""


class Gate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    max: float | None = None
    min: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> Gate:
        if (self.max is None) == (self.min is None):
            raise ValueError("a gate has exactly one of max or min")
        return self


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gates: list[Gate] = Field(default_factory=list, max_length=50)
    gated_aliases: list[AliasName] = Field(default_factory=list, max_length=50)
