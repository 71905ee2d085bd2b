"""The reaper: a running run whose heartbeats stopped is failed with `worker_lost`.

A killed trainer cannot report its own death, and its Celery message (acks_late) only comes back after
the broker's visibility timeout, so without this the run would stay `running` for an hour or forever.
Once reaped, the run refuses every further report from that worker (409), so a host that was only
partitioned away, not dead, cannot register a model after the fact.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

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
    reaped = _reap(session, TrainingRun, TrainingRunEvent, "run_id", "training_run", cutoff=cutoff, now=now,
                   timeout=timeout)
    # Evaluations run on the same workers under the same heartbeat rule (app/evaluations). A reaped one
    # keeps no results: nothing partial is ever shown as passing a gate.
    _reap(session, Evaluation, EvaluationEvent, "evaluation_id", "evaluation", cutoff=cutoff, now=now,
          timeout=timeout, results={})
    metrics.inc(metrics.TRAINING_RUNS_REAPED, len(reaped))
    return reaped


def _reap(session: Session, model: Any, event_model: Any, fk: str, entity_type: str, *, cutoff: dt.datetime,
          now: dt.datetime, timeout: float, **reset: Any) -> list[uuid.UUID]:
    # One set-based UPDATE; its WHERE re-checks the state under the row lock, so a run that sent a
    # heartbeat or finished a moment ago is left alone.
    rows = session.execute(
        update(model)
        .where(model.status == "running", model.heartbeat_at < cutoff)
        .values(status="failed", failed_in="running", error_code="worker_lost", finished_at=now, **reset,
                error_message=f"no heartbeat for more than {timeout:g} s; the trainer worker is presumed lost",
                event_count=model.event_count + 1)
        .returning(model.id, model.worker_host, model.heartbeat_at)
    ).all()
    if not rows:
        return []
    session.execute(insert(event_model), [
        {fk: rid, "kind": "log", "level": "error", "step": None, "data": {"worker_host": host},
         "message": f"worker_lost: no heartbeat from {host or 'the worker'} since {hb.isoformat() if hb else '-'}",
         "at": now} for rid, host, hb in rows])
    for rid, host, hb in rows:
        audit.record(session, actor=ACTOR, action=f"{entity_type}.failed", entity_type=entity_type, entity_id=rid,
                     payload={"from": "running", "code": "worker_lost", "worker_host": host,
                              "last_heartbeat_at": hb.isoformat() if hb else None, "timeout_s": timeout})
    return [rid for rid, _, _ in rows]
