from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, utcnow

GENESIS_HASH = "0" * 64


class AuditEvent(Base):
    """Append-only and hash-chained: `hash` = sha256 over the canonical payload including
    `prev_hash`, so editing or deleting any row breaks every hash after it."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    occurred_at: Mapped[dt.datetime]
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100), index=True)
    entity_type: Mapped[str] = mapped_column(String(50))
    entity_id: Mapped[str | None] = mapped_column(String(100), index=True)
    payload: Mapped[dict]
    # The workspace of what the event is about (the dataset the request resolved); null for events
    # about no workspace's data (keys, workspaces, throttling). Part of the hash when set.
    workspace_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row: the chain's tip. Appending updates it first, which takes a row lock on PostgreSQL
    (and the write lock on SQLite), so concurrent writers queue instead of forking the chain."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """One row: the audit chain is known good up to `seq`, whose hash was `hash`. Verification resumes
    from here instead of re-hashing millions of events; `?full=true` ignores it and walks everything."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    verified_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    full_verified_at: Mapped[dt.datetime | None]
