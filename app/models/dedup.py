"""Near-duplicate detection: stored signatures, verified pairs, reviewer decisions, eval-set hits, and one
state row per dataset (index generation, rebuild progress, and the lock that serialises clustering)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAtMixin, IdMixin, utcnow

DECISIONS = ("not_duplicate", "allow_eval_overlap")


class DedupSignature(Base):
    """The MinHash signature of an example's current revision when it was deduplicated, so the index can be
    rebuilt (after a threshold change, or a Redis loss) without recomputing. ``spec_tag`` names the hash
    family, scheme, permutations and shingling; rows of another spec are recomputed, never compared."""

    __tablename__ = "dedup_signatures"
    __table_args__ = (Index("ix_dedup_signatures_dataset_id_example_id", "dataset_id", "example_id"),)

    example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"), primary_key=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    revision_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("example_revisions.id"))
    spec_tag: Mapped[str] = mapped_column(String(100))
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    # minhash FLAG_* bits: empty, short, char_shingles, truncated
    flags: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DedupPair(IdMixin, CreatedAtMixin, Base):
    """A verified near-duplicate pair (a < b by id). Clusters are the connected components of these, minus
    the pairs a reviewer separated; duplicate_links is derived from them."""

    __tablename__ = "dedup_pairs"
    __table_args__ = (UniqueConstraint("example_a_id", "example_b_id"),)

    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"), index=True)
    example_a_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"))
    example_b_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"), index=True)
    method: Mapped[str] = mapped_column(String(20))
    similarity: Mapped[float] = mapped_column(Float)


class DedupDecision(IdMixin, CreatedAtMixin, Base):
    """A human overrule. ``not_duplicate``: the example must not share a cluster with ``other_example_id``
    (a cannot-link constraint every later clustering honours). ``allow_eval_overlap``: a curator keeps the
    example in snapshots despite its overlap with the evaluation example ``other_example_id``."""

    __tablename__ = "dedup_decisions"
    __table_args__ = (UniqueConstraint("example_id", "other_example_id", "decision"),)

    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"), index=True)
    example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"), index=True)
    other_example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"), index=True)
    decision: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    decided_by: Mapped[str] = mapped_column(String(200))


class DedupEvalHit(IdMixin, CreatedAtMixin, Base):
    """A training example that near-duplicates an example of an evaluation set (``contaminates_eval``)."""

    __tablename__ = "dedup_eval_hits"
    __table_args__ = (UniqueConstraint("example_id", "eval_example_id"),)

    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"), index=True)
    example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"), index=True)
    eval_dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    eval_example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"))
    similarity: Mapped[float] = mapped_column(Float)
    # "minhash": Jaccard of the shingle sets; "containment": the overlap coefficient of word n-grams
    # (one text inside the other), see app/dedup/containment.py.
    method: Mapped[str] = mapped_column(String(20), default="minhash", server_default="minhash")


class DedupEvalNgram(Base):
    """64-bit hashes of an evaluation example's word n-grams, for the containment half of the eval
    guard: a training batch's n-grams are looked up here. Only evaluation sets store them (they are
    small); a row is deleted with its example's next revision or its erasure."""

    __tablename__ = "dedup_eval_ngrams"
    __table_args__ = (Index("ix_dedup_eval_ngrams_eval_dataset_id_h", "eval_dataset_id", "h"),)

    example_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("examples.id"), primary_key=True)
    h: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    eval_dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))


class DedupState(Base):
    """One row per dataset. Clustering takes this row's lock first, so two workers never compute the same
    cluster from two different snapshots; ``generation`` names the live Redis index (a rebuild fills the
    next generation, then switches)."""

    __tablename__ = "dedup_state"

    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    spec_tag: Mapped[str | None] = mapped_column(String(100))
    # {"status": "queued"|"running"|"done"|"failed", "done": n, "total": n, "started_at", "finished_at", ...}
    rebuild: Mapped[dict] = mapped_column(default=dict)
    # Evaluation sets: bumped with every batch of n-gram fingerprints stored, and the value the last
    # containment sweep of the training sets covered (see app/dedup/jobs.py: eval_sweep).
    ngram_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    swept_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DedupRebuild(IdMixin, CreatedAtMixin, Base):
    """One re-index of a dataset (after a policy change, or to recover a lost index), with its progress.
    Its own row, not DedupState's, so progress commits while the rebuild holds the state lock."""

    __tablename__ = "dedup_rebuilds"

    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), default="queued")  # queued, running, done, failed
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    requested_by: Mapped[str] = mapped_column(String(200))
    result: Mapped[dict] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
