"""Hash-chained, append-only audit log.

Services call `record()`; the events are written in the *same* transaction, just before it commits
(a `before_commit` hook), so an audit event exists exactly when its change does. Appending updates
the single `audit_head` row first: on PostgreSQL that row lock serialises concurrent appenders, so
the chain never forks; holding it only for the last instant of a transaction keeps the queue short.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import event, insert, select, update
from sqlalchemy.orm import Session

from app.models.audit import GENESIS_HASH, AuditEvent, AuditHead
from app.models.base import utcnow

_PENDING = "pedigree_audit_pending"


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: Any = None,
    payload: dict[str, Any] | None = None,
) -> None:
    session.info.setdefault(_PENDING, []).append(
        {
            "occurred_at": utcnow(),
            "actor": actor,
            "action": action,
            "entity_type": entity_type,
            "entity_id": None if entity_id is None else str(entity_id),
            "payload": payload or {},
        }
    )


def _ts(value: dt.datetime) -> str:
    # SQLite hands datetimes back naive; both are UTC, so normalise before hashing.
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(*, seq: int, prev_hash: str, occurred_at: dt.datetime, actor: str, action: str,
               entity_type: str, entity_id: str | None, payload: dict[str, Any]) -> str:
    body = {
        "seq": seq,
        "prev_hash": prev_hash,
        "occurred_at": _ts(occurred_at),
        "actor": actor,
        "action": action,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "payload": payload,
    }
    # Payloads go through a JSON round trip in the database, so hash the canonical JSON of what
    # comes back (sorted keys, UUIDs/datetimes as strings), never Python reprs.
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)).hexdigest()


def _canonical_payload(payload: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS))


def _append(session: Session, pending: list[dict[str, Any]]) -> None:
    n = len(pending)
    row = session.execute(
        update(AuditHead)
        .where(AuditHead.id == 1)
        .values(seq=AuditHead.seq + n)
        .returning(AuditHead.seq, AuditHead.hash)
    ).one()
    seq = row.seq - n
    prev = row.hash
    rows = []
    for ev in pending:
        seq += 1
        payload = _canonical_payload(ev["payload"])
        h = event_hash(seq=seq, prev_hash=prev, occurred_at=ev["occurred_at"], actor=ev["actor"],
                       action=ev["action"], entity_type=ev["entity_type"], entity_id=ev["entity_id"],
                       payload=payload)
        rows.append({**ev, "payload": payload, "seq": seq, "prev_hash": prev, "hash": h})
        prev = h
    session.execute(insert(AuditEvent), rows)
    session.execute(update(AuditHead).where(AuditHead.id == 1).values(hash=prev))


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if pending:
        session.flush()
        _append(session, pending)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


@dataclass
class VerifyResult:
    ok: bool
    events: int
    first_bad_event: int | None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events": self.events, "first_bad_event": self.first_bad_event,
                "reason": self.reason}


def _iter_events(session: Session, batch: int = 5000) -> Iterator[AuditEvent]:
    last = 0
    while True:
        chunk = session.scalars(
            select(AuditEvent).where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(batch)
        ).all()
        if not chunk:
            return
        yield from chunk
        last = chunk[-1].seq
        session.expunge_all()


def verify(session: Session) -> VerifyResult:
    """Walk the whole chain and name the first event whose hash, link or position is wrong."""
    prev = GENESIS_HASH
    expected_seq = 1
    count = 0
    for ev in _iter_events(session):
        count += 1
        if ev.seq != expected_seq:
            return VerifyResult(False, count, expected_seq, "missing event (gap in sequence)")
        if ev.prev_hash != prev:
            return VerifyResult(False, count, ev.seq, "prev_hash does not match the previous event")
        h = event_hash(seq=ev.seq, prev_hash=ev.prev_hash, occurred_at=ev.occurred_at, actor=ev.actor,
                       action=ev.action, entity_type=ev.entity_type, entity_id=ev.entity_id,
                       payload=ev.payload)
        if h != ev.hash:
            return VerifyResult(False, count, ev.seq, "event content does not match its hash")
        prev = ev.hash
        expected_seq += 1
    head = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
    if head.seq != count or head.hash != prev:
        # The tail was deleted or the head was rewritten.
        return VerifyResult(False, count, count + 1 if head.seq > count else None,
                            "chain head does not match the last event")
    return VerifyResult(True, count, None)
