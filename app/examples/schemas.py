"""Example request bodies (for the document: the routes read them raw, a batch at a time) and the example
view. The view is assembled from hooks of the domains above (PII, dedup, review: app.wiring installs
them); its shape is declared here, where the view is, so every key a hook fills is in the document."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.schemas import IsoTime, JsonObject, Out, Page

# --- request bodies (documentation of what app.examples.parsing accepts) ----------------------------------


class ProvenanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(None, max_length=200, description="defaults to the `source` query parameter, then 'api'")
    source_ref: str | None = Field(None, max_length=500, description="your id of the item; a re-send with the "
                                                                     "same source_ref and content is unchanged")
    collected_at: str | None = Field(None, description="ISO-8601 time")
    license: str | None = Field(None, max_length=100)
    legal_basis: str | None = Field(None, max_length=100)
    metadata: JsonObject | None = None
    tags: list[str] | None = None


class _ExampleIn(BaseModel):
    # Keys outside the format's fields are kept in provenance.metadata.
    model_config = ConfigDict(extra="allow")

    provenance: ProvenanceIn | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str
    weight: Literal[0, 1] | None = Field(None, description="OpenAI's per-message training weight")


class ChatExampleIn(_ExampleIn):
    messages: list[ChatMessage] = Field(min_length=1, description="user/assistant turns (a system message "
                                                                  "first), ending with the assistant")


class InstructionExampleIn(_ExampleIn):
    instruction: str
    input: str = ""
    output: str


class CompletionExampleIn(_ExampleIn):
    prompt: str
    completion: str


class PreferenceExampleIn(_ExampleIn):
    prompt: str | list[ChatMessage] = Field(description="a string, or the conversation before the answers "
                                                        "(a system message first, user/assistant alternating, "
                                                        "ending with the user)")
    chosen: str
    rejected: str


# The other line shapes a preference import accepts (app/examples/preference.py converts them).
PreferenceShape = Literal["openai", "trl", "hh", "oasst"]


# One object of the dataset's format (the format decides which of these applies).
ExampleIn = ChatExampleIn | InstructionExampleIn | CompletionExampleIn | PreferenceExampleIn


# --- ingest answers ------------------------------------------------------------------------------------------


class LineErrorOut(Out):
    line: int = Field(description="counts from 1")
    code: str
    message: str
    field: str | None = None
    index: int | None = Field(None, description="position in a JSON array body (from 0)")


class ImportResult(Out):
    batch_id: str
    accepted: int
    unchanged: int = Field(description="lines whose source_ref and content were stored before")
    exact_duplicates: int
    rejected: int
    errors: list[LineErrorOut] = Field(description="the first rejected lines")
    errors_truncated: bool


class CreatedExample(Out):
    line: int
    id: str
    status: str
    revision_id: str
    created: bool = Field(description="false when the same source_ref and content were stored before")


class CreateResult(Out):
    batch_id: str
    accepted: int
    rejected: int
    unchanged: int
    exact_duplicates: int
    errors: list[LineErrorOut]
    items: list[CreatedExample]


class IngestBatchOut(Out):
    id: str
    dataset_id: str
    created_by: str
    channel: str = Field(description="import (JSONL) or api (JSON)")
    atomic: bool
    status: str
    accepted: int
    rejected: int
    unchanged: int
    exact_duplicates: int
    errors: list[LineErrorOut]
    lines_committed: int = Field(description="every line up to this one is stored or listed in errors")
    last_seen: IsoTime | None
    created_at: IsoTime
    finished_at: IsoTime | None


# --- the example view ----------------------------------------------------------------------------------------


class ProvenanceOut(Out):
    source: str
    collected_at: IsoTime | None
    license: str | None
    legal_basis: str | None
    source_ref: str | None = Field(description="pseudonymised for roles without the raw-PII grant")
    metadata: JsonObject | None
    tags: list[str] | None
    ingest_batch_id: str | None
    ingested_by: str | None
    ingested_at: IsoTime


class RevisionOut(Out):
    id: str
    seq: int
    content: JsonObject | None = Field(description="the format's fields; null while withheld")
    content_sha256: str
    reason: str = Field(description="ingest, pii_scrub, reviewer_edit, pii_verdict, erasure, ...")
    author: str | None
    parent_id: str | None
    created_at: IsoTime
    content_withheld: str | None = Field(None, description="why the content is not shown yet (present only then)")


class QualityOut(Out):
    chars: int | None = None
    approx_tokens: int | None = None
    script: str | None = None


class QualityFlag(Out):
    code: str
    field: str | None = None
    message: str


class PiiFindingOut(Out):
    id: str
    revision_id: str
    field_path: str
    entity_type: str
    start: int
    end: int
    scrubbed_start: int | None
    scrubbed_end: int | None
    score: float | None
    recognizer: str | None
    operator: str | None
    engine: str | None
    model: str | None
    verdict: str | None
    verdict_by: str | None


class DuplicateOut(Out):
    example_id: str
    relation: Literal["canonical", "duplicate"]
    method: str
    similarity: float | None


class PiiScrubOut(Out):
    scrubbed: bool
    findings: int
    flags: JsonObject | None
    engine: str | None
    model: str | None
    source_revision_id: str | None


class DedupCluster(Out):
    canonical: str
    size: int
    is_canonical: bool


class DedupLinkOut(Out):
    method: str
    similarity: float | None


class DedupSignatureOut(Out):
    spec: str
    flags: list[str]
    revision_id: str


class EvalMatch(Out):
    eval_dataset_id: str
    eval_example_id: str
    similarity: float | None
    method: str
    allowed: bool


class DedupDecisionOut(Out):
    decision: str
    other_example_id: str
    by: str
    reason: str | None
    at: IsoTime


class DedupView(Out):
    cluster: DedupCluster
    link: DedupLinkOut | None
    signature: DedupSignatureOut | None
    eval_matches: list[EvalMatch]
    decisions: list[DedupDecisionOut]


class LeaseOut(Out):
    holder: str
    expires_at: IsoTime
    live: bool


class ReviewDecisionOut(Out):
    id: str
    reviewer: str
    decision: str
    reason_code: str | None
    comment: str | None
    created_at: IsoTime
    revision_id: str
    current: bool = Field(description="made on the current revision")


class ReviewState(Out):
    approvals: int
    required_approvals: int
    four_eyes: bool
    reason_codes: list[str]
    escalated: bool
    lease: LeaseOut | None
    decisions: list[ReviewDecisionOut]


class SuggestionOut(Out):
    id: str
    revision_id: str
    source: str
    model: str | None
    label: str | None = Field(description="approve, reject, request_changes or a free label; null when the "
                                           "suggestion is only a score or a comment")
    score: float | None
    reason_code: str | None
    comment: str | None
    created_at: IsoTime


class ValidationRecordOut(Out):
    """What last validated the example (app/examples/validation.py)."""

    validated_at: IsoTime
    via: str = Field(description="pipeline, rescrub, revalidation or migration")
    revision_id: str | None = Field(description="the revision that was validated")
    current: bool = Field(description="whether that revision is still the current one")
    pii_engine: str | None
    spacy_model: str | None
    recognizers: str | None = Field(description="the recognizer set's version (sha256 over its members)")
    pii_policy_sha256: str | None
    dedup_policy_sha256: str | None
    revalidation_id: str | None
    reviews: dict[str, int] = Field(description="decisions on the validated revision, by decision")


class ExampleOut(Out):
    """`GET /v1/examples/{id}`: the fields the caller's role may see."""

    id: str
    dataset_id: str
    status: str
    stage: str | None = Field(description="the pipeline stage the example waits for, or null")
    provenance: ProvenanceOut
    revision: RevisionOut | None
    quality: QualityOut | None
    quality_flags: list[QualityFlag]
    pii_findings: list[PiiFindingOut]
    duplicates: list[DuplicateOut]
    created_at: IsoTime
    updated_at: IsoTime
    last_validated_at: IsoTime | None = Field(
        None, description="when the pipeline last finished on the current content (null: not yet)")
    validation: ValidationRecordOut | None = None
    # Filled by the PII, dedup and review hooks.
    pii: PiiScrubOut | None = None
    dedup: DedupView | None = None
    contaminates_eval: bool | None = None
    review: ReviewState | None = None
    suggestions: list[SuggestionOut] | None = None


class ExamplePage(Page[ExampleOut]):
    pass

