"""Response bodies of the lineage and erasure APIs (docs/lineage.md); app/core/schemas.py says how they
relate to what the routes return."""

from __future__ import annotations

from pydantic import Field

from app.core.schemas import IsoTime, JsonObject, Out, Page
from app.examples.schemas import DuplicateOut, ProvenanceOut, QualityFlag, QualityOut

# --- model versions, as every lookup shows them -------------------------------------------------------------


class ModelVersionView(Out):
    """A model version with its aliases and the erasure requests that tainted it; the counts present
    depend on the lookup (tokens and epochs of one example, matching or erased examples)."""

    id: str
    name: str
    version: int
    run_id: str | None
    status: str
    artifact_sha256: str
    aliases: list[str]
    tainted_by: list[str] = Field(description="ids of the erasure requests that tainted it")
    warning: str | None = Field(None, description="a tainted version an alias still serves")
    revision_id: str | None = None
    tokens: int | None = None
    epochs: int | None = None
    matching_examples: int | None = None
    erased_examples: int | None = None


# --- one example -------------------------------------------------------------------------------------------


class LineageExample(Out):
    id: str
    dataset_id: str
    status: str
    provenance: ProvenanceOut
    current_revision_id: str | None
    created_at: IsoTime
    updated_at: IsoTime


class LineageRevision(Out):
    id: str
    seq: int
    reason: str
    author: str | None
    comment: str | None
    content_sha256: str
    parent_id: str | None
    created_at: IsoTime
    current: bool
    erased: bool
    vaulted: bool = Field(description="the raw text is in the PII vault; the row keeps a marker")
    content: JsonObject | None = Field(None, description="for roles that may read content, with ?content=true")
    content_withheld: str | None = None


class LineageFinding(Out):
    id: str
    revision_id: str
    field_path: str
    entity_type: str
    start: int
    end: int
    score: float | None
    recognizer: str | None
    operator: str | None
    verdict: str | None
    verdict_by: str | None
    verdict_at: IsoTime | None


class LineageReview(Out):
    id: str
    revision_id: str
    reviewer: str
    decision: str
    reason_code: str | None
    comment: str | None
    at: IsoTime
    resolves_escalation: bool


class LineageSnapshot(Out):
    id: str
    name: str
    dataset_id: str
    manifest_sha256: str | None
    revision_id: str
    split: str
    contains_erased: bool
    created_at: IsoTime


class LineageRun(Out):
    id: str
    status: str
    snapshot_id: str | None
    base_model: str
    method: str
    created_at: IsoTime
    finished_at: IsoTime | None


class ErasureState(Out):
    erased: bool
    request_id: str | None
    erased_at: IsoTime | None
    reason: str | None
    requested_by: str | None


class AuditEventOut(Out):
    """An audit event; `hash_ok` says the row still matches the hash the chain committed to."""

    seq: int
    at: IsoTime
    actor: str
    action: str
    entity_type: str
    entity_id: str | None
    payload: JsonObject
    hash: str
    hash_ok: bool | None = Field(None, description="re-hashed on read (lineage views only)")
    prev_hash: str | None = None


class ExampleLineage(Out):
    example: LineageExample
    revisions: list[LineageRevision]
    pii_findings: list[LineageFinding]
    quality_flags: list[QualityFlag]
    quality: QualityOut | None
    duplicates: list[DuplicateOut]
    reviews: list[LineageReview]
    snapshots: list[LineageSnapshot]
    training_runs: list[LineageRun]
    model_versions: list[ModelVersionView]
    warnings: list[str]
    erasure: ErasureState | None
    content_visible: bool
    audit_events: list[AuditEventOut] | None = Field(None, description="with ?include_audit=true")


# --- one model version -------------------------------------------------------------------------------------


class LineageRunFull(Out):
    id: str
    status: str
    base_model: str
    method: str
    hyperparameters: JsonObject
    created_by: str
    created_at: IsoTime
    started_at: IsoTime | None
    finished_at: IsoTime | None


class LineageSnapshotRef(Out):
    id: str
    name: str
    dataset_id: str
    manifest_sha256: str | None
    member_count: int | None = None
    contains_erased: bool | None = None


class TrainedSummary(Out):
    """What a version trained on, counted by facet (a facet's null value is counted as "unknown")."""

    examples: int
    tokens: int
    by_source: dict[str, int]
    by_license: dict[str, int]
    by_legal_basis: dict[str, int]
    by_status: dict[str, int]
    by_reviewer: dict[str, dict[str, int]] = Field(description="reviewer -> decision -> count")
    by_pii_operator: dict[str, dict[str, int]] = Field(description="operator -> entity type -> count")
    by_comparison: dict[str, dict[str, int]] | None = Field(
        None, description="preference pairs: reviewer -> preferred (chosen, rejected, tie, both_bad) -> count, over "
                          "the pairwise picks on the trained revisions (on the judged revision for a swapped pair)")


