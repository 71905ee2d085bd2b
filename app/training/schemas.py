"""Request and response bodies of the training and model-registry APIs.

The hyperparameter ranges mirror trainer/hparams.py (the API may not import the trainer); a test
compares the two so they cannot drift apart. Checking them here turns a typo into a 422 naming the
field at submission, instead of a failed run minutes later on a GPU host.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from typing_extensions import TypedDict

from app.core.schemas import IsoTime, Items, JsonObject, LifecycleOut, Out, Page, SeqPage

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
ModelName = Annotated[str, StringConstraints(pattern=NAME_RE)]
AliasName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]


class Hyperparameters(BaseModel):
    # A misspelt key silently falling back to its default is worse than a refusal.
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(1, ge=1, le=1000, strict=True)
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0)
    # Tokens per optimizer step (the batch size) and per forward pass (bounds activation memory).
    batch_tokens: int = Field(16384, ge=16, le=1 << 24, strict=True)
    micro_batch_tokens: int | None = Field(None, ge=16, le=1 << 24, strict=True)
    max_seq_len: int = Field(2048, ge=8, le=1 << 20, strict=True)
    lora_r: int = Field(16, ge=1, le=4096, strict=True)
    lora_alpha: float = Field(32, gt=0.0, le=1e6)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[Annotated[str, StringConstraints(min_length=1)]] = "all-linear"
    seed: int = Field(0, ge=0, le=2**32 - 1, strict=True)
    warmup_ratio: float = Field(0.03, ge=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=10.0)
    max_grad_norm: float = Field(1.0, ge=0.0, le=1e6)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_steps: int | None = Field(None, ge=1, le=10**9, strict=True)
    attention: Literal["auto", "pedigree_varlen", "pedigree_flex", "pedigree_sdpa"] = "auto"
    compile: bool | Literal["auto"] = "auto"
    gradient_checkpointing: bool = False
    loss_chunk: int = Field(4096, ge=64, le=1 << 20, strict=True)
    log_every: int = Field(10, ge=1, le=10**6, strict=True)
    # Liger-Kernel's fused kernels on the GPU (trainer/kernels.py): auto, liger or none.
    kernels: Literal["auto", "liger", "none"] = "auto"
    # method "dpo" (trainer/dpo.py): the KL strength, the loss, and whether the adapter sits on QLoRA's
    # 4-bit base. Other methods ignore them.
    beta: float = Field(0.1, gt=0.0, le=10.0)
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    dpo_adapter: Literal["lora", "qlora"] = "lora"
    # method "full" (trainer/full.py): AdamW, or 8-bit AdamW from bitsandbytes on CUDA.
    optimizer: Literal["adamw", "adamw_8bit"] = "adamw"

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, v: Any) -> Any:
        if isinstance(v, str) and not v or isinstance(v, list) and not v:
            raise ValueError("must be 'all-linear' or a non-empty list of module names")
        return v


class Canaries(BaseModel):
    """Synthetic secrets planted in the training stream for the memorization suite (docs/evaluation.md)."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=1, le=1000, strict=True)
    repetitions: list[Annotated[int, Field(ge=1, le=10_000, strict=True)]] = Field(
        default_factory=lambda: [1, 4, 16, 64], min_length=1, max_length=20)


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    snapshot_id: str
    expected_manifest_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    base_model: Annotated[str, StringConstraints(min_length=1, max_length=1000)]
    method: Literal["lora", "qlora", "dpo", "full"] = Field(
        "lora", description="lora / qlora: SFT (preference snapshots train on the chosen answer); dpo: direct "
                            "preference optimisation on a preference snapshot (hyperparameters beta, loss_type, "
                            "dpo_adapter); full: SFT of every weight (small models; the artifact is the whole "
                            "model, sharded safetensors)")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    model_name: ModelName
    metadata: dict[str, Any] = Field(default_factory=dict)
    canaries: Canaries | None = None

    @model_validator(mode="after")
    def _canaries_method(self) -> RunCreate:
        # The trainer plants canaries in the LoRA stream only; QLoRA's quantised path is not covered by
        # its tests yet and DPO trains on preference pairs (no SFT stream to plant them in), so asking
        # for them there is refused rather than silently ignored.
        if self.canaries is not None and self.method != "lora":
            raise ValueError(f"canaries are supported for method 'lora' only, not {self.method!r}")
        return self


class RunStart(BaseModel):
    worker_host: Annotated[str, StringConstraints(min_length=1, max_length=255)]


class EventIn(BaseModel):
    kind: Literal["log", "metrics", "heartbeat"] | None = "log"
    level: Literal["info", "warn", "error"] | None = "info"
    message: str | None = ""
    step: int | None = Field(default=None, ge=0, le=2**31 - 1)  # an integer column
    data: dict[str, Any] | None = None


