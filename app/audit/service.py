"""Hash-chained, append-only audit log.

Services call `record()`; the events are written in the *same* transaction, just before it commits
(a `before_commit` hook), so an audit event exists exactly when its change does. Appending updates
the single `audit_head` row first: on PostgreSQL that row lock serialises concurrent appenders, so
the chain never forks; holding it only for the last instant of a transaction keeps the queue short.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import bindparam, event, insert, select, text, update
from sqlalchemy.orm import Session

from app.core import metrics
from app.core.auth import PERSON, WORKSPACE
from app.core.db import json_dumps
from app.core.sql import aware, dialect_insert
from app.models.audit import GENESIS_HASH, AuditCheckpoint, AuditEvent, AuditHead
from app.models.base import utcnow

_PENDING = "pedigree_audit_pending"
_COMMITTED = "pedigree_audit_committed"
_SUBSCRIBERS: list[Callable[[list[dict[str, Any]]], None]] = []
log = logging.getLogger(__name__)


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: Any = None,
    payload: dict[str, Any] | None = None,
    workspace_id: Any = None,
) -> None:
    """`workspace_id`: the workspace the event is about, where one transaction touches several (the
    review committer's batches); by default the one the request resolved."""
    payload = payload or {}
    person = session.info.get(PERSON)
    if person is not None:  # a person signed in through SSO: who they are at their provider, on every event
        payload = {**payload, "sso": person}
    session.info.setdefault(_PENDING, []).append(
        {
            "occurred_at": utcnow(),
            "actor": actor,
            "action": action,
            "entity_type": entity_type,
            "entity_id": None if entity_id is None else str(entity_id),
            "payload": payload,
            # The workspace of the dataset this request resolved (app/core/auth.py check_workspace).
            "workspace_id": workspace_id if workspace_id is not None else session.info.get(WORKSPACE),
        }
    )


def _workspace_resolvers() -> dict[str, Any]:
    """entity_type -> select(entity id, its dataset's workspace) for ids bound as `ids`: the dataset-scoped
    things an event names by id. Built on first use (the models import this module's package)."""
    from app.models.access import PiiGrant
    from app.models.dataset import Dataset
    from app.models.example import Example, IngestBatch
    from app.models.pii import PiiFinding
    from app.models.snapshot import Snapshot
    from app.models.training import Evaluation, ModelVersion, TrainingRun

    ws = Dataset.workspace_id
    ids = bindparam("ids", expanding=True)

    def by_dataset(model):
        return select(model.id, ws).join(Dataset, Dataset.id == model.dataset_id).where(model.id.in_(ids))

    run = select(TrainingRun.id, ws).join(Snapshot, Snapshot.id == TrainingRun.snapshot_id) \
        .join(Dataset, Dataset.id == Snapshot.dataset_id)
    mv = select(ModelVersion.id, ws).join(TrainingRun, TrainingRun.id == ModelVersion.run_id) \
        .join(Snapshot, Snapshot.id == TrainingRun.snapshot_id).join(Dataset, Dataset.id == Snapshot.dataset_id)
    evq = select(Evaluation.id, ws).join(ModelVersion, ModelVersion.id == Evaluation.model_version_id) \
        .join(TrainingRun, TrainingRun.id == ModelVersion.run_id) \
        .join(Snapshot, Snapshot.id == TrainingRun.snapshot_id).join(Dataset, Dataset.id == Snapshot.dataset_id)
    return {
        "dataset": select(Dataset.id, ws).where(Dataset.id.in_(ids)),
        "example": by_dataset(Example),
        "ingest_batch": by_dataset(IngestBatch),
        "pii_finding": by_dataset(PiiFinding),
        "pii_grant": by_dataset(PiiGrant),
        "snapshot": by_dataset(Snapshot),
        "training_run": run.where(TrainingRun.id.in_(ids)),
        "model_version": mv.where(ModelVersion.id.in_(ids)),
        "evaluation": evq.where(Evaluation.id.in_(ids)),
    }


_RESOLVERS: dict[str, Any] = {}


def _resolve_workspaces(session: Session, pending: list[dict[str, Any]]) -> None:
    """Events that name a dataset-scoped entity but no workspace (workers, the CLI, routes that resolved
    no dataset) get the entity's workspace: one query per entity type per commit, never one per event,
    and none when every event already names its workspace (requests, the import, the committer)."""
    todo: dict[str, dict[uuid.UUID, list[dict[str, Any]]]] = {}
    for ev in pending:
        if ev["workspace_id"] is not None or ev["entity_id"] is None:
            continue
        try:
            eid = uuid.UUID(ev["entity_id"])
        except ValueError:
            continue
        todo.setdefault(ev["entity_type"], {}).setdefault(eid, []).append(ev)
    if not todo:
        return
    if not _RESOLVERS:
        _RESOLVERS.update(_workspace_resolvers())
    conn = session.connection()
    for entity_type, by_id in todo.items():
        q = _RESOLVERS.get(entity_type)
        if q is None:
            continue
        for eid, wid in conn.execute(q, {"ids": list(by_id)}):
            for ev in by_id.get(eid, ()):
                ev["workspace_id"] = wid


def _ts(value: dt.datetime) -> str:
    # SQLite hands datetimes back naive; both are UTC, so normalise before hashing.
    return aware(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(*, seq: int, prev_hash: str, occurred_at: dt.datetime, actor: str, action: str,
               entity_type: str, entity_id: str | None, payload: dict[str, Any],
               workspace_id: Any = None) -> str:
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
    if workspace_id is not None:  # only when set: events from before workspaces keep their hashes
        body["workspace_id"] = str(workspace_id)
    # Payloads go through a JSON round trip in the database, so hash the canonical JSON of what
    # comes back (sorted keys, UUIDs/datetimes as strings), never Python reprs.
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)).hexdigest()


