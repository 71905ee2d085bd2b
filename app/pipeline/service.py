"""The pipeline's enqueue side and read side: send examples to a stage after commit, lock a batch at its
stage, count examples per stage. Everything that opens its own session (running a stage, the lease,
the sweeper) is in `app.pipeline.jobs`.
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core import jobs
from app.models.example import Example
from app.pipeline import stages

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


def lock_at_stage(session: Session, stage_name: str, example_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    q = select(Example.id).where(Example.id.in_(example_ids), Example.stage == stage_name).order_by(Example.id)
    if session.get_bind().dialect.name == "postgresql":
        # Two workers handed the same ids (redelivery, sweeper) split them instead of waiting.
        # NO KEY UPDATE, not UPDATE: a concurrent import writing a duplicate link to one of these rows
        # holds a foreign-key KEY SHARE lock on it, which FOR UPDATE conflicts with, so SKIP LOCKED
        # would skip the row and the task would ack with the example left at its stage.
        q = q.with_for_update(skip_locked=True, key_share=True)
    return list(session.scalars(q))


def stage_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Example.stage, func.count()).where(Example.stage.is_not(None)).group_by(Example.stage))
    return {r[0]: r[1] for r in rows}
