"""Revalidation (issue 19): what last validated each example, the recognizer sets that did, and the
background revalidations that bring examples in line with the engines and policies as they are now."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAtMixin, IdMixin


class ExampleValidation(Base):
    """One row per example: when the pipeline (or a re-scrub, or a revalidation) last checked its current
    content, and with what. Written in the transaction of the step that validated it. The reviews of the
    validated revision are read beside it (reviews.revision_id), never copied."""

    __tablename__ = "example_validations"
    __table_args__ = (Index("ix_example_validations_dataset_id_example_id", "dataset_id", "example_id"),)

    example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"), primary_key=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    revision_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("example_revisions.id"))
    validated_at: Mapped[dt.datetime]
    # pipeline, rescrub, revalidation, migration
    via: Mapped[str] = mapped_column(String(20))
    # NULL where no scrub ran (scrubbing off for the dataset) or, from the migration, where nobody knows.
    pii_engine: Mapped[str | None] = mapped_column(String(100))
    spacy_model: Mapped[str | None] = mapped_column(String(100))
    recognizers: Mapped[str | None] = mapped_column(String(64))
    pii_policy_sha256: Mapped[str | None] = mapped_column(String(64))
    dedup_policy_sha256: Mapped[str | None] = mapped_column(String(64))
    revalidation_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("revalidations.id"))


class PiiRecognizerSet(CreatedAtMixin, Base):
    """A recognizer set by its version (sha256 over its members' fingerprints), with the members: the diff
    between the set that validated an example and the current one names the recognizers that changed."""

    __tablename__ = "pii_recognizer_sets"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    # {recognizer name: fingerprint}
    recognizers: Mapped[dict]


class Revalidation(IdMixin, CreatedAtMixin, Base):
    """A background revalidation of one dataset. Progress is committed with each batch, so a crash loses at
    most the batch in flight, which the redelivered task redoes; a newer request for the dataset supersedes
    this one (it stops at its next batch)."""

    __tablename__ = "revalidations"
    __table_args__ = (Index("ix_revalidations_dataset_id_status", "dataset_id", "status"),)

    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    # queued, running, done, superseded, failed
    status: Mapped[str] = mapped_column(String(20), default="queued")
    # What fired: pii_engine, spacy_model, recognizers, dedup_policy, age, requested
    triggers: Mapped[list] = mapped_column(default=list)
    # "changed" (the examples whose record differs from the current versions) or "all"
    scope: Mapped[str] = mapped_column(String(20), default="changed")
    requested_by: Mapped[str] = mapped_column(String(200))
    # The versions examples are brought to; filled by the worker that starts it (its engine is the truth).
    target: Mapped[dict | None]
    # Phase: pii (re-scrub batches), dedup (rebuild under a changed dedup policy), done
    phase: Mapped[str] = mapped_column(String(20), default="pii")
    cursor: Mapped[uuid.UUID | None]
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    changed: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    approvals_reset: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    batches: Mapped[int] = mapped_column(Integer, default=0)
    # How the pii phase decided which examples to re-scrub (full, or the recognizer prefilter and why).
    plan: Mapped[dict] = mapped_column(default=dict)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    superseded_by: Mapped[uuid.UUID | None]
    error: Mapped[str | None] = mapped_column(Text)
