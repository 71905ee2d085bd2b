from __future__ import annotations

import datetime as dt

from sqlalchemy import String
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
