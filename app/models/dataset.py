from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAtMixin, IdMixin

FORMATS = ("chat", "instruction", "completion", "preference")


class Dataset(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Everything reached through the dataset (examples, reviews, snapshots, runs...) belongs to it too.
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id"), index=True)
    format: Mapped[str] = mapped_column(String(20))
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str | None] = mapped_column(String(200))
    # Policies are JSON so later capabilities extend them without a migration per knob; each has a
    # pydantic schema that validates it at the API boundary.
    review_policy: Mapped[dict] = mapped_column(default=dict)
    pii_policy: Mapped[dict] = mapped_column(default=dict)
    # The PII preset chosen at creation (app/pii/schemas.py PROFILES); pii_policy is laid over it.
    pii_profile: Mapped[str] = mapped_column(String(40), default="default", server_default="default")
    dedup_policy: Mapped[dict] = mapped_column(default=dict)
    quality_rules: Mapped[dict] = mapped_column(default=dict)
    is_eval_set: Mapped[bool] = mapped_column(default=False)
    # Revalidation and bias-report thresholds (app/datasets/policies.py GovernancePolicy).
    governance_policy: Mapped[dict] = mapped_column(default=dict, server_default="{}")
    # Curator-written intended uses, limitations, maintainer (DatasetDocumentation): read by the datasheet,
    # Croissant's RAI fields and the technical documentation.
    documentation: Mapped[dict] = mapped_column(default=dict, server_default="{}")
