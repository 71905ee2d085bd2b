"""Dataset rebuilds: the request (queued as a task) and the view of its progress.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core import jobs
from app.core.auth import Actor
from app.core.errors import InvalidState
from app.dedup.schemas import parse_policy
from app.dedup.store import policy_of
from app.models.dataset import Dataset
from app.models.dedup import DedupRebuild

REBUILD_TASK = "pedigree.dedup.rebuild"


def request_rebuild(session: Session, *, ds: Dataset, actor: Actor) -> DedupRebuild:
    parse_policy(ds.dedup_policy)  # a curator asking for a rebuild learns here that the policy is invalid
    running = session.scalar(select(DedupRebuild).where(
        DedupRebuild.dataset_id == ds.id, DedupRebuild.status.in_(("queued", "running"))))
    if running is not None:
        raise InvalidState("a rebuild of this dataset is already queued or running",
                           details={"rebuild": rebuild_view(running)})
    rb = DedupRebuild(dataset_id=ds.id, status="queued", requested_by=actor.ref, result={})
    session.add(rb)
    session.flush()
    audit.record(session, actor=actor.ref, action="dedup.rebuild.requested", entity_type="dataset",
                 entity_id=ds.id, payload={"rebuild_id": str(rb.id), "policy": policy_of(ds).model_dump()})
    jobs.enqueue(session, REBUILD_TASK, str(ds.id), str(rb.id), queue="dedup")
    return rb


def rebuild_view(rb: DedupRebuild) -> dict:
    return {
        "id": str(rb.id), "status": rb.status, "done": rb.done, "total": rb.total,
        "requested_by": rb.requested_by, "result": rb.result, "error": rb.error,
        "created_at": rb.created_at.isoformat(),
        "started_at": rb.started_at.isoformat() if rb.started_at else None,
        "finished_at": rb.finished_at.isoformat() if rb.finished_at else None,
    }

