"""Runs pipeline stages: lock a batch at a stage, run the stage, advance, audit, enqueue the next.

Idempotent and safe to redeliver: a redelivered batch finds its examples already past the stage and
does nothing; a crash rolls the whole batch back, so the example stays at its stage and the
redelivered (acks_late) task or the sweeper runs it again. Nothing is ever half-processed.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core import jobs
from app.core.db import session_scope
from app.models.base import utcnow
from app.models.example import Example
from app.pipeline import stages

log = logging.getLogger(__name__)

RUN_STAGE_TASK = "pedigree.pipeline.run_stage"
SWEEP_TASK = "pedigree.pipeline.sweep"
# A content change (edit, PII verdict) re-runs the pipeline and sends an approved example back to
# review; only these statuses stay put.
TERMINAL = ("duplicate", "erased", "rejected")


def enqueue_stage(session: Session, stage_name: str | None, example_ids: list[uuid.UUID]) -> None:
    if stage_name is None or not example_ids:
        return
    stage = stages.get_stage(stage_name)
    ids = [str(i) for i in example_ids]
    # Batches keep a task small enough to redeliver cheaply and big enough to amortise the engine
    # (and the broker round trips: a send costs as much as ingesting a few hundred rows).
    for i in range(0, len(ids), 1000):
        jobs.enqueue(session, RUN_STAGE_TASK, stage_name, ids[i:i + 1000], queue=stage.queue)


def _lock_at_stage(session: Session, stage_name: str, example_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    q = select(Example.id).where(Example.id.in_(example_ids), Example.stage == stage_name).order_by(Example.id)
    if session.get_bind().dialect.name == "postgresql":
        # Two workers handed the same ids (redelivery, sweeper) split them instead of waiting.
        q = q.with_for_update(skip_locked=True)
    return list(session.scalars(q))


def run_stage(stage_name: str, example_ids: list[str] | list[uuid.UUID]) -> int:
    ids = [uuid.UUID(str(i)) for i in example_ids]
    stage = stages.get_stage(stage_name)
    nxt = stages.next_stage(stage_name)
    with session_scope() as session:
        locked = _lock_at_stage(session, stage_name, ids)
        if not locked:
            return 0
        stage.handler(session=session, example_ids=locked)
        session.flush()
        now = utcnow()
        still_here = and_(Example.id.in_(locked), Example.stage == stage_name)
        moved = list(session.scalars(select(Example.id).where(still_here)))
        if nxt is None:
            session.execute(
                update(Example)
                .where(still_here, Example.status.not_in(TERMINAL))
                .values(stage=None, status="pending_review", updated_at=now)
            )
        session.execute(update(Example).where(still_here).values(stage=nxt, updated_at=now))
        audit.record(
            session,
            actor="system:pipeline",
            action=f"pipeline.{stage_name}.done",
            entity_type="example_batch",
            payload={"stage": stage_name, "next": nxt or "pending_review", "examples": [str(i) for i in locked]},
        )
        if nxt is not None:
            enqueue_stage(session, nxt, moved)
        return len(locked)


jobs.local_handler(RUN_STAGE_TASK)(run_stage)


def sweep(older_than_s: int = 600) -> int:
    """Re-enqueue examples stuck at a stage (a lost message, a broker outage after commit)."""
    cutoff = utcnow() - dt.timedelta(seconds=older_than_s)
    total = 0
    with session_scope() as session:
        for name in stages.stage_names():
            ids = list(session.scalars(
                select(Example.id).where(Example.stage == name, Example.updated_at < cutoff).limit(50_000)
            ))
            if ids:
                total += len(ids)
                enqueue_stage(session, name, ids)
    if total:
        log.info("sweeper re-enqueued %d examples", total)
    return total


jobs.local_handler(SWEEP_TASK)(sweep)


def stage_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Example.stage, func.count()).where(Example.stage.is_not(None)).group_by(Example.stage))
    return {r[0]: r[1] for r in rows}
