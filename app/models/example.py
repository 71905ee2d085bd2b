from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAtMixin, IdMixin, utcnow

STATUSES = (
    "ingested",
    "scrubbed",
    "pending_review",
    "changes_requested",
    "approved",
    "rejected",
    "duplicate",
    "erased",
)
REVISION_REASONS = ("ingest", "pii_scrub", "reviewer_edit", "pii_verdict", "erasure", "pairwise_swap")


class IngestBatch(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "ingest_batches"

    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"), index=True)
    created_by: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(20))  # api, import, cli
    atomic: Mapped[bool] = mapped_column(default=False)
    defaults: Mapped[dict] = mapped_column(default=dict)
    # open (an import is writing), completed, failed (atomic, nothing kept), interrupted (the import
    # died: the counts and lines_committed below are exactly what its committed transactions stored).
    status: Mapped[str] = mapped_column(String(20), default="open", index=True)
    accepted: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[int] = mapped_column(default=0)
    unchanged: Mapped[int] = mapped_column(default=0)
    exact_duplicates: Mapped[int] = mapped_column(default=0)
    # The first errors only: a million bad lines should not make a million-element JSON row.
    errors: Mapped[list] = mapped_column(default=list)
    finished_at: Mapped[dt.datetime | None]
    # Updated inside every write transaction of a streamed import: every line up to this number is
    # either stored or listed in `errors`, whatever happened to the import afterwards.
    lines_committed: Mapped[int] = mapped_column(default=0, server_default="0")
    # The import's heartbeat (its last write); an open batch older than the lease is interrupted.
    last_seen: Mapped[dt.datetime | None]


class Example(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "examples"
    __table_args__ = (
        # Re-sending the same source ref is idempotent; NULL refs never collide.
        UniqueConstraint("dataset_id", "source", "source_ref"),
        Index("ix_examples_dataset_id_status_id", "dataset_id", "status", "id"),
        Index("ix_examples_stage", "stage"),
    )

    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    status: Mapped[str] = mapped_column(String(32), default="ingested")
    # Next pipeline stage to run (quality, pii, dedup, ...); NULL once the pipeline is done.
    stage: Mapped[str | None] = mapped_column(String(32))
    current_revision_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey(
            "example_revisions.id",
            use_alter=True,
            deferrable=True,
            initially="DEFERRED",
        )
    )
    source: Mapped[str] = mapped_column(String(200))
    source_ref: Mapped[str | None] = mapped_column(String(500))
    collected_at: Mapped[dt.datetime | None]
    license: Mapped[str | None] = mapped_column(String(100), index=True)
    legal_basis: Mapped[str | None] = mapped_column(String(100))
    ingest_batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ingest_batches.id"), index=True)
    ingested_by: Mapped[str] = mapped_column(String(200))
    meta: Mapped[dict] = mapped_column("metadata", default=dict)
    tags: Mapped[list] = mapped_column(default=list)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow, server_default=func.now())
    # When the pipeline last finished with this example (scrub, dedup and the checks all run on its
    # current content); NULL until it has. Governance policies' `revalidate_after_days` reads it.
    last_validated_at: Mapped[dt.datetime | None]


class ExampleRevision(IdMixin, CreatedAtMixin, Base):
    """Immutable: content and hash never change after insert (erasure replaces content with a
    tombstone but keeps the hash, so manifests and the audit chain still verify)."""

    __tablename__ = "example_revisions"
    __table_args__ = (UniqueConstraint("example_id", "seq"),)

    example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"))
    seq: Mapped[int] = mapped_column(Integer)
    content: Mapped[dict]
    content_sha256: Mapped[str] = mapped_column(String(64), index=True)
    parent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("example_revisions.id"))
    reason: Mapped[str] = mapped_column(String(32))
    author: Mapped[str] = mapped_column(String(200))
    comment: Mapped[str | None] = mapped_column(Text)
    # Derived annotations written once by the quality stage; not part of the content hash.
    quality: Mapped[dict | None]


class DuplicateLink(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "duplicate_links"
    __table_args__ = (UniqueConstraint("example_id", "canonical_example_id", "method"),)

    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"), index=True)
    example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"), index=True)
    canonical_example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"), index=True)
    method: Mapped[str] = mapped_column(String(20))  # exact, minhash, semantic
    similarity: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(200), default="system")
    note: Mapped[str | None] = mapped_column(Text)