def _canonical_payload(payload: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS))


_HEAD = AuditHead.__table__
# Built once: every committing request runs these three, and building them per call (or the
# ORM-enabled forms of insert/update) cost several times their execution in Python.
_BUMP_HEAD = (update(_HEAD).where(_HEAD.c.id == 1).values(seq=_HEAD.c.seq + bindparam("n"))
              .returning(_HEAD.c.seq, _HEAD.c.hash))
_ADD_EVENTS = insert(AuditEvent.__table__)
_SET_HEAD_HASH = update(_HEAD).where(_HEAD.c.id == 1).values(hash=bindparam("head_hash"))
_EVENT_COLUMNS = ("seq", "occurred_at", "actor", "action", "entity_type", "entity_id", "payload", "workspace_id",
                  "prev_hash", "hash")
_EVENT_TYPES = ("bigint", "timestamptz", "text", "text", "text", "text", "jsonb", "uuid", "text", "text")
# PostgreSQL: the events and the head's new hash in one statement (a data-modifying CTE runs whether
# or not the outer statement reads it), one array per column so the text is the same for any number of
# events. The head row stays locked from _BUMP_HEAD to COMMIT, so every round trip in between is one
# that all other appenders wait out; this was two (an executemany, then the head update).
_ADD_EVENTS_SET_HEAD_PG = text(
    f"WITH added AS (INSERT INTO audit_events ({', '.join(_EVENT_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"CAST(:{c} AS {t}[])" for c, t in zip(_EVENT_COLUMNS, _EVENT_TYPES, strict=True))
    + ")) UPDATE audit_head SET hash = :head_hash WHERE id = 1")