class EvaluationFacts(Out):
    id: str
    status: str
    suites: list[str]
    results: JsonObject = Field(description="empty unless the evaluation succeeded")
    error_code: str | None
    finished_at: IsoTime | None


class PlantedCanary(Out):
    id: str
    template: str
    repetitions: int


class GateOverride(Out):
    alias: str
    actor: str
    at: IsoTime
    reason: str | None


class ModelLineage(Out):
    model_version: ModelVersionView
    run: LineageRunFull | None
    snapshot: LineageSnapshotRef | None
    summary: TrainedSummary
    warnings: list[str]
    evaluations: list[EvaluationFacts] | None = None
    canaries: list[PlantedCanary] | None = Field(None, description="planted canaries, never their secrets")
    gate_overrides: list[GateOverride] | None = Field(None, description="alias moves past failing gates")


class TrainedExample(Out):
    example_id: str
    revision_id: str
    dataset_id: str
    source: str
    source_ref: str | None
    license: str | None
    legal_basis: str | None
    status: str
    tokens: int
    epochs: int


class TrainedExamplePage(Page[TrainedExample]):
    pass


# --- reverse lookups ---------------------------------------------------------------------------------------


class MatchedExample(Out):
    example_id: str
    dataset_id: str
    status: str
    source: str
    source_ref: str | None
    license: str | None


class MatchedExamplePage(Page[MatchedExample]):
    pass


class MatchCounts(Out):
    examples: int
    by_status: dict[str, int]


class SnapshotMatch(Out):
    id: str
    name: str
    dataset_id: str
    manifest_sha256: str | None
    contains_erased: bool
    matching_examples: int


class ReverseLineage(Out):
    counts: MatchCounts
    examples: MatchedExamplePage
    snapshots: list[SnapshotMatch]
    model_versions: list[ModelVersionView]
    warnings: list[str]


class SourceLineage(ReverseLineage):
    source: str


class LicenseLineage(ReverseLineage):
    license: str


class ReviewerLineage(ReverseLineage):
    reviewer: str
    decisions: dict[str, int] = Field(description="decision -> count, over all of the reviewer's reviews")


# --- erasure -----------------------------------------------------------------------------------------------


class ErasedVersion(Out):
    name: str
    version: int
    id: str
    run_id: str | None
    status: str | None
    erased_examples: int | None


class ErasureSnapshot(Out):
    id: str
    name: str
    dataset_id: str
    manifest_sha256: str | None


class ErasureAlias(Out):
    name: str
    alias: str
    version: int
    model_version_id: str


class ErasureAffected(Out):
    examples: int
    snapshots: list[ErasureSnapshot]
    model_versions: list[ErasedVersion]
    aliases: list[ErasureAlias]


class ErasureBatches(Out):
    total: int
    done: int


class RetestModel(Out):
    model: str
    status: str = Field(description="pending until a later, untainted version was evaluated with the probes")
    version: int | None
    evaluation_id: str | None
    result: JsonObject | None
    finished_at: IsoTime | None


class ErasureRetest(Out):
    """Per tainted model: was a retrained version probed for the erased subject's strings (docs/lineage.md)."""

    strings_held: int = Field(description="sealed probes still held; never the strings")
    strings_expire_at: IsoTime | None
    models: list[RetestModel]


class ErasureOut(Out):
    id: str
    status: str = Field(description="previewed, running or completed")
    dry_run: bool
    reason: str
    selector: JsonObject = Field(description="as given, with raw values redacted")
    requested_by: str
    created_at: IsoTime
    finished_at: IsoTime | None
    replayed: bool
    affected: ErasureAffected
    already_erased: int
    datasets: dict[str, int] = Field(description="dataset id -> examples erased from it")
    example_ids: list[str] | None = Field(None, description="left out of lists")
    warnings: list[str]
    batches: ErasureBatches
    timings_s: dict[str, float]
    comments_redacted: dict[str, int] = Field(description=(
        "free text about the erased examples replaced by the marker '[redacted by erasure request <id>]', per "
        "table: reviews, pairwise_judgments, review_suggestions, revisions (edit comments); the rows, their "
        "decisions, reviewers, reason codes and times stay. In a preview: what execution would redact"))
    error: str | None
    retest: ErasureRetest | None = Field(description="null where the request was answered without its re-test "
                                                     "state (at creation, in lists)")


class ErasurePage(Page[ErasureOut]):
    pass
