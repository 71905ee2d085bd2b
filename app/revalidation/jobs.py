"""Revalidation's job bodies, which open their own sessions: one transaction per batch, progress committed
with it. The Celery tasks (workers/tasks/revalidation.py) and the embedded mode's in-process runner call
these.

Resumable and idempotent: a batch's examples get their new record (or new revision, back through the
pipeline) in the batch's transaction, together with the revalidation's cursor and counters. A worker killed
mid-batch rolls the batch back; the redelivered task (acks late) starts after the last committed cursor, and
an example already brought to the target is no candidate any more, so none is skipped and none revised
twice. A superseded revalidation stops at its next batch.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections import defaultdict
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased

from app.audit import service as audit
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.sql import any_of, aware, is_pg
from app.dedup import jobs as dedup_jobs
from app.examples import validation
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.dedup import DedupRebuild
from app.models.example import Example
from app.models.pii import PiiScrub
from app.models.validation import ExampleValidation, Revalidation
from app.pii import fingerprint, nlp, rescrub
from app.pii import service as pii
from app.revalidation import service

log = logging.getLogger(__name__)

ACTOR = "system:revalidation"


def _lock(session: Session, rid: uuid.UUID) -> Revalidation | None:
    q = select(Revalidation).where(Revalidation.id == rid)
    if is_pg(session):
        return session.scalar(q.with_for_update())
    # SQLite: take the write lock first, so a concurrent request cannot supersede between read and write.
    session.execute(update(Revalidation).where(Revalidation.id == rid).values(status=Revalidation.status))
    return session.scalar(q)


def _versions(session: Session) -> dict[str, Any]:
    nlp.load()
    return fingerprint.register(session, pii.engine())


def _cutoff(rv: Revalidation) -> dt.datetime | None:
    at = (rv.plan or {}).get("age_cutoff")
    return dt.datetime.fromisoformat(at) if at else None


def _plan(rv: Revalidation, **changes: Any) -> None:
    plan = dict(rv.plan or {})
    for k, v in changes.items():
        plan[k] = plan.get(k, 0) + v if isinstance(v, int) else v
    rv.plan = plan  # a new dict: JSON columns see reassignment, not mutation


def _start(rid: uuid.UUID) -> bool:
    with session_scope() as s:
        rv = _lock(s, rid)
        if rv is None or rv.status not in service.ACTIVE:
            return False
        ds = s.get(Dataset, rv.dataset_id)
        vers = _versions(s)
        target = service.current_target(ds, vers)
        if rv.status == "running" and rv.target == target:
            return True  # redelivered: resume after the committed cursor
        if rv.status == "running":
            # Redelivered to a worker with other versions (a deploy mid-run): its engine is the truth now.
            rv.cursor = None
        cutoff = service.age_cutoff(ds)
        rv.target = target
        _plan(rv, age_cutoff=cutoff.isoformat() if cutoff else None)
        rv.total = s.scalar(select(func.count()).select_from(
            service.candidates(ds, target, rv.triggers, rv.scope, cutoff).subquery())) or 0
        rv.status, rv.started_at = "running", rv.started_at or utcnow()
        audit.record(s, actor=ACTOR, action="revalidation.started", entity_type="dataset", entity_id=ds.id, workspace_id=ds.workspace_id,
                     payload={"revalidation_id": str(rv.id), "target": target, "candidates": rv.total,
                              "triggers": rv.triggers})
        return True


def revalidate_batch(s: Session, ds: Dataset, rv: Revalidation, ids: list[uuid.UUID],
                     vers: dict[str, Any]) -> dict[str, int]:
    """Bring these candidates to the target, in the caller's transaction: the recognizer prefilter clears
    what a recognizer change cannot touch (stamped at once, set-based), the rest is re-scrubbed from the
    vault (a new revision only where the output changes)."""
    now = utcnow()
    policy = pii.policy_of(ds)
    sha = pii.policy_sha(policy)
    if not policy.enabled:
        validation.stamp(s, ids, now=now, via="revalidation", versions=None, pii_policy_sha256=sha,
                         revalidation_id=rv.id)
        return {"changed": 0, "unchanged": len(ids), "approvals_reset": 0, "skipped": 0, "prefiltered": 0}
    pg = is_pg(s)
    v = ExampleValidation
    # Rows, not ORM objects: a batch's identity-map bookkeeping cost more than its reads.
    recs = {r.example_id: r for r in s.execute(
        select(v.example_id, v.validated_at, v.pii_engine, v.spacy_model, v.recognizers, v.pii_policy_sha256)
        .where(any_of(v.example_id, ids, pg=pg)))}
    missing = [i for i in ids if i not in recs]
    if missing:
        # No record (settled before records existed): the latest scrub says what checked it, and when.
        later = aliased(PiiScrub)
        latest = (select(later.id).where(later.example_id == PiiScrub.example_id)
                  .order_by(later.created_at.desc()).limit(1).scalar_subquery())
        for r in s.execute(select(PiiScrub.example_id, PiiScrub.created_at.label("validated_at"),
                                  PiiScrub.engine.label("pii_engine"), PiiScrub.model.label("spacy_model"),
                                  PiiScrub.recognizers, PiiScrub.policy_sha256.label("pii_policy_sha256"))
                           .where(any_of(PiiScrub.example_id, missing, pg=pg), PiiScrub.id == latest)):
            recs[r.example_id] = r
    target, trig, cutoff = rv.target, set(rv.triggers or []), _cutoff(rv)
    members = vers["members"]
    old_sets = fingerprint.members_of(s, sorted({r.recognizers for r in recs.values() if r.recognizers}))
    registry = {r.name: r for r in pii.engine().analyzer.registry.recognizers}
    full: list[uuid.UUID] = []
    pre: dict[frozenset[str], list[uuid.UUID]] = defaultdict(list)
    for eid in ids:
        r = recs.get(eid)
        whole_engine = (
            rv.scope == "all" or r is None or r.pii_policy_sha256 != sha
            or ("age" in trig and cutoff is not None and aware(r.validated_at) < cutoff)
            or any(t in trig and getattr(r, t) != target[t] for t in ("pii_engine", "spacy_model")))
        if whole_engine:
            full.append(eid)
        elif "recognizers" in trig and r.recognizers != target["recognizers"] and r.recognizers in old_sets:
            d = fingerprint.diff(old_sets[r.recognizers], members)
            names = frozenset(d["added"] + d["changed"] + d["removed"])
            runnable = [registry[n] for n in d["added"] + d["changed"] if n in registry]
            if fingerprint.SCRUB_RULES in names or not all(rescrub.prefilterable(x) for x in runnable):
                full.append(eid)
            else:
                pre[names].append(eid)
        else:
            full.append(eid)
    cleared: list[uuid.UUID] = []
    for names, group in pre.items():
        cand, clear = rescrub.prefilter(s, ds, group, set(names))
        full.extend(cand)
        cleared.extend(clear)
    validation.stamp(s, cleared, now=now, via="revalidation", versions=vers, pii_policy_sha256=sha,
                     revalidation_id=rv.id)
    out = {"changed": 0, "unchanged": len(cleared), "approvals_reset": 0, "skipped": 0, "prefiltered": len(cleared)}
    if full:
        res = rescrub.rescrub_batch(s, ds, sorted(full), reason=f"revalidation {rv.id}", force=True,
                                    revalidation_id=rv.id)
        out["changed"] += len(res["changed"])
        out["unchanged"] += res["unchanged"]
        out["approvals_reset"] += len(res["approvals_reset"])
        out["skipped"] += len(res["skipped_reviewed"])
    return out


def _step(rid: uuid.UUID, batch: int) -> str:
    """One unit of work: "more", "rebuild" (the dedup phase's rebuild is due) or "stop"."""
    with session_scope() as s:
        rv = _lock(s, rid)
        if rv is None or rv.status != "running":
            return "stop"
        ds = s.get(Dataset, rv.dataset_id)
        if rv.phase == "pii":
            ids = list(s.scalars(service.candidates(ds, rv.target, rv.triggers, rv.scope, _cutoff(rv), after=rv.cursor)
                                 .order_by(Example.id).limit(batch)))
            if not ids:
                rv.phase = "dedup"
                return "more"
            res = revalidate_batch(s, ds, rv, ids, _versions(s))
            rv.cursor, rv.done, rv.batches = ids[-1], rv.done + len(ids), rv.batches + 1
            rv.changed += res["changed"]
            rv.unchanged += res["unchanged"]
            rv.approvals_reset += res["approvals_reset"]
            rv.skipped += res["skipped"]
            _plan(rv, prefiltered=res["prefiltered"], rescrubbed=len(ids) - res["prefiltered"] - res["skipped"])
            return "more"
        if "dedup_policy" in (rv.triggers or []) and service.dedup_mismatch(s, ds, rv.target):
            done = (rv.plan or {}).get("rebuild_id")
            if not (done and (rb := s.get(DedupRebuild, uuid.UUID(done))) is not None and rb.status == "done"):
                return "rebuild"
            _stamp_dedup(s, ds, rv)
        _finish(s, ds, rv)
        return "stop"


def _stamp_dedup(s: Session, ds: Dataset, rv: Revalidation) -> None:
    """The dataset was re-clustered under the target dedup policy: every record says so; those whose PII
    versions are the target's too are validated now."""
    t, v, now = rv.target, ExampleValidation, utcnow()
    s.execute(update(v).where(v.dataset_id == ds.id).values(dedup_policy_sha256=t["dedup_policy_sha256"]))
    fresh = list(s.scalars(select(v.example_id).where(
        v.dataset_id == ds.id, v.pii_engine == t["pii_engine"], v.spacy_model == t["spacy_model"],
        v.recognizers == t["recognizers"])))
    pg = is_pg(s)
    from app.core.sql import in_chunks

    for part in in_chunks(fresh, pg=pg):
        s.execute(update(v).where(any_of(v.example_id, part, pg=pg)).values(validated_at=now, via="revalidation",
                                                                            revalidation_id=rv.id))
        s.execute(update(Example).where(any_of(Example.id, part, pg=pg)).values(last_validated_at=now))
    _plan(rv, dedup_restamped=len(fresh))


def _finish(s: Session, ds: Dataset, rv: Revalidation) -> None:
    rv.status, rv.phase, rv.finished_at = "done", "done", utcnow()
    audit.record(s, actor=ACTOR, action="revalidation.done", entity_type="dataset", entity_id=ds.id, workspace_id=ds.workspace_id,
                 payload={"revalidation_id": str(rv.id), "examples": rv.done, "changed": rv.changed,
                          "unchanged": rv.unchanged, "approvals_reset": rv.approvals_reset, "skipped": rv.skipped})


def _rebuild(rid: uuid.UUID) -> None:
    with session_scope() as s:
        rv = _lock(s, rid)
        if rv is None or rv.status != "running":
            return
        rb = DedupRebuild(dataset_id=rv.dataset_id, status="queued", requested_by=ACTOR, result={})
        s.add(rb)
        s.flush()
        _plan(rv, rebuild_id=str(rb.id))
        ds_id, rb_id = str(rv.dataset_id), str(rb.id)
    # Its own transaction (app/dedup/jobs.py); a crash inside it rolls it back and the redelivered task
    # starts a new one, since the recorded rebuild is not done.
    dedup_jobs.rebuild(ds_id, rb_id)


def run(revalidation_id: str, batch: int | None = None) -> dict[str, Any]:
    rid = uuid.UUID(str(revalidation_id))
    batch = batch or get_settings().revalidation_batch_size
    if _start(rid):
        while True:
            step = _step(rid, batch)
            if step == "rebuild":
                _rebuild(rid)
            elif step == "stop":
                break
    with session_scope() as s:
        rv = s.get(Revalidation, rid)
        return service.view(rv) if rv is not None else {}


def check(dataset_id: str | None = None) -> list[str]:
    """Compare every dataset's records (or one's) with this process's versions; queue what is due."""
    out: list[str] = []
    with session_scope() as s:
        vers = _versions(s)
        q = select(Dataset)
        if dataset_id:
            q = q.where(Dataset.id == uuid.UUID(str(dataset_id)))
        for ds in s.scalars(q):
            rv = service.check(s, ds, vers)
            if rv is not None:
                out.append(str(rv.id))
    if out:
        log.info("revalidation check queued %d revalidations", len(out))
    return out
