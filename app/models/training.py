"""Training runs, their events, the model registry (versions, aliases, alias history) and lineage."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAtMixin, IdMixin, JSONType

RUN_STATUSES = ("validating", "queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
METHODS = ("lora", "qlora")
EVENT_KINDS = ("log", "metrics")
EVENT_LEVELS = ("info", "warn", "error")
VERSION_STATUSES = ("candidate", "deployed", "retired", "tainted")

# An integer key that autoincrements on both backends (SQLite only does so for INTEGER PRIMARY KEY).
SerialId = BigInteger().with_variant(Integer(), "sqlite")


class TrainingRun(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "training_runs"
    __table_args__ = (
        Index("ix_training_runs_status_heartbeat_at", "status", "heartbeat_at"),
        # A client's retry of a create (Idempotency-Key header) finds the run it already made: the
        # database, not a lookup race, guarantees one GPU run per key and caller.
        UniqueConstraint("created_by", "idempotency_key", name="uq_training_runs_created_by_idempotency_key"),
    )

    snapshot_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("snapshots.id"), index=True)
    # The snapshot's manifest as the run was created against it; the trainer re-derives it from the
    # export and refuses to train on anything else.
    expected_manifest_sha256: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(String(1000))
    method: Mapped[str] = mapped_column(String(10))
    # As the caller gave them: the trainer owns the defaults (a default stored here would freeze today's
    # value into every run and override a better one the trainer ships later).
    hyperparameters: Mapped[dict] = mapped_column(default=dict)
    model_name: Mapped[str] = mapped_column(String(200), index=True)
    # `metadata` is reserved on declarative classes; the column keeps the API's name.
    meta: Mapped[dict] = mapped_column("metadata", default=dict)
    status: Mapped[str] = mapped_column(String(20))
    # Which status the run was in when it failed (validating, queued, running).
    failed_in: Mapped[str | None] = mapped_column(String(20))
    error_code: Mapped[str | None] = mapped_column(String(50))
    error_message: Mapped[str | None] = mapped_column(Text)
    worker_host: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[dt.datetime | None]
    queued_at: Mapped[dt.datetime | None]
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    # While running: the latest metrics event's figures; once succeeded: the trainer's final metrics.
    metrics: Mapped[dict] = mapped_column(default=dict)
    event_count: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(200))
    cancelled_by: Mapped[str | None] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # sha256 of the create request: the same key with a different request is refused, not merged.
    request_sha256: Mapped[str | None] = mapped_column(String(64))


class TrainingRunEvent(Base):
    __tablename__ = "training_run_events"
    __table_args__ = (Index("ix_training_run_events_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("training_runs.id"))
    kind: Mapped[str] = mapped_column(String(20))
    level: Mapped[str] = mapped_column(String(10))
    message: Mapped[str] = mapped_column(Text)
    step: Mapped[int | None] = mapped_column(Integer)
    data: Mapped[dict] = mapped_column(default=dict)
    at: Mapped[dt.datetime]


class RegisteredModel(CreatedAtMixin, Base):
    """One row per model name. Registering a version bumps `latest_version` with one UPDATE, whose row
    lock serialises concurrent registrations under the same name (versions never collide or skip).

    A name belongs to one workspace: the one whose run first asked for it (the row is written when the
    run is created, `latest_version` 0 until it succeeds). Names stay one namespace for the installation,
    so `/v1/models/{name}` names one model for every caller, admins included; what is name-wide (aliases,
    their history, the promotion policy, erasure re-tests) is then one workspace's."""

    __tablename__ = "registered_models"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    # Never null once written (priv06 fills every old row); nullable only because SQLite cannot add a
    # NOT NULL column in place to a table other rows reference (the migration says why).
    workspace_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("workspaces.id"), index=True)


class ModelVersion(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    name: Mapped[str] = mapped_column(ForeignKey("registered_models.name"))
    version: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("training_runs.id"), unique=True)
    artifact_uri: Mapped[str] = mapped_column(String(2000))
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="candidate")
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200))


class ModelAlias(Base):
    __tablename__ = "model_aliases"
    __table_args__ = (PrimaryKeyConstraint("name", "alias"),)

    name: Mapped[str] = mapped_column(ForeignKey("registered_models.name"))
    alias: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    # Both the number users speak of and the row it names (lineage joins on the id).
    model_version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("model_versions.id"), index=True)
    updated_at: Mapped[dt.datetime]
    updated_by: Mapped[str] = mapped_column(String(200))


