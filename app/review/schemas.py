"""Review request bodies and responses, pure pydantic (the response models build on app.core.schemas
and the example view's models). The review policy lives with the dataset that stores it
(app.datasets.policies)."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.schemas import ErrorInfo, IsoTime, Items, JsonObject, Out
from app.examples.schemas import ExampleOut, QualityFlag, RevisionOut

Decision = Literal["approve", "reject", "request_changes"]
Pick = Literal["a", "b", "tie", "both_bad"]
# Why a reviewer picked what they picked: one per pick kind, then the shared ones.
PAIRWISE_REASON_CODES = ("more_helpful", "more_accurate", "safer", "better_written", "follows_instructions",
                         "equally_good", "both_unsafe", "both_wrong", "both_off_topic", "other")


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Decision
    revision_id: uuid.UUID
    reason_code: str | None = Field(default=None, max_length=64)
    comment: str | None = Field(default=None, max_length=10_000)


class PairwiseIn(BaseModel):
    """A pairwise pick on a preference example: `a` is the answer shown on the left, `b` the right one, in
    the order the queue item's `pairwise` block gives for the caller."""

    model_config = ConfigDict(extra="forbid")

    revision_id: uuid.UUID
    pick: Pick
    reason_code: str = Field(max_length=64, description="one of " + ", ".join(PAIRWISE_REASON_CODES))
    comment: str | None = Field(default=None, max_length=10_000)


class BulkItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    example_id: uuid.UUID
    revision_id: uuid.UUID


class BulkReviewIn(BaseModel):
    """One decision applied to many examples; each item names the revision it was shown."""

    model_config = ConfigDict(extra="forbid")

    decision: Decision
    items: list[BulkItem] = Field(min_length=1, max_length=500)
    reason_code: str | None = Field(default=None, max_length=64)
    comment: str | None = Field(default=None, max_length=10_000)
    # All or nothing: the first refusal refuses the whole request.
    atomic: bool = False


class RevisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: dict[str, Any]
    comment: str | None = Field(default=None, max_length=10_000)
    # The revision the editor started from; an edit on top of a newer one is refused (409).
    base_revision_id: uuid.UUID | None = None


class SuggestionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision_id: uuid.UUID | None = None
    model: str | None = Field(default=None, max_length=200)
    label: str | None = Field(default=None, max_length=64)
    score: float | None = None
    reason_code: str | None = Field(default=None, max_length=64)
    comment: str | None = Field(default=None, max_length=10_000)


# --- responses -----------------------------------------------------------------------------------------------


class QueueRevision(Out):
    id: str
    seq: int
    reason: str
    author: str | None
    content: JsonObject | None
    content_sha256: str


class PairwiseView(Out):
    prompt: str | list[JsonObject]
    a: str = Field(description="the answer shown on the left")
    b: str = Field(description="the answer shown on the right")
    reason_codes: list[str]


class QueueItem(Out):
    example_id: str
    revision_id: str
    dataset_id: str
    lease_expires_at: IsoTime
    leased_at: IsoTime
    revision: QueueRevision
    quality_flags: list[QualityFlag]
    example: ExampleOut | None = Field(None, description="with view=full only")
    pairwise: PairwiseView | None = Field(None, description="preference examples: the prompt and both answers, "
                                                            "blind, in this reviewer's order")


class ReviewQueue(Items[QueueItem]):
    """The items leased to the caller now (up to `limit`); empty when nothing waits."""


class LeaseRenewed(Out):
    example_id: str
    revision_id: str
    lease_expires_at: IsoTime


class LeaseReleased(Out):
    example_id: str
    released: bool = Field(description="false when the caller held no lease")


class ReviewOut(Out):
    id: str
    example_id: str
    revision_id: str
    reviewer: str
    decision: Decision
    reason_code: str | None
    comment: str | None
    created_at: IsoTime


class ReviewedExample(Out):
    id: str
    status: str
    revision_id: str
    approvals: int
    required_approvals: int
    escalated: bool


class ReviewCreated(ReviewOut):
    """The review at the top level (it is what was created), the example's new state beside it."""

    status: str = Field(description="the example's status after this decision")
    review: ReviewOut
    example: ReviewedExample


class BulkItemResult(Out):
    example_id: str
    ok: bool
    status: str | None = Field(None, description="when ok")
    review_id: str | None = Field(None, description="when ok")
    error: ErrorInfo | None = Field(None, description="when refused")


class BulkResult(Out):
    decided: int
    refused: int
    items: list[BulkItemResult]


class EditedRevision(RevisionOut):
    comment: str | None


class RevisionCreated(EditedRevision):
    """The new revision at the top level (it is what was created), the example's state beside it."""

    example_id: str
    status: str
    stage: str | None
    revision: EditedRevision


class DecisionCounts(Out):
    decisions: int
    approve: int
    reject: int
    request_changes: int
    decisions_last_hour: int
    decisions_last_day: int
    median_seconds_to_decision: float | None = Field(description="from the revision's creation to the decision")
    median_handling_seconds: float | None = Field(description="from taking the lease to deciding")


class DatasetReviewStats(DecisionCounts):
    id: str
    name: str
    pending: int
    approved: int
    rejected: int
    changes_requested: int
    escalated: int
    in_pipeline: int


class KappaPair(Out):
    a: str
    b: str
    items: int
    kappa: float | None
    percent_agreement: float | None


class Agreement(Out):
    items_with_several_reviews: int
    reviewers: int
    percent_agreement: float | None
    krippendorff_alpha: float | None
    cohen_kappa_pairs: list[KappaPair]


class ReviewerStats(DecisionCounts):
    reviewer: str
    agreement_with_others: float | None


class PairwiseReviewerStats(Out):
    reviewer: str
    judgments: int
    picks: dict[str, int] = Field(description="a, b, tie, both_bad as pressed")
    preferred: dict[str, int] = Field(description="chosen, rejected, tie, both_bad against the stored order")
    left_share: float | None = Field(description="position bias: the share of a/b picks that went to the left "
                                                 "answer (0.5 = none)")
    agreement_with_others: float | None


class PairwiseStats(Out):
    judgments: int
    items: int
    preferred: dict[str, int]
    agreement: Agreement = Field(description="over the four labels chosen / rejected / tie / both_bad")
    verdicts: dict[str, int] = Field(description="settled examples by verdict: chosen, swapped, tie, both_bad, "
                                                 "no_majority")
    reviewers: list[PairwiseReviewerStats]


class PairwiseResult(Out):
    example_id: str
    revision_id: str
    pick: str
    left: str = Field(description="which stored answer was on the left (chosen or rejected)")
    preferred: str = Field(description="what the pick means: chosen, rejected, tie or both_bad")
    reason_code: str
    review: JsonObject = Field(description="the approval this pick recorded under the review policy")
    example: JsonObject
    verdict: JsonObject | None = Field(description="set when this pick completed the policy: {verdict, counts, "
                                                   "revision_id, current_revision_id}")


class ReviewStats(Out):
    dataset: DatasetReviewStats
    agreement: Agreement
    reviewers: list[ReviewerStats]
    pairwise: PairwiseStats | None = Field(None, description="preference datasets with pairwise picks")
    policy: JsonObject = Field(description="the effective review policy, every default filled in")
