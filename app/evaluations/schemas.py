"""Request bodies of the evaluation and model-policy APIs (docs/evaluation.md)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.training.schemas import AliasName, EventIn

SUITES = ("heldout", "memorization", "pii_extraction", "membership")
# The numbers the suites produce (trainer/evaluate): only these can be gated. A gate on anything else
# could never be met, and would block its alias for good, so it is refused when the policy is written.
METRICS = (
    "heldout.validation_loss", "heldout.base_validation_loss", "heldout.validation_loss_delta",
    "heldout.validation_perplexity", "heldout.reference_loss_delta", "heldout.exact_match", "heldout.token_f1",
    "heldout.rouge_l",
    "memorization.max_exposure", "memorization.mean_exposure",
    "pii_extraction.rate", "pii_extraction.extracted", "pii_extraction.regurgitation_max_chars",
    "membership.auc", "membership.min_k_auc",
)
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
