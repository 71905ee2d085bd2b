"""Fixtures for lineage tests: models registered the way the training service writes them.

Lineage reads training_runs / model_versions / model_aliases / lineage directly (app/lineage/training.py),
so these fixtures write those rows directly too, without running a trainer.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import insert, select

from app.lineage import training as tr
from app.models.base import utcnow


@pytest.fixture
def training(db: str) -> str:
    """The migrated database; the training tables are part of it."""
    return db


def _row(table, **values) -> dict:
    return {k: v for k, v in values.items() if k in table.c}


def register_model(*, snapshot_id: str, members: list[tuple[str, str]], name: str = "m", version: int = 1,
                   aliases: tuple[str, ...] = (), tokens: int = 100, epochs: int = 2,
                   status: str = "candidate") -> dict:
    """A succeeded run over `members` [(example_id, revision_id)] registered as name:version, written the
    way the training service writes it (one lineage row per trained revision)."""
    from app.core.db import session_scope
    from app.models.dataset import Dataset
    from app.models.snapshot import Snapshot
    from app.models.training import RegisteredModel

    run_id, mv_id = uuid.uuid4(), uuid.uuid4()
    now = utcnow()
    with session_scope() as s:
        snap = s.get(Snapshot, uuid.UUID(snapshot_id))
        manifest = snap.manifest_sha256
        if s.get(RegisteredModel, name) is None:  # the name is its first run's workspace's, as `reserve` writes it
            ws = s.scalar(select(Dataset.workspace_id).where(Dataset.id == snap.dataset_id))
            s.execute(insert(RegisteredModel).values(name=name, latest_version=version, workspace_id=ws,
                                                     created_at=now))
        s.execute(insert(tr.training_runs).values(**_row(
            tr.training_runs, id=run_id, snapshot_id=uuid.UUID(snapshot_id), expected_manifest_sha256=manifest,
            base_model="tiny", method="lora", hyperparameters={"epochs": epochs, "lora_r": 8}, meta={},
            metadata={}, status="succeeded", model_name=name, metrics={}, event_count=0, created_by="test",
            created_at=now, started_at=now, finished_at=now)))
        s.execute(insert(tr.model_versions).values(**_row(
            tr.model_versions, id=mv_id, name=name, version=version, run_id=run_id, status=status,
            artifact_uri="file:///x", artifact_sha256="ab" * 32, created_by="test", created_at=now)))
        s.execute(insert(tr.lineage), [
            {"model_version_id": mv_id, "example_id": uuid.UUID(e), "revision_id": uuid.UUID(r), "run_id": run_id,
             "tokens": tokens + i, "epochs": epochs} for i, (e, r) in enumerate(members)])
        for a in aliases:
            s.execute(insert(tr.model_aliases).values(**_row(
                tr.model_aliases, name=name, alias=a, version=version, model_version_id=mv_id, updated_at=now,
                updated_by="test")))
    return {"run_id": str(run_id), "model_version_id": str(mv_id), "name": name, "version": version}
