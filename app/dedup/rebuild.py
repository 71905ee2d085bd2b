"""Dataset rebuilds: the request (queued as a task), the rebuild itself in the caller's transaction
(jobs.py runs it and reports progress) and the view of its progress.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core import jobs
from app.core.auth import Actor
from app.core.errors import InvalidState
from app.core.sql import any_of, in_chunks, is_pg
from app.dedup import containment
from app.dedup.cluster import METHOD_EXACT
from app.dedup.eval_guard import guard_hits, index_eval_ngrams, store_eval_hits
from app.dedup.index import drop_index, hasher, open_index
from app.dedup.minhash import MinHashSpec, Signatures, from_bytes
from app.dedup.recluster import recluster
from app.dedup.schemas import DedupPolicy, parse_policy
from app.dedup.store import (
    Doc,
    insert_pairs,
    load_docs,
    lock_state,
    policy_of,
    store_signatures,
    verified_pairs,
)
from app.models.dataset import Dataset
from app.models.dedup import DedupEvalHit, DedupPair, DedupRebuild, DedupSignature
from app.models.example import DuplicateLink, Example

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



def rebuild_dataset(session: Session, ds: Dataset, *, rebuild_id: str, batch_size: int,
                    progress: Callable[..., None] | None = None) -> tuple[dict, int]:
    """Re-index a dataset into a fresh index generation and recompute every cluster from scratch, holding
    the dataset's dedup lock so that no batch is compared against a half-built index meanwhile.
    ``(result, old generation)``: the caller drops the old generation's index once this has committed."""
    policy = policy_of(ds)
    spec = policy.spec
    state = lock_state(session, ds.id)
    old_gen, gen = state.generation, state.generation + 1
    drop_index(ds.id, gen)
    idx = open_index(session, ds.id, policy, gen, warm=False)
    ids = _rebuilt_ids(session, ds.id)
    if progress:
        progress(total=len(ids))
    stored = _stored_signatures(session, ids)
    pairs: dict[tuple[uuid.UUID, uuid.UUID], tuple[float, str]] = {}
    hits: list[dict] = []
    reused = 0
    for lo in range(0, len(ids), batch_size):
        docs = load_docs(session, ids[lo : lo + batch_size], ds.id)
        batch = list(docs.values())
        sigs, n = _signatures(session, ds.id, spec, batch, stored)
        reused += n
        found = idx.query_insert([d.id.bytes for d in batch], sigs)
        cands = {d.id: {uuid.UUID(bytes=c) for c in cs} - {d.id} for d, cs in zip(batch, found, strict=True)}
        pairs.update(verified_pairs(session, ds.id, policy, cands, docs)[0])
        if ds.is_eval_set:
            index_eval_ngrams(session, ds, policy, batch)
        if policy.eval_guard:
            hits += guard_hits(session, ds, policy, batch)
        if progress:
            progress(done=min(len(ids), lo + batch_size))
    session.execute(delete(DedupPair).where(DedupPair.dataset_id == ds.id))
    insert_pairs(session, ds.id, pairs)
    _replace_eval_hits(session, ds, policy, hits)
    changes = recluster(session, ds.id, policy, set(ids), in_batch=set())
    state.generation = gen
    state.spec_tag = spec.tag
    result = {"examples": len(ids), "signatures_reused": reused, "pairs": len(pairs),
              "demoted": len(changes["demoted"]), "restored": len(changes["restored"]),
              "eval_hits": len(hits), "generation": gen, "spec": spec.tag,
              "threshold": policy.threshold}
    audit.record(session, actor="system:dedup", action="dedup.rebuilt", entity_type="dataset",
                 entity_id=ds.id, payload={"rebuild_id": rebuild_id, **result})
    return result, old_gen


def _rebuilt_ids(session: Session, dataset_id: uuid.UUID) -> list[uuid.UUID]:
    """What a rebuild compares: examples that finished the pipeline, not erased, not an exact copy found
    at ingest (those keep their link to the copy they found), oldest first."""
    exact = select(DuplicateLink.example_id).where(DuplicateLink.dataset_id == dataset_id,
                                                  DuplicateLink.method == METHOD_EXACT)
    return list(session.scalars(
        select(Example.id).where(Example.dataset_id == dataset_id, Example.stage.is_(None),
                                 Example.status != "erased", Example.id.not_in(exact))
        .order_by(Example.created_at, Example.id)
    ))


def _stored_signatures(session: Session, ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple]:
    pg = is_pg(session)
    stored = {}
    for chunk in in_chunks(ids, pg=pg):
        for r in session.execute(select(DedupSignature).where(any_of(DedupSignature.example_id, chunk, pg=pg))):
            stored[r[0].example_id] = (r[0].revision_id, r[0].spec_tag, r[0].signature, r[0].flags)
    return stored


def _signatures(session: Session, dataset_id: uuid.UUID, spec: MinHashSpec, batch: list[Doc],
                stored: dict[uuid.UUID, tuple]) -> tuple[Signatures, int]:
    """The batch's signatures and how many were reused: stored signatures of the current revision under
    the same spec are reused as they are; the others are computed and stored."""
    fresh = [d for d in batch if not (d.id in stored and stored[d.id][0] == d.revision_id
                                      and stored[d.id][1] == spec.tag)]
    values = {}
    if fresh:
        s = hasher(spec).signatures([d.text for d in fresh])
        store_signatures(session, dataset_id, fresh, s, spec)
        values.update({d.id: (v, f) for d, v, f in zip(fresh, s.values, s.flags, strict=True)})
    reused = 0
    for d in batch:
        if d.id not in values:
            values[d.id] = (from_bytes(stored[d.id][2], spec), stored[d.id][3])
            reused += 1
    sigs = Signatures(spec, np.vstack([values[d.id][0] for d in batch]),
                      np.asarray([values[d.id][1] for d in batch], dtype=np.int32))
    return sigs, reused


def _replace_eval_hits(session: Session, ds: Dataset, policy: DedupPolicy, hits: list[dict]) -> None:
    side = DedupEvalHit.eval_dataset_id if ds.is_eval_set else DedupEvalHit.dataset_id
    stale = delete(DedupEvalHit).where(side == ds.id)
    if ds.is_eval_set and policy.eval_containment is not None:
        # Containment is found from the training side only (training n-grams are not kept):
        # an eval set's rebuild recomputes its Jaccard hits and keeps those.
        stale = stale.where(DedupEvalHit.method != containment.METHOD)
    session.execute(stale)
    store_eval_hits(session, hits)
