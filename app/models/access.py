"""Least privilege (issue 21): purpose-bound PII reveal grants."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAtMixin, IdMixin

GRANT_STATUSES = ("pending", "approved", "revoked")


class PiiGrant(IdMixin, CreatedAtMixin, Base):
    """Permission for one key to reveal raw PII of one dataset,
    for a stated purpose, until `expires_at`. Requested by one admin, usable only once a second admin
    approved it, revocable at any time. Every reveal's audit event names its grant."""

    __tablename__ = "pii_grants"
    __table_args__ = (Index("ix_pii_grants_key_id_status", "key_id", "status"),)

    key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[dt.datetime]
    # pending -> approved -> revoked, or pending -> revoked (withdrawn, refused). Expiry is not a status:
    # it is read from `expires_at` at each reveal, so it takes effect at the second, with no sweeper.
    status: Mapped[str] = mapped_column(String(20), default="pending")
    requested_by: Mapped[str] = mapped_column(String(200))
    requested_by_key_id: Mapped[uuid.UUID]
    approved_by: Mapped[str | None] = mapped_column(String(200))
    approved_by_key_id: Mapped[uuid.UUID | None]
    approved_at: Mapped[dt.datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(200))
    revoked_at: Mapped[dt.datetime | None]
    revoke_reason: Mapped[str | None] = mapped_column(Text)
