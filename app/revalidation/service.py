"""Revalidation requests, candidates and progress. A dataset's examples are candidates when their
validation record (app/examples/validation.py) differs from the current versions on a trigger its
`governance_policy.revalidate_on` lists, or is older than `revalidate_after_days`. The batches themselves
run in app/revalidation/jobs.py.

Every request supersedes the dataset's queued or running revalidation (the newer one wins; the older stops at
its next batch), in the request's transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from sqlalchemy import ColumnElement, exists, false, func, or_, select, true, update
from sqlalchemy.orm import Session, aliased

from app.audit import service as audit
from app.core import jobs
from app.core.auth import Actor
from app.core.errors import NotFound
from app.core.sql import iso
from app.datasets import service as datasets
from app.datasets.policies import GovernancePolicy
from app.examples.validation import dedup_policy_sha
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.example import Example
from app.models.pii import PiiScrub
from app.models.validation import ExampleValidation, Revalidation
from app.pii import rescrub
from app.pii import service as pii
from app.pipeline import stages

log = logging.getLogger(__name__)

RUN_TASK = "pedigree.revalidation.run"
CHECK_TASK = "pedigree.revalidation.check"
QUEUE = "pii"  # the engine's workers: the revalidation's target is their engine's versions
ACTIVE = ("queued", "running")
PII_TRIGGERS = ("pii_engine", "spacy_model", "recognizers")


def policy_of(ds: Dataset) -> GovernancePolicy:
    return GovernancePolicy.effective(ds.governance_policy)


def current_target(ds: Dataset, versions: dict[str, Any]) -> dict[str, Any]:
    return {"pii_engine": versions["pii_engine"], "spacy_model": versions["spacy_model"],
            "recognizers": versions["recognizers"], "dedup_policy_sha256": dedup_policy_sha(ds.dedup_policy)}


def _pii_on(ds: Dataset) -> bool:
    return pii.policy_of(ds).enabled


def age_cutoff(ds: Dataset, now: dt.datetime | None = None) -> dt.datetime | None:
    days = policy_of(ds).revalidate_after_days
    return (now or utcnow()) - dt.timedelta(days=days) if days else None


def pii_mismatch(ds: Dataset, target: dict[str, Any], triggers: list[str], scope: str,
                 cutoff: dt.datetime | None) -> ColumnElement[bool]:
    """Where an example's record differs from the target on a trigger (the record joined as `v`)."""
    v = ExampleValidation
    if scope == "all":
        return true()
    conds: list[ColumnElement[bool]] = [v.example_id.is_(None)]
    if _pii_on(ds):
        for t in PII_TRIGGERS:
            if t in triggers:
                col = getattr(v, t)
                conds.append(col.is_(None) | (col != target[t]))
    if cutoff is not None and "age" in triggers:
        conds.append(v.validated_at < cutoff)
    return or_(*conds) if conds else false()


def candidates(ds: Dataset, target: dict[str, Any], triggers: list[str], scope: str,
               cutoff: dt.datetime | None, after: uuid.UUID | None = None):
    """Example ids to re-check in the pii phase: settled (or waiting for dedup), scrubbed at least once."""
    later = aliased(PiiScrub)
    q = (select(Example.id)
         .outerjoin(ExampleValidation, ExampleValidation.example_id == Example.id)
         .where(Example.dataset_id == ds.id, Example.status.in_(rescrub.RESCRUBBABLE),
                Example.stage.is_(None) | (Example.stage == stages.next_stage("pii")),
                exists().where(later.example_id == Example.id),
                pii_mismatch(ds, target, triggers, scope, cutoff)))
    if after is not None:
        q = q.where(Example.id > after)
    return q


def dedup_mismatch(session: Session, ds: Dataset, target: dict[str, Any]) -> int:
    v = ExampleValidation
    return session.scalar(select(func.count()).select_from(v).where(
        v.dataset_id == ds.id, v.dedup_policy_sha256.is_(None) | (v.dedup_policy_sha256 != target["dedup_policy_sha256"])
    )) or 0


def triggers_of(ds: Dataset) -> list[str]:
    on = list(policy_of(ds).revalidate_on)
    if policy_of(ds).revalidate_after_days:
        on.append("age")
    return on


