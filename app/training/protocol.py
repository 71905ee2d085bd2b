"""The run protocol a trainer worker speaks, shared by training runs (app/training/service.py) and
evaluations (app/evaluations/service.py): claim, events as heartbeats, fail, cancel, and refusing every
report once the row has ended. The two differ only in their tables and names, and in what an end or an
event batch does besides (a failed evaluation drops its results; a run's metrics events merge into it),
so one `Protocol` per kind holds those and the steps are written once.

    queued ─▶ running ─▶ succeeded           (the domain's own `complete`)
      │          ├─────▶ failed              (trainer report, or the reaper: worker_lost)
      └──────────┴─────▶ cancelled           (curator)
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Actor
from app.core.errors import Conflict, NotFound
from app.core.ids import id_or_404
from app.models.base import utcnow
from app.models.training import FINISHED
from app.training.schemas import EventIn


@dataclass(frozen=True)
class Protocol:
    model: Any  # TrainingRun or Evaluation
    event_model: Any  # its events table
    fk: str  # the events' column naming the row
    entity: str  # audit entity type, action prefix and id kind: "training_run", "evaluation"
    label: str  # for messages: "training run", "evaluation"
    finished_code: str  # the 409 code of a report after the end
    startable: tuple[str, ...] = ("queued",)
    # Called with (row, events) after a batch is stored: a run folds its metrics events in.
    on_events: Callable[[Any, list[EventIn]], None] | None = None
    # Called with (row) when it fails: an evaluation drops its results.
    on_fail: Callable[[Any], None] | None = None
    # Called with (session, row, missing) on every lookup: raises `missing` for a row outside the
    # caller's workspaces (docs/security.md, "Workspaces").
    visible: Callable[[Session, Any, Exception], None] | None = None

    def get(self, session: Session, row_id: str | uuid.UUID, *, lock: bool = False) -> Any:
        q = select(self.model).where(self.model.id == id_or_404(row_id, self.entity))
        if lock:
            q = q.with_for_update()
        row = session.scalar(q.execution_options(populate_existing=True))
        missing = NotFound(f"{self.label} {row_id} not found", details={self.entity: str(row_id)})
        if row is None:
            raise missing
        if self.visible is not None:
            self.visible(session, row, missing)
        return row

    def finished(self, row: Any, doing: str) -> Conflict:
        why = f" ({row.error_code})" if row.error_code else ""
        return Conflict(f"{self.label} {row.id} is {row.status}{why}; cannot {doing}",
                        code=self.finished_code if row.status in FINISHED else "invalid_state",
                        details={"status": row.status, "error_code": row.error_code})

    def start(self, session: Session, *, row_id: str, worker_host: str, actor: Actor) -> Any:
        row = self.get(session, row_id, lock=True)
        if row.status not in self.startable:
            # Another host claimed it, or it ended meanwhile: the trainer stops quietly on 409.
            raise Conflict(f"{self.label} {row.id} is {row.status} (worker {row.worker_host or '-'}); not startable",
                           code="not_startable", details={"status": row.status, "worker_host": row.worker_host})
        now = utcnow()
        row.status, row.worker_host, row.started_at, row.heartbeat_at = "running", worker_host, now, now
        self.append_events(session, row, [EventIn(kind="log", message=f"started on {worker_host}")], now=now)
        audit.record(session, actor=actor.ref, action=f"{self.entity}.started", entity_type=self.entity,
                     entity_id=row.id, payload={"worker_host": worker_host})
        return row

    def add_events(self, session: Session, *, row_id: str, events: list[EventIn]) -> int:
        """Store a batch of events and count it as a heartbeat. Heartbeat events themselves are not stored:
        they only move `heartbeat_at` (one every few seconds per row would bury the log)."""
        rid = id_or_404(row_id, self.entity)
        now = utcnow()
        # One conditional UPDATE both checks the state and takes the row lock: no read-then-write race
        # with a cancel or the reaper, and a dead worker's late reports are refused.
        hit = session.execute(update(self.model).where(self.model.id == rid, self.model.status == "running")
                              .values(heartbeat_at=now).returning(self.model.id)).first()
        if hit is None:
            raise self.finished(self.get(session, rid), "accept events")
        stored = [e for e in events if e.kind != "heartbeat"]
        if stored:
            self.append_events(session, self.get(session, rid), stored, now=now)
        return len(stored)

    def append_events(self, session: Session, row: Any, events: list[EventIn], *, now: dt.datetime) -> None:
        if not events:
            return
        rows = [{self.fk: row.id, "kind": e.kind or "log", "level": e.level or "info",
                 "message": (e.message or "")[:20_000], "step": e.step, "data": e.data or {}, "at": now}
                for e in events]
        session.execute(insert(self.event_model), rows)
        row.event_count = (row.event_count or 0) + len(rows)
        if self.on_events is not None:
            self.on_events(row, events)

    def fail(self, session: Session, *, row_id: str, code: str, message: str, actor: Actor) -> Any:
        row = self.get(session, row_id, lock=True)
        if row.status == "failed" and row.error_code == code:
            return row  # a retried report
        if row.status in FINISHED:
            raise self.finished(row, "fail")
        now = utcnow()
        self.end(session, row, "failed", code=code, message=message, actor=actor, now=now)
        self.append_events(session, row, [EventIn(kind="log", level="error", message=f"{code}: {message}")], now=now)
        return row

    def cancel(self, session: Session, *, row_id: str, actor: Actor) -> Any:
        row = self.get(session, row_id, lock=True)
        if row.status in FINISHED:
            raise self.finished(row, "cancel")
        now = utcnow()
        row.cancelled_by = actor.ref
        # The trainer learns of it from the 409 on its next events post (heartbeats come every few
        # seconds) and stops between steps; nothing it reports afterwards is accepted.
        self.end(session, row, "cancelled", actor=actor, now=now)
        self.append_events(session, row, [EventIn(kind="log", level="warn", message=f"cancelled by {actor.ref}")],
                           now=now)
        return row

    def end(self, session: Session, row: Any, status: str, *, actor: Actor, now: dt.datetime,
            code: str | None = None, message: str | None = None, payload: dict[str, Any] | None = None) -> None:
        previous = row.status
        row.status, row.finished_at = status, now
        if status == "failed":
            row.failed_in, row.error_code, row.error_message = previous, code, message
            if self.on_fail is not None:
                self.on_fail(row)
        audit.record(session, actor=actor.ref, action=f"{self.entity}.{status}", entity_type=self.entity,
                     entity_id=row.id, payload={"from": previous, **({"code": code, "message": message} if code else {}),
                                                **(payload or {})})
