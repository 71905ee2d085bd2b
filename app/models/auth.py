from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAtMixin, IdMixin

ROLES = ("admin", "curator", "reviewer", "trainer", "auditor")


class ApiKey(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "api_keys"

    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    # The public prefix finds the row; only the sha256 of the whole key is stored. Keys are 256-bit
    # random, so a fast hash is enough (a slow KDF protects low-entropy passwords, not these).
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str | None] = mapped_column(String(200))
    revoked_at: Mapped[dt.datetime | None]
    # Set for keys of people; machine keys (trainer, judges) cannot count as human reviewers.
    is_human: Mapped[bool] = mapped_column(default=True)
    # Unset: the key does not expire. Checked on every request, like revocation.
    expires_at: Mapped[dt.datetime | None]
    # Coalesced: written at most once per `key_last_used_interval_s` per key and API process
    # (app/core/auth.py), so it is "used within the last few minutes", not the last request's time.
    last_used_at: Mapped[dt.datetime | None]
    rotated_at: Mapped[dt.datetime | None]


class ApiKeyPreviousSecret(Base):
    """A rotated-out secret, still accepted until `valid_until` (the rotation's overlap window). Kept
    apart from api_keys so the current secret's lookup stays one indexed probe of one table; only a
    prefix that is not current falls through to here."""

    __tablename__ = "api_key_previous_secrets"

    prefix: Mapped[str] = mapped_column(String(16), primary_key=True)
    key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    key_sha256: Mapped[str] = mapped_column(String(64))
    valid_until: Mapped[dt.datetime]
    rotated_at: Mapped[dt.datetime]


class Workspace(IdMixin, CreatedAtMixin, Base):
    """A tenant: datasets belong to one, and everything reached through a dataset inherits it."""

    __tablename__ = "workspaces"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_by: Mapped[str | None] = mapped_column(String(200))


class WorkspaceMember(Base):
    """A key's role in one workspace. `admin` keys are global and hold no memberships."""

    __tablename__ = "workspace_members"

    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"),
                                                    primary_key=True)
    key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True,
                                              index=True)
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(default=lambda: dt.datetime.now(dt.UTC))
    created_by: Mapped[str | None] = mapped_column(String(200))
