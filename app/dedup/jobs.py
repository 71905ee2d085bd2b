"""Dedup's job bodies: each opens its own sessions (the rebuild, the evaluation-set sweep). Celery tasks
and the in-process runner call these; the services they use take a session and never commit.
"""

from __future__ import annotations

import uuid

import numpy as np
from sqlalchemy import delete, select, update

from app.audit import service as audit
from app.core import jobs as core_jobs
from app.core.errors import NotFound
from app.dedup import containment
from app.dedup.cluster import METHOD_EXACT, METHOD_MINHASH, verify_exact
from app.dedup.eval_guard import (
    EVAL_SWEEP_TASK,
    containment_hits,
    guard_hits,
    index_eval_ngrams,
    store_eval_hits,
)
from app.dedup.index import drop_index, hasher, open_index
from app.dedup.minhash import Signatures, from_bytes, shingle_sets
from app.dedup.rebuild import REBUILD_TASK
from app.dedup.recluster import recluster
from app.dedup.store import chunks, in_list, insert_ignore, load_docs, lock_state, policy_of, store_signatures
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.dedup import DedupEvalHit, DedupPair, DedupRebuild, DedupSignature, DedupState
from app.models.example import DuplicateLink, Example


def _progress(rebuild_id: uuid.UUID, **values) -> None:
    from app.core.db import session_scope

    with session_scope() as s:
        s.execute(update(DedupRebuild).where(DedupRebuild.id == rebuild_id).values(**values))


def rebuild(dataset_id: str, rebuild_id: str, batch_size: int = 2000) -> dict:
    """Re-index a dataset into a fresh index generation and recompute every cluster from scratch, holding
    the dataset's dedup lock so that no batch is compared against a half-built index meanwhile."""
    from app.core.db import session_scope

    rb_id, ds_id = uuid.UUID(rebuild_id), uuid.UUID(dataset_id)
    _progress(rb_id, status="running", started_at=utcnow())
    try:
        with session_scope() as session:
            ds = session.get(Dataset, ds_id)
            if ds is None:
                raise NotFound(f"dataset {dataset_id} not found")
            policy = policy_of(ds)
            spec = policy.spec
            state = lock_state(session, ds.id)
            # SQLite has one writer: while this transaction holds the lock, progress cannot commit beside
            # it, so there it is reported at the end only.
            live = session.get_bind().dialect.name == "postgresql"
            old_gen, gen = state.generation, state.generation + 1
            drop_index(ds.id, gen)
            idx = open_index(session, ds.id, policy, gen, warm=False)
            exact = select(DuplicateLink.example_id).where(DuplicateLink.dataset_id == ds.id,
                                                          DuplicateLink.method == METHOD_EXACT)
            ids = list(session.scalars(
                select(Example.id).where(Example.dataset_id == ds.id, Example.stage.is_(None),
                                         Example.status != "erased", Example.id.not_in(exact))
                .order_by(Example.created_at, Example.id)
            ))
            if live:
                _progress(rb_id, total=len(ids))
            stored = {}
            for chunk in chunks(session, ids):
                for r in session.execute(select(DedupSignature).where(in_list(session, DedupSignature.example_id, chunk))):
                    stored[r[0].example_id] = (r[0].revision_id, r[0].spec_tag, r[0].signature, r[0].flags)
            pairs: dict[tuple[uuid.UUID, uuid.UUID], tuple[float, str]] = {}
            hits: list[dict] = []
            reused = 0
            for lo in range(0, len(ids), batch_size):
                docs = load_docs(session, ids[lo : lo + batch_size], ds.id)
                batch = list(docs.values())
                # Stored signatures of the current revision under the same spec are reused as they are.
                fresh = [d for d in batch if not (d.id in stored and stored[d.id][0] == d.revision_id
                                                  and stored[d.id][1] == spec.tag)]
                values = {}
                if fresh:
                    s = hasher(spec).signatures([d.text for d in fresh])
                    store_signatures(session, ds.id, fresh, s, spec)
                    values.update({d.id: (v, f) for d, v, f in zip(fresh, s.values, s.flags, strict=True)})
                for d in batch:
                    if d.id not in values:
                        values[d.id] = (from_bytes(stored[d.id][2], spec), stored[d.id][3])
                        reused += 1
                sigs = Signatures(spec, np.vstack([values[d.id][0] for d in batch]),
                                  np.asarray([values[d.id][1] for d in batch], dtype=np.int32))
                found = idx.query_insert([d.id.bytes for d in batch], sigs)
                cands = {d.id: {uuid.UUID(bytes=c) for c in cs} - {d.id} for d, cs in zip(batch, found, strict=True)}
                need = {c for cs in cands.values() for c in cs} - set(docs)
                docs.update(load_docs(session, need, ds.id))
                sets = dict(zip(docs, shingle_sets([d.text for d in docs.values()], spec), strict=True))
                for p in verify_exact(cands, sets, policy.threshold):
                    a, b = sorted((p.a, p.b))
                    m = METHOD_EXACT if docs[a].content_sha256 == docs[b].content_sha256 else METHOD_MINHASH
                    pairs[(a, b)] = (p.similarity, m)
                if ds.is_eval_set:
                    index_eval_ngrams(session, ds, policy, batch)
                if policy.eval_guard:
                    hits += guard_hits(session, ds, policy, batch)
                if live:
                    _progress(rb_id, done=min(len(ids), lo + batch_size))
            session.execute(delete(DedupPair).where(DedupPair.dataset_id == ds.id))
            insert_ignore(session, DedupPair.__table__, [
                {"id": uuid.uuid4(), "dataset_id": ds.id, "example_a_id": a, "example_b_id": b, "method": m,
                 "similarity": s, "created_at": utcnow()} for (a, b), (s, m) in pairs.items()])
            side = DedupEvalHit.eval_dataset_id if ds.is_eval_set else DedupEvalHit.dataset_id
            stale = delete(DedupEvalHit).where(side == ds.id)
            if ds.is_eval_set and policy.eval_containment is not None:
                # Containment is found from the training side only (training n-grams are not kept):
                # an eval set's rebuild recomputes its Jaccard hits and keeps those.
                stale = stale.where(DedupEvalHit.method != containment.METHOD)
            session.execute(stale)
            store_eval_hits(session, hits)
            changes = recluster(session, ds.id, policy, set(ids), in_batch=set())
            state.generation = gen
            state.spec_tag = spec.tag
            result = {"examples": len(ids), "signatures_reused": reused, "pairs": len(pairs),
                      "demoted": len(changes["demoted"]), "restored": len(changes["restored"]),
                      "eval_hits": len(hits), "generation": gen, "spec": spec.tag,
                      "threshold": policy.threshold}
            audit.record(session, actor="system:dedup", action="dedup.rebuilt", entity_type="dataset",
                         entity_id=ds.id, payload={"rebuild_id": rebuild_id, **result})
        drop_index(ds_id, old_gen)
    except Exception as e:
        _progress(rb_id, status="failed", error=f"{type(e).__name__}: {e}"[:2000], finished_at=utcnow())
        raise
    _progress(rb_id, status="done", result=result, done=result["examples"], total=result["examples"],
              finished_at=utcnow())
    return result


