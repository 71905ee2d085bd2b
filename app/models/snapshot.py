from __future__ import annotations

import uuid

from sqlalchemy import Float, ForeignKey, Index, Integer, PrimaryKeyConstraint, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAtMixin, IdMixin

SPLITS = ("train", "validation")


class Snapshot(IdMixin, CreatedAtMixin, Base):
    """A frozen set of example revisions. Immutable after insert, with one exception the lineage
    issue owns: `contains_erased` flips to true when a member is erased (exports then omit it, while
    `manifest_sha256` keeps the hash of the original freeze on record). `merkle_root` is written at
    freeze; only snapshots frozen before it existed get it filled in once, later, from their members."""

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("dataset_id", "name"),)

    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # The dataset's task format at freeze time; exports convert from it.
    format: Mapped[str] = mapped_column(String(20))
    manifest_sha256: Mapped[str] = mapped_column(String(64), index=True)
    # RFC 6962 root over the same sorted lines as manifest_sha256 (app/snapshots/merkle.py): proves one
    # member without the whole list. NULL only for snapshots frozen before the column existed.
    merkle_root: Mapped[str | None] = mapped_column(String(64))
    # {"train": sha, "validation": sha}: same formula over one split, so a split export verifies too.
    split_manifests: Mapped[dict] = mapped_column(default=dict)
    filter: Mapped[dict] = mapped_column(default=dict)
    validation_fraction: Mapped[float] = mapped_column(Float)
    seed: Mapped[str] = mapped_column(String(100))
    stratify_by: Mapped[str | None] = mapped_column(String(100))
    member_count: Mapped[int] = mapped_column(Integer)
    # {"train", "validation", "excluded": {rule: n}, "considered"}
    counts: Mapped[dict] = mapped_column(default=dict)
    # {"sources": {...}, "licenses": {...}, "collected_at": {"min", "max"}, ...}: facts of the
    # members at freeze time, so manifest.json and the datasheet need no re-aggregation.
    stats: Mapped[dict] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(200))
    contains_erased: Mapped[bool] = mapped_column(default=False)


class SnapshotMember(Base):
    """One revision per example per snapshot. `example_id` and `content_sha256` are copied from the
    revision so a diff, an erasure ("which snapshots hold this example") and the manifest never touch
    the wide revisions table.

    On PostgreSQL the table is LIST-partitioned by snapshot_id, one partition per snapshot (schema
    `snapshot_parts`): a freeze fills a fresh table and builds its indexes once, in bulk, which is
    several times cheaper than a million single-row index inserts. No foreign keys, for the same reason
    (a million RI trigger checks); every row is written by INSERT ... SELECT from the rows it names,
    and examples and revisions are never deleted (erasure tombstones them).
    """

    __tablename__ = "snapshot_members"
    __table_args__ = (
        PrimaryKeyConstraint("snapshot_id", "example_id"),
        Index("ix_snapshot_members_example_id", "example_id"),
    )

    snapshot_id: Mapped[uuid.UUID]
    example_id: Mapped[uuid.UUID]
    revision_id: Mapped[uuid.UUID]
    split: Mapped[str] = mapped_column(String(10))
    content_sha256: Mapped[str] = mapped_column(String(64))
