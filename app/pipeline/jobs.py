"""Pipeline jobs, which open their own sessions: run a stage on a batch (lock the batch at its stage, run
the stage's handler, advance, audit, enqueue the next) and the sweeper.

Idempotent and safe to redeliver: a redelivered batch finds its examples already past the stage and
does nothing; a crash rolls the whole batch back, so the example stays at its stage and the
redelivered (acks_late) task or the sweeper runs it again. Nothing is ever half-processed.

Recovery does not wait for the broker's visibility timeout. A stage task (with a broker) first
commits a lease on its batch and renews it while it runs; the batch's own transaction deletes the
lease as it commits. The sweeper re-enqueues the examples of a lease that stopped being renewed (the
worker died), and examples that sit at a stage with no lease while their queue is empty (the message
was lost: a send that failed after commit, a broker restart that lost its last writes).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid

from sqlalchemy import and_, delete, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core import jobs, metrics
from app.core.config import get_settings
from app.core.db import get_engine, session_scope
from app.core.ids import new_id
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.example import Example
from app.models.pipeline import StageLease
from app.pipeline import stages
from app.pipeline.service import TERMINAL, enqueue_stage, lock_at_stage

log = logging.getLogger(__name__)


class _Lease:
    """The committed claim of one stage task, renewed by a daemon thread until `stop()`."""

    def __init__(self, stage_name: str, ids: list[uuid.UUID]) -> None:
        self.lease_s = get_settings().stage_lease_s
        self.id = new_id()
        now = utcnow()
        with get_engine().begin() as conn:
            conn.execute(insert(StageLease), {
                "id": self.id, "stage": stage_name, "example_ids": [str(i) for i in ids],
                "holder": f"{socket.gethostname()}:{os.getpid()}", "claimed_at": now,
                "expires_at": now + dt.timedelta(seconds=self.lease_s)})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{self.id}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        engine = get_engine()
        while not self._stop.wait(self.lease_s / 3):
            try:
                with engine.begin() as conn:
                    if engine.dialect.name == "postgresql":
                        # The batch's commit deletes this row: wait for it briefly, never for long.
                        conn.execute(text("SET LOCAL lock_timeout = '2s'"))
                    conn.execute(update(StageLease).where(StageLease.id == self.id)
                                 .values(expires_at=utcnow() + dt.timedelta(seconds=self.lease_s)))
            except SQLAlchemyError as exc:  # a missed renewal costs at most a redundant re-enqueue
                log.warning("stage lease %s not renewed: %s", self.id, exc)

    def release_in(self, session: Session) -> None:
        # In the batch's transaction: the lease goes exactly when the batch's work commits.
        session.execute(delete(StageLease).where(StageLease.id == self.id))

    def stop(self) -> None:
        self._stop.set()


def run_stage(stage_name: str, example_ids: list[str] | list[uuid.UUID]) -> int:
    ids = [uuid.UUID(str(i)) for i in example_ids]
    # Without a broker the stage runs inside the process that enqueued it: nothing to lose, no lease.
    lease = None if get_settings().tasks_eager else _Lease(stage_name, ids)
    start, outcome, done = time.perf_counter(), "failed", 0
    try:
        done = _run_stage(stage_name, ids, lease)
        outcome = "ok" if done else "nothing_locked"
        return done
    finally:
        metrics.observe(metrics.STAGE_BATCH_DURATION, time.perf_counter() - start, stage=stage_name, outcome=outcome)
        if done:
            metrics.inc(metrics.STAGE_BATCH_EXAMPLES, done, stage=stage_name)
        if lease is not None:
            # On an error the lease stays and expires: if the task's retry never runs (its send
            # failed, retries ran out), the sweeper still re-enqueues the batch.
            lease.stop()


def _run_stage(stage_name: str, ids: list[uuid.UUID], lease: _Lease | None) -> int:
    stage = stages.get_stage(stage_name)
    nxt = stages.next_stage(stage_name)
    with session_scope() as session:
        locked = lock_at_stage(session, stage_name, ids)
        if not locked:
            if lease is not None:
                lease.release_in(session)
            return 0
        stage.handler(session=session, example_ids=locked)
        session.flush()
        now = utcnow()
        still_here = and_(Example.id.in_(locked), Example.stage == stage_name)
        moved = list(session.scalars(select(Example.id).where(still_here)))
        # The stage settled these itself (an exact duplicate stops after its scrub): the pipeline is done
        # with them, so they are validated now too.
        settled = list(session.scalars(select(Example.id).where(
            Example.id.in_(locked), Example.stage.is_(None), Example.status.in_(TERMINAL))))
        if settled and nxt is not None:
            session.execute(update(Example).where(Example.id.in_(settled)).values(last_validated_at=now))
            for hook in stages.ON_VALIDATED:
                hook(session, settled, now)
        if nxt is None:
            session.execute(
                update(Example)
                .where(still_here, Example.status.not_in(TERMINAL))
                .values(stage=None, status="pending_review", updated_at=now, last_validated_at=now)
            )
            # Examples a stage already settled (duplicate, rejected) were validated all the same.
            session.execute(update(Example).where(still_here, Example.status.in_(TERMINAL))
                            .values(last_validated_at=now))
            for hook in stages.ON_VALIDATED:
                hook(session, moved, now)
        session.execute(update(Example).where(still_here).values(stage=nxt, updated_at=now))
        # A batch may mix workspaces: one event per workspace naming only its examples (one query per batch).
        ws_of = dict(session.execute(select(Example.id, Dataset.workspace_id)
                                     .join(Dataset, Dataset.id == Example.dataset_id).where(Example.id.in_(locked)))
                     .all())
        by_ws: dict[uuid.UUID | None, list[str]] = {}
        for eid in locked:
            by_ws.setdefault(ws_of.get(eid), []).append(str(eid))
        for wid, examples in by_ws.items():
            audit.record(
                session,
                actor="system:pipeline",
                action=f"pipeline.{stage_name}.done",
                entity_type="example_batch",
                payload={"stage": stage_name, "next": nxt or "pending_review", "examples": examples},
                workspace_id=wid,
            )
        if nxt is not None:
            enqueue_stage(session, nxt, moved)
        if lease is not None:
            # Last, so the renewals never wait on this row's lock for the length of the batch.
            lease.release_in(session)
        return len(locked)


def sweep() -> int:
    """Re-enqueue examples whose stage task died (expired lease) or whose message was lost."""
    settings = get_settings()
    now = utcnow()
    idle_cutoff = now - dt.timedelta(seconds=settings.stage_lease_s)
    # Backstop when the broker cannot say whether a queue is empty: by then Redis would redeliver a
    # message held by a dead worker anyway.
    backstop_cutoff = now - dt.timedelta(seconds=settings.broker_visibility_timeout_s)
    total = 0
    with session_scope() as session:
        leases = session.execute(select(StageLease.id, StageLease.stage, StageLease.example_ids,
                                        StageLease.expires_at)).all()
        held = {i for lease in leases if lease.expires_at >= now for i in lease.example_ids}
        expired = [lease for lease in leases if lease.expires_at < now]
        if expired:
            session.execute(delete(StageLease).where(StageLease.id.in_([lease.id for lease in expired])))
        for name in stages.stage_names():
            wanted: set[uuid.UUID] = set()
            lost = [uuid.UUID(i) for lease in expired if lease.stage == name for i in lease.example_ids
                    if i not in held]
            for i in range(0, len(lost), 10_000):
                wanted.update(session.scalars(select(Example.id).where(Example.id.in_(lost[i:i + 10_000]),
                                                                       Example.stage == name)))
            depth = jobs.queue_depth(stages.get_stage(name).queue)
            # A non-empty queue may hold these examples' message: wait until it drains. Never a time
            # cutoff then: in a backlog older than the cutoff it would re-enqueue the whole backlog on
            # every sweep.
            if depth != 0:
                cutoff = backstop_cutoff if depth is None else None
            else:
                cutoff = idle_cutoff
            if cutoff is not None:
                idle = session.scalars(select(Example.id).where(Example.stage == name, Example.updated_at < cutoff)
                                       .limit(50_000))
                wanted.update(i for i in idle if str(i) not in held)
            if wanted:
                total += len(wanted)
                enqueue_stage(session, name, sorted(wanted))
    if total:
        log.info("sweeper re-enqueued %d examples", total)
    return total
