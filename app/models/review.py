from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import Float, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAtMixin, IdMixin

DECISIONS = ("approve", "reject", "request_changes")


class Review(IdMixin, CreatedAtMixin, Base):
    """One human decision on one revision. Approvals count per revision, so an edit (a new revision)
    resets them without deleting anything: the history stays for lineage and agreement stats."""

    __tablename__ = "reviews"
    __table_args__ = (
        # The database, not only the service, refuses a second decision by the same key on a revision.
        UniqueConstraint("revision_id", "reviewer_key_id"),
        Index("ix_reviews_example_id_revision_id", "example_id", "revision_id"),
        Index("ix_reviews_dataset_id_created_at", "dataset_id", "created_at"),
    )

    example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"))
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    revision_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("example_revisions.id"))
    reviewer: Mapped[str] = mapped_column(String(200))
    reviewer_key_id: Mapped[uuid.UUID]
    decision: Mapped[str] = mapped_column(String(20))
    reason_code: Mapped[str | None] = mapped_column(String(64))
    comment: Mapped[str | None] = mapped_column(Text)
    # When the reviewer's lease began, if they held one: handling time = created_at - leased_at.
    leased_at: Mapped[dt.datetime | None]
    # An admin settling an escalated conflict; their decision is final whatever the counts say.
    resolves_escalation: Mapped[bool] = mapped_column(default=False)


class ReviewLease(Base):
    """At most one live lease per example (the primary key): the queue's guarantee that two
    reviewers never hold the same item at once. An expired row is simply taken over."""

    __tablename__ = "review_leases"
    __table_args__ = (Index("ix_review_leases_holder_key_id", "holder_key_id"),)

    example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"), primary_key=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"), index=True)
    revision_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("example_revisions.id"))
    holder_key_id: Mapped[uuid.UUID]
    holder: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]


class ReviewEscalation(Base):
    """A conflict the dataset's policy sends to an admin; the example stays in pending_review but
    leaves ordinary reviewers' queues until an admin decides."""

    __tablename__ = "review_escalations"

    example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"), primary_key=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"), index=True)
    revision_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("example_revisions.id"))
    created_at: Mapped[dt.datetime]
    reason: Mapped[str] = mapped_column(Text)


class ReviewSuggestion(IdMixin, CreatedAtMixin, Base):
    """A machine opinion (LLM judge, classifier) shown to reviewers; never counts as a decision."""

    __tablename__ = "review_suggestions"
    __table_args__ = (Index("ix_review_suggestions_example_id_created_at", "example_id", "created_at"),)

    example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"))
    revision_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("example_revisions.id"))
    source: Mapped[str] = mapped_column(String(200))  # the key that posted it
    model: Mapped[str | None] = mapped_column(String(200))
    label: Mapped[str | None] = mapped_column(String(64))  # approve, reject, request_changes or free label
    score: Mapped[float | None] = mapped_column(Float)
    reason_code: Mapped[str | None] = mapped_column(String(64))
    comment: Mapped[str | None] = mapped_column(Text)


class ReviewSessionRevocation(Base):
    """A signed-out reviewer-page session. The sealed cookie is self-contained, so deleting it in the
    browser does not stop a copy of it from replaying until it expires; its id listed here does. A row
    is useless once the cookie would have expired anyway, and is deleted then."""

    __tablename__ = "review_session_revocations"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class PairwiseJudgment(IdMixin, CreatedAtMixin, Base):
    """One reviewer's comparison of a preference revision's two answers. The reviewer saw them blind, as A
    (left) and B (right) in an order drawn per reviewer and example; `left` records which stored answer was
    on the left, `pick` what they pressed and `preferred` what it means against the stored order."""

    __tablename__ = "pairwise_judgments"
    __table_args__ = (
        UniqueConstraint("revision_id", "reviewer_key_id"),
        Index("ix_pairwise_judgments_dataset_id_created_at", "dataset_id", "created_at"),
    )

    example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"))
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    revision_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("example_revisions.id"))
    review_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("reviews.id"))
    reviewer: Mapped[str] = mapped_column(String(200))
    reviewer_key_id: Mapped[uuid.UUID]
    left: Mapped[str] = mapped_column(String(10))  # chosen | rejected
    pick: Mapped[str] = mapped_column(String(10))  # a | b | tie | both_bad
    preferred: Mapped[str] = mapped_column(String(10))  # chosen | rejected | tie | both_bad
    reason_code: Mapped[str] = mapped_column(String(64))
    comment: Mapped[str | None] = mapped_column(Text)


class PairwiseVerdict(Base):
    """The settled majority of an example's comparisons, written when its review policy approves it.
    `revision_id` is the revision the reviewers judged, `current_revision_id` the one that holds the verdict
    (a `pairwise_swap` revision when the majority preferred the stored rejected answer). Snapshots leave
    out tie and both_bad verdicts of the current revision (rule `pair_unusable`)."""

    __tablename__ = "pairwise_verdicts"

    example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"), primary_key=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"), index=True)
    revision_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("example_revisions.id"))
    current_revision_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("example_revisions.id"))
    verdict: Mapped[str] = mapped_column(String(12))  # chosen | swapped | tie | both_bad | no_majority
    counts: Mapped[dict]
    settled_at: Mapped[dt.datetime]
