from __future__ import annotations

import datetime as dt

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, IdMixin


class StageLease(IdMixin, Base):
    """A stage task's claim on its batch, committed before the batch's own transaction starts and
    deleted in that transaction's commit. While the task runs it pushes `expires_at` forward; a lease
    that stops moving belongs to a task that died, and the sweeper re-enqueues its examples."""

    __tablename__ = "stage_leases"
    __table_args__ = (Index("ix_stage_leases_expires_at", "expires_at"),)

    stage: Mapped[str] = mapped_column(String(32))
    example_ids: Mapped[list]
    holder: Mapped[str] = mapped_column(String(200))  # host:pid, for an operator reading the table
    claimed_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]