class ModelAliasHistory(Base):
    """Every move of an alias: who, from which version to which, when and why (append-only)."""

    __tablename__ = "model_alias_history"
    __table_args__ = (Index("ix_model_alias_history_name_alias_id", "name", "alias", "id"),)

    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    alias: Mapped[str] = mapped_column(String(100))
    from_version: Mapped[int | None] = mapped_column(Integer)
    to_version: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[dt.datetime]
    reason: Mapped[str | None] = mapped_column(Text)
    # An admin's move past a failing promotion gate (issue 17): shown in the history and the model card.
    override: Mapped[bool] = mapped_column(default=False, server_default=false())


class TrainedRevision(Base):
    """One row per trained revision per run, written with the model version in one transaction.

    `example_id` is copied from the snapshot member so "which models did this example train" is one
    index lookup. No foreign keys at all: every row is written by one INSERT ... SELECT in the same
    transaction that inserts the run's model version, from snapshot members that exist (examples are
    tombstoned, never deleted), and runs and versions are never deleted; two RI trigger checks per row
    made a million-row registration several times slower (bench/registration.py)."""

    __tablename__ = "lineage"
    __table_args__ = (
        PrimaryKeyConstraint("run_id", "revision_id"),
        Index("ix_lineage_revision_id", "revision_id"),
        # The lineage queries' composites (migration lineage02); each also serves its first column alone.
        Index("ix_lineage_model_version_id_example_id", "model_version_id", "example_id"),
        Index("ix_lineage_example_id_model_version_id", "example_id", "model_version_id"),
    )

    run_id: Mapped[uuid.UUID]
    model_version_id: Mapped[uuid.UUID]
    revision_id: Mapped[uuid.UUID]
    example_id: Mapped[uuid.UUID]
    tokens: Mapped[int] = mapped_column(BigInteger)
    epochs: Mapped[int] = mapped_column(Integer)


class TrainingCanary(Base):
    """A synthetic secret planted in a run's training stream (issue 17, "The Secret Sharer"). The secret is
    sealed with the vault's key, bound to this row; only the trainer role ever sees it in clear."""

    __tablename__ = "training_canaries"
    __table_args__ = (PrimaryKeyConstraint("run_id", "canary_id"),)

    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("training_runs.id"))
    canary_id: Mapped[str] = mapped_column(String(40))
    template: Mapped[str] = mapped_column(Text)
    # {"kind": "digits", "length": 9}: the randomness space the exposure is measured against.
    space: Mapped[dict] = mapped_column(default=dict)
    repetitions: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[str] = mapped_column(String(32))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)


EVALUATION_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class Evaluation(IdMixin, CreatedAtMixin, Base):
    """One evaluation of one model version (app/evaluations). Results are per suite and count only once
    the evaluation has succeeded."""

    __tablename__ = "evaluations"
    __table_args__ = (
        Index("ix_evaluations_model_version_id_id", "model_version_id", "id"),
        Index("ix_evaluations_status_heartbeat_at", "status", "heartbeat_at"),
    )

    model_version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("model_versions.id"))
    suites: Mapped[list] = mapped_column(JSONType, default=list)
    # [{"id", "name"}] of the datasets named, resolved at creation.
    eval_sets: Mapped[list] = mapped_column(JSONType, default=list)
    reference: Mapped[dict | None] = mapped_column(JSONType)
    params: Mapped[dict] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20))
    results: Mapped[dict] = mapped_column(default=dict)
    error_code: Mapped[str | None] = mapped_column(String(50))
    error_message: Mapped[str | None] = mapped_column(Text)
    failed_in: Mapped[str | None] = mapped_column(String(20))
    worker_host: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[dt.datetime | None]
    queued_at: Mapped[dt.datetime | None]
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    event_count: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(200))
    cancelled_by: Mapped[str | None] = mapped_column(String(200))


class EvaluationEvent(Base):
    __tablename__ = "evaluation_events"
    __table_args__ = (Index("ix_evaluation_events_evaluation_id_id", "evaluation_id", "id"),)

    id: Mapped[int] = mapped_column(SerialId, primary_key=True, autoincrement=True)
    evaluation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("evaluations.id"))
    kind: Mapped[str] = mapped_column(String(20))
    level: Mapped[str] = mapped_column(String(10))
    message: Mapped[str] = mapped_column(Text)
    step: Mapped[int | None] = mapped_column(Integer)
    data: Mapped[dict] = mapped_column(default=dict)
    at: Mapped[dt.datetime]


class ModelPolicy(Base):
    """Which figures an alias requires: gates [{"metric", "max"|"min"}] guarding `gated_aliases`."""

    __tablename__ = "model_policies"

    name: Mapped[str] = mapped_column(ForeignKey("registered_models.name"), primary_key=True)
    gates: Mapped[list] = mapped_column(JSONType, default=list)
    gated_aliases: Mapped[list] = mapped_column(JSONType, default=list)
    updated_at: Mapped[dt.datetime]
    updated_by: Mapped[str] = mapped_column(String(200))
