"""Dedup's job bodies: each opens its own sessions (the rebuild, the evaluation-set sweep). Celery tasks
and the in-process runner call these; the services they use take a session and never commit.
"""

from __future__ import annotations

import functools
import uuid

from sqlalchemy import update

from app.core.db import session_scope
from app.core.errors import NotFound
from app.core.sql import is_pg
from app.dedup import eval_guard
from app.dedup import rebuild as rebuilds
from app.dedup.index import drop_index
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.dedup import DedupRebuild


def _progress(rebuild_id: uuid.UUID, **values) -> None:
    with session_scope() as s:
        s.execute(update(DedupRebuild).where(DedupRebuild.id == rebuild_id).values(**values))


def rebuild(dataset_id: str, rebuild_id: str, batch_size: int = 2000) -> dict:
    """Run a requested rebuild (rebuild.py) in one transaction, its progress committed beside it."""
    rb_id, ds_id = uuid.UUID(rebuild_id), uuid.UUID(dataset_id)
    _progress(rb_id, status="running", started_at=utcnow())
    try:
        with session_scope() as session:
            ds = session.get(Dataset, ds_id)
            if ds is None:
                raise NotFound(f"dataset {dataset_id} not found")
            # SQLite has one writer: while this transaction holds the lock, progress cannot commit beside
            # it, so there it is reported at the end only.
            report = functools.partial(_progress, rb_id) if is_pg(session) else None
            result, old_gen = rebuilds.rebuild_dataset(session, ds, rebuild_id=rebuild_id, batch_size=batch_size,
                                                       progress=report)
        drop_index(ds_id, old_gen)
    except Exception as e:
        _progress(rb_id, status="failed", error=f"{type(e).__name__}: {e}"[:2000], finished_at=utcnow())
        raise
    _progress(rb_id, status="done", result=result, done=result["examples"], total=result["examples"],
              finished_at=utcnow())
    return result


def eval_sweep(eval_dataset_id: str, batch_size: int = 1000) -> dict:
    """Check the training sets' examples against an evaluation set's n-gram fingerprints: the containment
    half of "both orders are caught" (a training batch is checked when it arrives; this covers the
    training texts that were there before the evaluation items). One transaction per batch and
    idempotent hits: a crash loses one batch's work, and the redelivered task repeats harmlessly.
    Sweeps coalesce: one that starts after another already covered the latest fingerprints returns
    at once."""
    eds = uuid.UUID(eval_dataset_id)
    with session_scope() as session:
        plan = eval_guard.sweep_plan(session, eds)
    if isinstance(plan, dict):
        return plan
    checked = flagged = 0
    for train_id in plan.train_ids:
        after: uuid.UUID | None = None
        while True:
            with session_scope() as session:
                step = eval_guard.sweep_batch(session, plan, train_id, after=after, limit=batch_size)
            if step is None:
                break
            after, n, f = step
            checked += n
            flagged += f
    with session_scope() as session:
        eval_guard.mark_swept(session, plan)
    return {"eval_dataset_id": eval_dataset_id, "version": plan.version, "training_sets": len(plan.train_ids),
            "checked": checked, "flagged": flagged}
