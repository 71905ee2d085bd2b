"""Request and response bodies of the evaluation and model-policy APIs (docs/evaluation.md)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.core.schemas import IsoTime, JsonObject, LifecycleOut, Out, Page, SeqPage
from app.training.schemas import AliasName, EventIn

SUITES = ("heldout", "memorization", "pii_extraction", "membership", "bias")
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
    # CrowS-Pairs (trainer/evaluate/bias.py): the adapter's stereotype score minus its base's.
    "bias.stereotype_score_delta", "bias.stereotype_score", "bias.base_stereotype_score",
)
# Per eval set: heldout.eval_sets.<dataset name>.loss, ... .generation.rouge_l.
EVAL_SET_METRIC = re.compile(r"^heldout\.eval_sets\.[A-Za-z0-9][A-Za-z0-9._-]{0,199}\."
                             r"(loss|base_loss|perplexity|generation\.(base_)?(exact_match|token_f1|rouge_l))$")


def is_metric(name: str) -> bool:
    return name in METRICS or bool(EVAL_SET_METRIC.match(name))


# The suites' parameters and their defaults: a copy of trainer/evaluate/common.py's DEFAULTS and COMMON
# (the API may not import the trainer; tests/evaluations compares the two). Checked at creation so a
# misspelt key is a 422 naming it, not a failed evaluation minutes later on a GPU host. `None`: the
# default depends on the device.
PARAM_DEFAULTS: dict[str, dict[str, Any]] = {
    "heldout": {"max_seq_len": 2048, "max_examples": 2000, "generation_examples": 200, "max_new_tokens": 64,
                "generation_base": True},
    "memorization": {"candidates": 10000, "seed": 0},
    "pii_extraction": {"max_prompt_tokens": 256, "max_new_tokens": 32, "samples": 4, "top_k": 40,
                       "temperature": 1.0, "seed": 0, "max_probes": 5000,
                       "regurgitation_max_train_tokens": 2_000_000},
    "membership": {"max_examples": 1000, "max_seq_len": 2048, "min_k": 0.2, "seed": 0},
    "bias": {"max_pairs": 2000, "seed": 0},
}
PARAM_COMMON: dict[str, Any] = {"batch_tokens": None, "batch_size": None}
PARAM_ZERO_OK = frozenset({"seed", "samples"})


def param_problems(given: Any) -> list[dict[str, str]]:
    """What is wrong with an evaluation's `params`, one {"field", "code", "message"} per problem, by the
    trainer's rules (trainer/evaluate/common.py resolve_params): `{suite: {key: value}}`, a key outside a
    suite object applying to every suite that has it; booleans, positive numbers, integers >= 1 (seeds
    and samples >= 0), min_k at most 1."""
    if not isinstance(given, dict):
        return [{"field": "params", "code": "invalid_param", "message": "must be an object"}]
    out: list[dict[str, str]] = []
    known_shared = set(PARAM_COMMON) | {k for d in PARAM_DEFAULTS.values() for k in d}
    checks: list[tuple[str, str, Any, Any]] = []  # (field, key, value, default)
    for k, v in given.items():
        if k in SUITES:
            v = {} if v is None else v
            if not isinstance(v, dict):
                out.append({"field": f"params.{k}", "code": "invalid_param", "message": "must be an object"})
                continue
            allowed = {**PARAM_COMMON, **PARAM_DEFAULTS[k]}
            for kk, vv in v.items():
                if kk not in allowed:
                    out.append({"field": f"params.{k}.{kk}", "code": "unknown_param",
                                "message": f"{k} has no parameter {kk!r}; known: {', '.join(sorted(allowed))}"})
                else:
                    checks.append((f"params.{k}.{kk}", kk, vv, allowed[kk]))
        elif k not in known_shared:
            out.append({"field": f"params.{k}", "code": "unknown_param",
                        "message": f"no suite has a parameter {k!r} (and {k!r} is not a suite)"})
        else:
            default = PARAM_COMMON.get(k, next((d[k] for d in PARAM_DEFAULTS.values() if k in d), None))
            checks.append((f"params.{k}", k, v, default))
    for field, key, v, default in checks:
        if v is None:
            continue
        if isinstance(default, bool):
            bad = None if isinstance(v, bool) else "must be true or false"
        elif isinstance(default, float):
            bad = None if not isinstance(v, bool) and isinstance(v, (int, float)) and v > 0 and not (
                key == "min_k" and v > 1) else "must be a positive number" + (" at most 1" if key == "min_k" else "")
        else:
            low = 0 if key in PARAM_ZERO_OK else 1
            bad = None if not isinstance(v, bool) and isinstance(v, int) and v >= low else (
                f"must be an integer >= {low}")
        if bad:
            out.append({"field": field, "code": "invalid_param", "message": bad})
    return out


DatasetRef = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Checked in the service, which names the unknown suite in its 422 (code unknown_suite).
    suites: list[Annotated[str, StringConstraints(min_length=1, max_length=50)]] = Field(min_length=1, max_length=len(SUITES))
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


class ModelPolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gates: list[Gate] = Field(default_factory=list, max_length=50)
    gated_aliases: list[AliasName] = Field(default_factory=list, max_length=50)


# Responses (app/core/schemas.py: what the routes return, field for field).


class EvalModelRef(Out):
    name: str
    version: int


class EvalError(Out):
    code: str | None
    message: str | None
    failed_in: str | None


class EvaluationOut(LifecycleOut):
    model: EvalModelRef
    suites: list[str]
    eval_sets: list[JsonObject] = Field(description="the eval-set datasets, as resolved at creation")
    reference: JsonObject | None
    params: JsonObject
    results: JsonObject = Field(description="by suite; empty until the evaluation succeeded")
    error: EvalError | None


class EvaluationPage(Page[EvaluationOut]):
    pass


class EvalEventOut(Out):
    id: int
    kind: str
    level: str
    message: str
    step: int | None
    data: JsonObject
    at: IsoTime


class EvalEventPage(SeqPage[EvalEventOut]):
    pass


class EvalEventsAccepted(Out):
    accepted: int


class GateOut(Out):
    """One bound: `max` or `min`."""

    metric: str
    max: float | None = None
    min: float | None = None


class ModelPolicyOut(Out):
    name: str
    gates: list[GateOut]
    gated_aliases: list[str]
    updated_at: IsoTime | None = Field(description="null while the model has no policy")
    updated_by: str | None


class SpecAdapter(Out):
    name: str
    version: int
    sha256: str


class SpecFiles(Out):
    """Wire names for `GET /v1/evaluations/{id}/files/{name}`; null where the evaluation has none."""

    train: str
    validation: str
    eval_sets: dict[str, str]
    reference: str | None
    pii_probes: str | None
    bias_pairs: str | None = Field(None, description="CrowS-Pairs as JSON lines, with the bias suite")


class SpecCanary(Out):
    id: str
    template: str
    space: JsonObject
    repetitions: int
    secret: str


class EvaluationSpec(Out):
    """SPEC.json for the trainer running the evaluation (canary secrets included: the trainer role only)."""

    evaluation_id: str
    suites: list[str]
    base_model: str
    params: JsonObject
    method: str
    hyperparameters: JsonObject
    adapter: SpecAdapter
    files: SpecFiles
    canaries: list[SpecCanary]