def request(session: Session, ds: Dataset, *, actor: str, triggers: list[str], scope: str = "changed",
            reason: str = "requested") -> Revalidation:
    """Queue a revalidation of `ds` (sent after commit); an active one of the same dataset is superseded."""
    rv = Revalidation(dataset_id=ds.id, status="queued", triggers=triggers, scope=scope, requested_by=actor,
                      phase="pii", plan={"reason": reason})
    session.add(rv)
    session.flush()
    old = list(session.scalars(select(Revalidation.id).where(Revalidation.dataset_id == ds.id,
                                                             Revalidation.status.in_(ACTIVE), Revalidation.id != rv.id)))
    if old:
        session.execute(update(Revalidation).where(Revalidation.id.in_(old))
                        .values(status="superseded", superseded_by=rv.id, finished_at=utcnow()))
    audit.record(session, actor=actor, action="revalidation.requested", entity_type="dataset", entity_id=ds.id,
                 payload={"revalidation_id": str(rv.id), "triggers": triggers, "scope": scope, "reason": reason,
                          "superseded": [str(i) for i in old]})
    jobs.enqueue(session, RUN_TASK, str(rv.id), queue=QUEUE)
    return rv


def request_api(session: Session, *, dataset_ref: str, actor: Actor, triggers: list[str] | None,
                scope: str) -> Revalidation:
    ds = datasets.get(session, dataset_ref)
    # Asked for by name, a trigger counts whatever the dataset's policy lists: the policy says what fires on
    # its own, a curator may still ask.
    chosen = list(dict.fromkeys(triggers)) if triggers else triggers_of(ds)
    return request(session, ds, actor=actor.ref, triggers=chosen + (["requested"] if scope == "all" else []),
                   scope=scope)


def check(session: Session, ds: Dataset, versions: dict[str, Any]) -> Revalidation | None:
    """Detect a change by comparing the records with the current versions; request a revalidation where
    one is due and none with this target is queued or running. Examples a finished revalidation with
    this target skipped (edited after their scrub) do not fire it again."""
    triggers = triggers_of(ds)
    if not triggers:
        return None
    target = current_target(ds, versions)
    cutoff = age_cutoff(ds)
    n = session.scalar(select(func.count()).select_from(
        candidates(ds, target, triggers, "changed", cutoff).subquery())) or 0
    dedup = dedup_mismatch(session, ds, target) if "dedup_policy" in triggers else 0
    if not n and not dedup:
        return None
    same = list(session.scalars(select(Revalidation).where(Revalidation.dataset_id == ds.id)
                                .order_by(Revalidation.created_at.desc()).limit(5)))
    for rv in same:
        if rv.target == target and rv.status in ACTIVE:
            return None
        if rv.target == target and rv.status == "done" and n <= rv.skipped and not dedup:
            return None
    fired = [t for t in triggers if t in PII_TRIGGERS or t == "age"] if n else []
    if dedup:
        fired.append("dedup_policy")
    return request(session, ds, actor="system:revalidation", triggers=fired, reason="check")


def get(session: Session, revalidation_id: str) -> Revalidation:
    try:
        rid = uuid.UUID(str(revalidation_id))
    except ValueError:
        rid = None
    rv = session.get(Revalidation, rid) if rid else None
    missing = NotFound(f"revalidation {revalidation_id} not found", details={"revalidation": str(revalidation_id)})
    if rv is None:
        raise missing
    datasets.check_dataset_id(session, rv.dataset_id, missing)
    return rv


def list_for(session: Session, *, dataset_ref: str, limit: int = 20) -> list[Revalidation]:
    ds = datasets.get(session, dataset_ref)
    return list(session.scalars(select(Revalidation).where(Revalidation.dataset_id == ds.id)
                                .order_by(Revalidation.created_at.desc()).limit(limit)))


def view(rv: Revalidation) -> dict[str, Any]:
    return {
        "id": str(rv.id), "dataset_id": str(rv.dataset_id), "status": rv.status, "phase": rv.phase,
        "triggers": list(rv.triggers or []), "scope": rv.scope, "requested_by": rv.requested_by,
        "target": rv.target, "total": rv.total, "done": rv.done, "changed": rv.changed, "unchanged": rv.unchanged,
        "approvals_reset": rv.approvals_reset, "skipped": rv.skipped, "batches": rv.batches,
        "plan": rv.plan or {}, "created_at": iso(rv.created_at), "started_at": iso(rv.started_at),
        "finished_at": iso(rv.finished_at),
        "superseded_by": str(rv.superseded_by) if rv.superseded_by else None, "error": rv.error,
    }


# Dataset changes that can make examples' validation stale: a dedup policy, or the revalidation policy.
_KEYS = frozenset({"dedup_policy", "governance_policy"})


def on_audit(events: list[dict[str, Any]]) -> None:
    """After a commit that changed a dataset's dedup or governance policy: check it (queue "pii")."""
    for ev in events:
        if ev["action"] == "dataset.updated" and ev.get("entity_id") and _KEYS & set(ev.get("payload") or {}):
            try:
                jobs.send(CHECK_TASK, [str(ev["entity_id"])], QUEUE)
            except Exception:
                log.exception("could not queue the revalidation check of dataset %s", ev["entity_id"])