def _append(session: Session, pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
    n = len(pending)
    conn = session.connection()
    row = conn.execute(_BUMP_HEAD, {"n": n}).one()
    seq = row.seq - n
    prev = row.hash
    rows = []
    for ev in pending:
        seq += 1
        payload = _canonical_payload(ev["payload"])
        h = event_hash(seq=seq, prev_hash=prev, occurred_at=ev["occurred_at"], actor=ev["actor"],
                       action=ev["action"], entity_type=ev["entity_type"], entity_id=ev["entity_id"],
                       payload=payload, workspace_id=ev["workspace_id"])
        rows.append({**ev, "payload": payload, "seq": seq, "prev_hash": prev, "hash": h})
        prev = h
    if conn.dialect.name == "postgresql":
        params: dict[str, Any] = {c: [r[c] for r in rows] for c in _EVENT_COLUMNS}
        # The payloads as the engine's JSON serialiser writes them; workspace ids as text (null for
        # none), so an all-null column binds as well.
        params["payload"] = [json_dumps(p) for p in params["payload"]]
        params["workspace_id"] = [None if w is None else str(w) for w in params["workspace_id"]]
        conn.execute(_ADD_EVENTS_SET_HEAD_PG, {**params, "head_hash": prev})
    else:
        conn.execute(_ADD_EVENTS, rows)
        conn.execute(_SET_HEAD_HASH, {"head_hash": prev})
    return rows


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if pending:
        session.flush()
        _resolve_workspaces(session, pending)
        rows = _append(session, pending)
        if _SUBSCRIBERS:
            session.info[_COMMITTED] = rows


@event.listens_for(Session, "after_commit")
def _notify(session: Session) -> None:
    rows = session.info.pop(_COMMITTED, None)
    for fn in _SUBSCRIBERS if rows else ():
        try:
            fn(rows)
        except Exception:  # the change is committed; a subscriber's failure must not turn it into an error
            log.exception("audit subscriber %r failed", fn)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)
    session.info.pop(_COMMITTED, None)


def install_subscribers(subscribers: Sequence[Callable[[list[dict[str, Any]]], None]]) -> None:
    """Each `fn(events)` is called after every commit that appended audit events (seq, action,
    entity_type, entity_id, payload, occurred_at). For side channels (OpenLineage, lineage facets) that
    must see exactly what committed; `fn` runs in the committing thread and must not use that session.
    Installed by app.wiring as a whole, so the set does not depend on which modules were imported."""
    _SUBSCRIBERS[:] = subscribers


def subscribers() -> tuple[Callable[[list[dict[str, Any]]], None], ...]:
    return tuple(_SUBSCRIBERS)


@dataclass
class VerifyResult:
    ok: bool
    events: int
    first_bad_event: int | None
    reason: str | None = None
    mode: str = "full"
    # The checkpoint this run resumed after (0: from the genesis) and how many events it hashed.
    verified_from: int = 0
    checked: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events": self.events, "first_bad_event": self.first_bad_event,
                "reason": self.reason, "mode": self.mode, "verified_from": self.verified_from,
                "checked": self.checked}


def _iter_events(session: Session, batch: int = 5000, *, after: int = 0) -> Iterator[AuditEvent]:
    last = after
    while True:
        chunk = session.scalars(
            select(AuditEvent).where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(batch)
        ).all()
        if not chunk:
            return
        yield from chunk
        last = chunk[-1].seq
        session.expunge_all()


def _walk(session: Session, *, after: int, prev: str) -> tuple[VerifyResult | None, int, str]:
    """Check events after `after`, chained from `prev`. Returns (failure or None, last seq, last hash)."""
    expected_seq = after + 1
    for ev in _iter_events(session, after=after):
        if ev.seq != expected_seq:
            return VerifyResult(False, expected_seq - 1, expected_seq, "missing event (gap in sequence)"), after, prev
        if ev.prev_hash != prev:
            return VerifyResult(False, ev.seq, ev.seq, "prev_hash does not match the previous event"), after, prev
        h = event_hash(seq=ev.seq, prev_hash=ev.prev_hash, occurred_at=ev.occurred_at, actor=ev.actor,
                       action=ev.action, entity_type=ev.entity_type, entity_id=ev.entity_id,
                       payload=ev.payload, workspace_id=ev.workspace_id)
        if h != ev.hash:
            return VerifyResult(False, ev.seq, ev.seq, "event content does not match its hash"), after, prev
        prev = ev.hash
        after = ev.seq
        expected_seq += 1
    return None, after, prev


