"""Erasure requests (GDPR Art. 17), the taints they leave on model versions, and per-version facets."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, PrimaryKeyConstraint, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAtMixin, IdMixin, utcnow

ERASURE_STATUSES = ("previewed", "running", "completed", "failed")


class ErasureRequest(IdMixin, CreatedAtMixin, Base):
    """One request to forget a data subject. A dry run is kept too (status `previewed`): what a DPO was
    shown before deciding is part of the record. `selector_sha256` is the canonical selector's hash, so a
    replay of an executed request finds it without comparing JSON."""

    __tablename__ = "erasure_requests"

    selector: Mapped[dict]
    selector_sha256: Mapped[str] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(Text)
    dry_run: Mapped[bool] = mapped_column(default=False)
    confirm: Mapped[bool] = mapped_column(default=False)
    status: Mapped[str] = mapped_column(String(20))
    requested_by: Mapped[str] = mapped_column(String(200))
    # {"examples": n, "example_ids": [...], "snapshots": [...], "model_versions": [...], "aliases": [...],
    #  "datasets": {...}, "batches": n}: what was (or, for a dry run, would be) touched.
    report: Mapped[dict] = mapped_column(default=dict)
    batches_done: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[dt.datetime | None]


class ErasureRetest(Base):
    """One model an erasure tainted, and whether a version retrained without the erased examples was
    probed for the erased subject's strings (issue 17 scope 7; app/lineage/retest.py). `pending` until an
    evaluation of such a version succeeds (`done`, with its figures) or the strings' hold runs out
    (`expired`). `evaluation_id`: the evaluation that carries the probes now (a failed one leaves the row
    pending for the next)."""

    __tablename__ = "erasure_retests"
    __table_args__ = (PrimaryKeyConstraint("erasure_request_id", "model_name"),)

    erasure_request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("erasure_requests.id"))
    model_name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    evaluation_id: Mapped[uuid.UUID | None]
    model_version: Mapped[int | None] = mapped_column(Integer)
    # {"probed", "extracted", "rate", "by_entity_type", "hits": [{"probe_id", "entity_type", "value_sha256"}]}
    result: Mapped[dict | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]


class ErasureRetestStrings(IdMixin, Base):
    """The erased subject's strings a re-test probes for, sealed with the PII vault's key ring and bound to
    the request and batch: a JSON list of {"probe_id", "entity_type", "prefix", "value"}. Held only while a
    re-test of the request is pending; deleted when the last one is done or the hold expires."""

    __tablename__ = "erasure_retest_strings"

    erasure_request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("erasure_requests.id"), index=True)
    batch: Mapped[int] = mapped_column(Integer)
    probes: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[str] = mapped_column(String(32))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]


class ModelVersionTaint(Base):
    """Why a model version is `tainted`: the erasure request(s) that removed examples it trained on.
    No foreign key to model_versions: the registry's table belongs to the training domain and may be
    partitioned or rebuilt there; the id is only ever joined, never cascaded."""

    __tablename__ = "model_version_taints"
    __table_args__ = (PrimaryKeyConstraint("model_version_id", "erasure_request_id"),)

    model_version_id: Mapped[uuid.UUID]
    erasure_request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("erasure_requests.id"), index=True)
    examples: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ModelVersionFacet(Base):
    """What a model version was trained on, counted once: examples and tokens per source, license and
    legal basis. A version's training set never changes, so these are computed when its run succeeds
    (app/lineage/facets.py) and "every model trained on CC-BY-NC data" is an index lookup here instead of
    an aggregate over hundreds of thousands of lineage rows. The row with facet '*' marks a version as
    counted; versions without it are answered from the lineage rows directly."""

    __tablename__ = "model_version_facets"
    __table_args__ = (
        PrimaryKeyConstraint("model_version_id", "facet", "value"),
        Index("ix_model_version_facets_facet_value", "facet", "value"),
    )

    model_version_id: Mapped[uuid.UUID]
    facet: Mapped[str] = mapped_column(String(20))
    # '' for an unknown value (NULL cannot be part of the key).
    value: Mapped[str] = mapped_column(String(200))
    examples: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(BigInteger)
