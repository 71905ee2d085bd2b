"""The reaper: a running run whose heartbeats stopped is failed with `worker_lost`.

A killed trainer cannot report its own death, and its Celery message (acks_late) only comes back after
the broker's visibility timeout, so without this the run would stay `running` for an hour or forever.
Once reaped, the run refuses every further report from that worker (409), so a host that was only
partitioned away, not dead, cannot register a model after the fact.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core import metrics
from app.core.config import get_settings
from app.models.base import utcnow
from app.models.training import Evaluation, EvaluationEvent, TrainingRun, TrainingRunEvent

ACTOR = "system:reaper"


def reap(session: Session, *, stale_after_s: float | None = None) -> list[uuid.UUID]:
    timeout = get_settings().training_heartbeat_timeout_s if stale_after_s is None else stale_after_s
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=timeout)
    # One set-based UPDATE; its WHERE re-checks the state under the row lock, so a run that sent a
    # heartbeat or finished a moment ago is left alone.
    rows = session.execute(
        update(TrainingRun)
        .where(TrainingRun.status == "running", TrainingRun.heartbeat_at < cutoff)
        .values(status="failed", failed_in="running", error_code="worker_lost", finished_at=now,
                error_message=f"no heartbeat for more than {timeout:g} s; the trainer worker is presumed lost",
                event_count=TrainingRun.event_count + 1)
        .returning(TrainingRun.id, TrainingRun.worker_host, TrainingRun.heartbeat_at)
    ).all()
    _reap_evaluations(session, cutoff=cutoff, now=now, timeout=timeout)
    if not rows:
        return []
    session.execute(insert(TrainingRunEvent), [
        {"run_id": rid, "kind": "log", "level": "error", "step": None, "data": {"worker_host": host},
         "message": f"worker_lost: no heartbeat from {host or 'the worker'} since {hb.isoformat() if hb else '-'}",
         "at": now} for rid, host, hb in rows])
    for rid, host, hb in rows:
        audit.record(session, actor=ACTOR, action="training_run.failed", entity_type="training_run", entity_id=rid,
                     payload={"from": "running", "code": "worker_lost", "worker_host": host,
                              "last_heartbeat_at": hb.isoformat() if hb else None, "timeout_s": timeout})
    metrics.inc(metrics.TRAINING_RUNS_REAPED, len(rows))
    return [rid for rid, _, _ in rows]


def _reap_evaluations(session: Session, *, cutoff: dt.datetime, now: dt.datetime, timeout: float) -> None:
    """Evaluations run on the same workers under the same heartbeat rule (app/evaluations). A reaped one
    keeps no results: nothing partial is ever shown as passing a gate."""
    rows = session.execute(
        update(Evaluation)
        .where(Evaluation.status == "running", Evaluation.heartbeat_at < cutoff)
        .values(status="failed", failed_in="running", error_code="worker_lost", finished_at=now, results={},
                error_message=f"no heartbeat for more than {timeout:g} s; the trainer worker is presumed lost",
                event_count=Evaluation.event_count + 1)
        .returning(Evaluation.id, Evaluation.worker_host, Evaluation.heartbeat_at)
    ).all()
    if not rows:
        return
    session.execute(insert(EvaluationEvent), [
        {"evaluation_id": eid, "kind": "log", "level": "error", "step": None, "data": {"worker_host": host},
         "message": f"worker_lost: no heartbeat from {host or 'the worker'} since {hb.isoformat() if hb else '-'}",
         "at": now} for eid, host, hb in rows])
    for eid, host, hb in rows:
        audit.record(session, actor=ACTOR, action="evaluation.failed", entity_type="evaluation", entity_id=eid,
                     payload={"from": "running", "code": "worker_lost", "worker_host": host,
                              "last_heartbeat_at": hb.isoformat() if hb else None, "timeout_s": timeout})