class EventsIn(BaseModel):
    events: list[EventIn] = Field(max_length=10_000)


# Canonical lower-case form only (as exports print them): validated in pydantic-core, and the ids then
# go to PostgreSQL as one string, with no Python UUID object per trained example.
RevisionId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]


class ExampleTrained(TypedDict):
    # A TypedDict, not a model: a report can list a million examples, and building a model instance
    # for each made parsing the body 3x slower than the whole lineage INSERT (bench/registration.py).
    revision_id: RevisionId
    tokens: Annotated[int, Field(ge=0)]
    epochs: Annotated[int, Field(ge=0)]


class RunComplete(BaseModel):
    artifact_uri: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    artifact_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    metrics: dict[str, Any] = Field(default_factory=dict)
    examples: list[ExampleTrained]


class RunFail(BaseModel):
    code: Annotated[str, StringConstraints(min_length=1, max_length=50)]
    message: Annotated[str, StringConstraints(max_length=20_000)] = ""


class AliasMove(BaseModel):
    version: int = Field(ge=1, le=2**31 - 1)
    reason: Annotated[str, StringConstraints(max_length=2000)] | None = None
    # An admin's move past failing promotion gates (docs/evaluation.md); needs a reason.
    override: bool = False


class VersionStatusChange(BaseModel):
    status: Literal["candidate", "retired", "tainted"]
    reason: Annotated[str, StringConstraints(max_length=2000)] | None = None


def is_hub_id(base_model: str) -> bool:
    """'org/name' may be a Hugging Face hub id (resolved on the GPU host); anything else is a path.
    The same rule as trainer/model.py's load_base, so both sides agree on what must exist on disk."""
    return base_model.count("/") == 1 and not base_model.startswith((".", "/", "~"))


# The hub's own rule for repo ids (letters, digits, '-', '_', '.'; no '..'; at most 96 characters per part).
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def is_valid_hub_id(base_model: str) -> bool:
    return bool(HUB_ID.match(base_model)) and ".." not in base_model


# Responses (app/core/schemas.py: what the routes return, field for field).


class RunError(Out):
    code: str | None
    message: str | None
    failed_in: str | None = Field(description="the stage that failed: validation, training, registration, ...")


class RunModelVersion(Out):
    name: str
    version: int
    status: str
    artifact_sha256: str


class CanaryOut(Out):
    """A planted canary; `secret` only in the trainer's own view of its run."""

    id: str
    template: str
    space: JsonObject
    repetitions: int
    secret: str | None = None


class RunOut(LifecycleOut):
    """A training run. `model_card` and `canaries` are left out of lists (they cost a query each)."""

    snapshot_id: str
    expected_manifest_sha256: str | None
    base_model: str
    method: str
    hyperparameters: JsonObject
    model_name: str
    metadata: JsonObject
    error: RunError | None = Field(description="set once the run failed")
    metrics: JsonObject
    model_version: RunModelVersion | None = Field(description="the version it registered, once succeeded")
    model_card: JsonObject | None = Field(None, description="the lineage facts the trainer writes into the "
                                                             "adapter's model card (review and PII aggregates "
                                                             "with ?model_card=true)")
    canaries: list[CanaryOut] | None = None


class RunPage(Page[RunOut]):
    pass


class RunEventOut(Out):
    id: int
    kind: str
    level: str
    message: str
    step: int | None
    data: JsonObject
    at: IsoTime


class RunEventPage(SeqPage[RunEventOut]):
    pass


class EventsAccepted(Out):
    accepted: int


class ModelSummary(Out):
    name: str
    latest_version: int
    created_at: IsoTime
    aliases: dict[str, int] = Field(description="alias -> the version it serves")


class ModelList(Items[ModelSummary]):
    pass


class VersionOut(Out):
    name: str
    version: int
    status: str
    status_reason: str | None
    run_id: str
    artifact_uri: str
    artifact_sha256: str
    aliases: list[str]
    created_at: IsoTime
    created_by: str


class VersionPage(SeqPage[VersionOut]):
    pass


class AliasMoved(Out):
    name: str
    alias: str
    version: int
    from_version: int | None
    changed: bool = Field(description="false when the alias already served this version")
    override: bool | None = Field(None, description="whether an admin moved it past failing promotion gates")


class AliasHistoryEntry(Out):
    from_version: int | None
    to_version: int
    actor: str
    at: IsoTime
    reason: str | None
    override: bool


class AliasHistoryPage(SeqPage[AliasHistoryEntry]):
    pass