def eval_sweep(eval_dataset_id: str, batch_size: int = 1000) -> dict:
    """Check the training sets' examples against an evaluation set's n-gram fingerprints: the containment
    half of "both orders are caught" (a training batch is checked when it arrives; this covers the
    training texts that were there before the evaluation items). One transaction per batch and
    idempotent hits: a crash loses one batch's work, and the redelivered task repeats harmlessly.
    Sweeps coalesce: one that starts after another already covered the latest fingerprints returns
    at once."""
    from app.core.db import session_scope

    eds = uuid.UUID(eval_dataset_id)
    with session_scope() as session:
        ev = session.get(Dataset, eds)
        state = session.get(DedupState, eds)
        if ev is None or state is None or not ev.is_eval_set:
            return {"skipped": "not an evaluation set"}
        version, swept = state.ngram_version, state.swept_version
        eval_policy = policy_of(ev)
        if version <= swept:
            return {"skipped": "already swept", "version": version}
        if eval_policy.eval_containment is None or not eval_policy.enabled:
            return {"skipped": "containment off"}
        trains = [(d.id, d.name) for d in session.scalars(select(Dataset).where(Dataset.is_eval_set.is_(False)))
                  if policy_of(d).enabled and policy_of(d).eval_guard]
    checked = flagged = 0
    for train_id, _name in trains:
        after: uuid.UUID | None = None
        while True:
            with session_scope() as session:
                q = (select(Example.id).where(Example.dataset_id == train_id, Example.status != "erased")
                     .order_by(Example.id).limit(batch_size))
                if after is not None:
                    q = q.where(Example.id > after)
                ids = list(session.scalars(q))
                if not ids:
                    break
                after = ids[-1]
                ev = session.get(Dataset, eds)
                docs = list(load_docs(session, ids, train_id).values())
                hits = containment_hits(session, train_id, [(ev, eval_policy)], docs)
                store_eval_hits(session, hits)
                checked += len(docs)
                flagged += len(hits)
                if hits:
                    audit.record(session, actor="system:dedup", action="dedup.eval_sweep", entity_type="dataset",
                                 entity_id=train_id, payload={
                                     "eval_dataset_id": eval_dataset_id, "ngram_version": version,
                                     "contaminates_eval": [[str(h["example_id"]), str(h["eval_example_id"]),
                                                            h["similarity"], h["method"]] for h in hits]})
    with session_scope() as session:
        session.execute(update(DedupState).where(DedupState.dataset_id == eds, DedupState.swept_version < version)
                        .values(swept_version=version))
    return {"eval_dataset_id": eval_dataset_id, "version": version, "training_sets": len(trains),
            "checked": checked, "flagged": flagged}


def register_local() -> None:
    """The in-process handlers the embedded mode runs these tasks with (no Celery worker)."""
    core_jobs.local_handler(REBUILD_TASK)(rebuild)
    core_jobs.local_handler(EVAL_SWEEP_TASK)(eval_sweep)