def _save_checkpoint(session: Session, seq: int, h: str, *, full: bool) -> None:
    now = utcnow()
    values = {"id": 1, "seq": seq, "hash": h, "verified_at": now, "full_verified_at": now if full else None}
    ins = dialect_insert(session, AuditCheckpoint).values(**values)
    update_cols = {"seq": ins.excluded.seq, "hash": ins.excluded.hash, "verified_at": ins.excluded.verified_at}
    if full:
        update_cols["full_verified_at"] = ins.excluded.full_verified_at
    # Two verifications racing must not move the checkpoint backwards.
    session.execute(ins.on_conflict_do_update(index_elements=["id"], set_=update_cols,
                                              where=AuditCheckpoint.seq <= ins.excluded.seq))


# Below this many events a full walk costs about a second, so `auto` simply re-proves everything: an
# edit of an already-verified row (which only re-hashing that row can reveal) is then always caught.
FULL_WALK_MAX_EVENTS = 100_000
MODES = ("auto", "incremental", "full")


def verify(session: Session, *, mode: str = "auto", full: bool = False) -> VerifyResult:
    result = _verify(session, mode=mode, full=full)
    # A failed verification is the alert an operator most needs (deploy/prometheus/alerts.yml); the last
    # event proved good is read from the checkpoint at scrape time.
    metrics.inc(metrics.AUDIT_VERIFICATIONS, result="ok" if result.ok else "failed")
    return result


def _verify(session: Session, *, mode: str = "auto", full: bool = False) -> VerifyResult:
    """Check the chain and name the first event whose hash, link or position is wrong.

    `incremental` resumes after the checkpoint (the last event a previous verification proved good,
    with its hash) after re-hashing that one event, so new events cost what they add, not what the
    chain holds. It proves the new events and every link to the old ones, but not that an old row was
    left alone: only re-hashing it shows that, which is what `full` does (on demand, and periodically).
    `auto` is incremental above FULL_WALK_MAX_EVENTS and full below it.
    """
    if full:
        mode = "full"
    if mode == "auto":
        head_seq = session.scalar(select(AuditHead.seq).where(AuditHead.id == 1)) or 0
        mode = "full" if head_seq <= FULL_WALK_MAX_EVENTS else "incremental"
    full = mode == "full"
    after, prev = 0, GENESIS_HASH
    cp = None if full else session.get(AuditCheckpoint, 1)
    if cp is not None and cp.seq > 0:
        ev = session.get(AuditEvent, cp.seq)
        if ev is None or ev.hash != cp.hash or event_hash(
                seq=ev.seq, prev_hash=ev.prev_hash, occurred_at=ev.occurred_at, actor=ev.actor,
                action=ev.action, entity_type=ev.entity_type, entity_id=ev.entity_id,
                payload=ev.payload, workspace_id=ev.workspace_id) != cp.hash:
            return VerifyResult(False, cp.seq, cp.seq, "the checkpointed event changed since it was verified",
                                mode="incremental", verified_from=cp.seq)
        after, prev = cp.seq, cp.hash
    start = after
    bad, last_seq, last_hash = _walk(session, after=after, prev=prev)
    mode = "full" if cp is None else "incremental"
    if bad is not None:
        bad.mode, bad.verified_from, bad.checked = mode, start, bad.events - start
        return bad
    head = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
    if head.seq != last_seq or head.hash != last_hash:
        # The tail was deleted or the head was rewritten.
        return VerifyResult(False, last_seq, last_seq + 1 if head.seq > last_seq else None,
                            "chain head does not match the last event", mode=mode, verified_from=start,
                            checked=last_seq - start)
    if last_seq > 0:
        _save_checkpoint(session, last_seq, last_hash, full=full)
    return VerifyResult(True, last_seq, None, mode=mode, verified_from=start, checked=last_seq - start)


def chain_head(session: Session) -> dict[str, Any]:
    """The newest event's sequence number and hash: a document that names it can be checked against the
    chain later (every event before it is fixed by that hash)."""
    row = session.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    return {"seq": row[0], "hash": row[1]} if row else {"seq": 0, "hash": None}
