"""The evaluation-set guard: training examples near (Jaccard) or containing/contained in (n-grams) an
evaluation example are hits; a snapshot leaves them out unless a curator allowed the overlap.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core import jobs
from app.core.sql import any_of, in_chunks, insert_ignore, is_pg
from app.dedup import containment
from app.dedup.cluster import METHOD_MINHASH
from app.dedup.index import hasher, open_index
from app.dedup.minhash import shingle_sets
from app.dedup.queries import contaminating
from app.dedup.schemas import DedupPolicy
from app.dedup.store import Doc, ensure_state, load_docs, policy_of
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.dedup import DedupEvalHit, DedupEvalNgram, DedupState
from app.models.example import Example

EVAL_SWEEP_TASK = "pedigree.dedup.eval_sweep"


def guard_hits(session: Session, ds: Dataset, policy: DedupPolicy, batch: list[Doc]) -> list[dict]:
    """Training examples near any evaluation example. A training batch queries every eval set's index; an
    eval batch queries every training set's index, so the order in which the two arrive does not matter.
    The eval set's policy (shingles, threshold) decides, since it defines what "seen in training" means.
    A training batch is also checked for containment against every eval set that asks for it (the other
    order is the eval sweep's: training n-grams are not kept)."""
    indexed = select(DedupState.dataset_id)
    others = session.scalars(
        select(Dataset).where(Dataset.id != ds.id, Dataset.id.in_(indexed), Dataset.is_eval_set.is_(not ds.is_eval_set))
    ).all()
    hits: list[dict] = []
    texts = [d.text for d in batch]
    contained: list[tuple[Dataset, DedupPolicy]] = []  # eval sets to look the batch's n-grams up in
    for other in others:
        other_policy = policy_of(other)
        if not other_policy.enabled:
            continue
        eval_ds, eval_policy = (ds, policy) if ds.is_eval_set else (other, other_policy)
        if not ds.is_eval_set and eval_policy.eval_containment is not None:
            contained.append((other, other_policy))
        state = ensure_state(session, other.id)
        idx = open_index(session, other.id, other_policy, state.generation)
        found = idx.query(hasher(other_policy.spec).signatures(texts))
        need = {uuid.UUID(bytes=c) for cs in found for c in cs}
        if not need:
            continue
        their = load_docs(session, need, other.id)
        spec = eval_policy.spec
        mine_sets = shingle_sets(texts, spec)
        their_ids = list(their)
        their_sets = dict(zip(their_ids, shingle_sets([their[i].text for i in their_ids], spec), strict=True))
        for d, cs, s in zip(batch, found, mine_sets, strict=True):
            for c in cs:
                cid = uuid.UUID(bytes=c)
                t = their_sets.get(cid)
                if not t or not s:
                    continue
                sim = len(s & t) / len(s | t)
                if sim >= eval_policy.threshold:
                    train_id, eval_id = (cid, d.id) if ds.is_eval_set else (d.id, cid)
                    train_ds = other.id if ds.is_eval_set else ds.id
                    hits.append({"dataset_id": train_ds, "example_id": train_id, "eval_dataset_id": eval_ds.id,
                                 "eval_example_id": eval_id, "similarity": sim, "method": METHOD_MINHASH})
    if contained:
        hits += containment_hits(session, ds.id, contained, batch)
    # One hit per pair: a near copy is also contained; Jaccard, found first here, is what it is called.
    out: dict[tuple[uuid.UUID, uuid.UUID], dict] = {}
    for h in hits:
        key = (h["example_id"], h["eval_example_id"])
        if key not in out or (out[key]["method"] != METHOD_MINHASH and h["method"] == METHOD_MINHASH):
            out[key] = h
    return list(out.values())


def index_eval_ngrams(session: Session, ds: Dataset, policy: DedupPolicy, batch: list[Doc]) -> None:
    """An evaluation batch's n-gram fingerprints replace those of the same examples' older revisions."""
    pg = is_pg(session)
    for chunk in in_chunks([d.id for d in batch], pg=pg):
        session.execute(delete(DedupEvalNgram).where(any_of(DedupEvalNgram.example_id, chunk, pg=pg)))
    if policy.eval_containment is None:
        return
    grams = containment.Ngrams([d.text for d in batch], policy)
    rows = [{"example_id": d.id, "h": h, "eval_dataset_id": ds.id}
            for d, fp in zip(batch, grams.fingerprints, strict=True) for h in fp.tolist()]
    if not rows:
        return
    insert_ignore(session, DedupEvalNgram.__table__, rows)
    # Training texts that arrived before these items are checked against them by a sweep, after commit.
    ensure_state(session, ds.id)
    session.execute(update(DedupState).where(DedupState.dataset_id == ds.id)
                    .values(ngram_version=DedupState.ngram_version + 1))
    jobs.enqueue(session, EVAL_SWEEP_TASK, str(ds.id), queue="dedup")


_NGRAM_LOOKUP_CHUNK = 5000  # hashes per IN (...) list on SQLite (PostgreSQL: one array)


def containment_hits(session: Session, train_ds_id: uuid.UUID, evals: list[tuple[Dataset, DedupPolicy]],
                     batch: list[Doc]) -> list[dict]:
    """Training examples of the batch that contain an evaluation example or are contained in one (see
    containment.py): candidates by the stored n-gram hashes, verified on the n-grams. Eval sets that
    cut n-grams alike share the batch's n-grams and one lookup."""
    pg = is_pg(session)
    groups: dict[tuple[int, int], list[tuple[Dataset, DedupPolicy]]] = defaultdict(list)
    for ev, pol in evals:
        groups[(pol.eval_ngram, pol.max_chars)].append((ev, pol))
    hits = []
    for members in groups.values():
        spec_policy = members[0][1]
        policies = {ev.id: pol for ev, pol in members}
        grams = containment.Ngrams([d.text for d in batch], spec_policy)
        # Fingerprint -> positions in the batch, as sorted arrays (a dict of lists per batch made enough
        # small objects to set off the garbage collector mid-batch).
        fp, pos = grams.fp, grams.fp_doc
        order = np.argsort(fp, kind="stable")
        fp, pos = fp[order], pos[order]
        wanted = np.unique(fp).tolist()
        if not wanted:
            continue
        t = DedupEvalNgram.__table__
        in_sets = t.c.eval_dataset_id.in_(list(policies))
        # Evaluation sets are usually small: when they hold no more fingerprints than the batch looks up,
        # their hashes alone (plain integers) are one short read, intersected here; only the matches
        # come back with their example ids. Otherwise the batch's fingerprints are looked up.
        stored = session.scalars(select(t.c.h).where(in_sets).limit(len(wanted) + 1)).all()
        if len(stored) <= len(wanted):
            wanted = np.intersect1d(fp, np.asarray(stored, dtype=np.int64)).tolist()
        rows = [r for chunk in in_chunks(wanted, pg=pg, size=_NGRAM_LOOKUP_CHUNK)
                for r in session.execute(select(t.c.h, t.c.example_id, t.c.eval_dataset_id)
                                         .where(in_sets, any_of(t.c.h, chunk, pg=pg)))]
        hs = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        los, his = np.searchsorted(fp, hs, side="left"), np.searchsorted(fp, hs, side="right")
        cands: set[tuple[int, uuid.UUID, uuid.UUID]] = set()
        for k in np.flatnonzero(his > los).tolist():
            _, eid, eds = rows[k]
            cands.update((int(i), eds, eid) for i in pos[los[k]:his[k]].tolist())
        if not cands:
            continue
        theirs = load_docs(session, {eid for _, _, eid in cands})
        their_ids = list(theirs)
        their_grams = containment.Ngrams([theirs[e].text for e in their_ids], spec_policy)
        their_sets = {e: their_grams.set(k) for k, e in enumerate(their_ids)}
        mine: dict[int, set[bytes]] = {}
        for i, eds, eid in sorted(cands):
            if eid not in theirs or theirs[eid].dataset_id != eds:
                continue
            if i not in mine:
                mine[i] = grams.set(i)
            c = containment.overlap(mine[i], their_sets[eid])
            if c is not None and c >= policies[eds].eval_containment:
                hits.append({"dataset_id": train_ds_id, "example_id": batch[i].id, "eval_dataset_id": eds,
                             "eval_example_id": eid, "similarity": round(c, 4), "method": containment.METHOD})
    return hits


def store_eval_hits(session: Session, hits: list[dict]) -> None:
    now = utcnow()
    insert_ignore(session, DedupEvalHit.__table__, [{"id": uuid.uuid4(), "created_at": now, **h} for h in hits])


def contaminates_eval(session: Session, example_id: uuid.UUID) -> bool:
    ex = session.get(Example, example_id)
    if ex is None:
        return False
    return session.scalar(select(func.count()).select_from(
        contaminating(ex.dataset_id).where(DedupEvalHit.example_id == example_id).subquery()
    )) > 0



# --- the sweep (jobs.eval_sweep runs it, one transaction per step) -----------------------------------------


@dataclass
class SweepPlan:
    eval_dataset_id: uuid.UUID
    version: int  # the n-gram version this sweep covers
    policy: DedupPolicy  # the evaluation set's
    train_ids: list[uuid.UUID]


def sweep_plan(session: Session, eval_dataset_id: uuid.UUID) -> SweepPlan | dict:
    """What a sweep of this evaluation set covers, or why there is nothing to do (the task's answer)."""
    ev = session.get(Dataset, eval_dataset_id)
    state = session.get(DedupState, eval_dataset_id)
    if ev is None or state is None or not ev.is_eval_set:
        return {"skipped": "not an evaluation set"}
    version, swept = state.ngram_version, state.swept_version
    eval_policy = policy_of(ev)
    if version <= swept:
        return {"skipped": "already swept", "version": version}
    if eval_policy.eval_containment is None or not eval_policy.enabled:
        return {"skipped": "containment off"}
    trains = [d.id for d in session.scalars(select(Dataset).where(Dataset.is_eval_set.is_(False)))
              if policy_of(d).enabled and policy_of(d).eval_guard]
    return SweepPlan(eval_dataset_id, version, eval_policy, trains)


def sweep_batch(session: Session, plan: SweepPlan, train_id: uuid.UUID, *, after: uuid.UUID | None,
                limit: int) -> tuple[uuid.UUID, int, int] | None:
    """Check the next ``limit`` training examples after ``after`` (by id): ``(last id, checked, flagged)``,
    or None when the training set is done. Hits are idempotent, so a repeated step is harmless."""
    q = (select(Example.id).where(Example.dataset_id == train_id, Example.status != "erased")
         .order_by(Example.id).limit(limit))
    if after is not None:
        q = q.where(Example.id > after)
    ids = list(session.scalars(q))
    if not ids:
        return None
    ev = session.get(Dataset, plan.eval_dataset_id)
    docs = list(load_docs(session, ids, train_id).values())
    hits = containment_hits(session, train_id, [(ev, plan.policy)], docs)
    store_eval_hits(session, hits)
    if hits:
        audit.record(session, actor="system:dedup", action="dedup.eval_sweep", entity_type="dataset",
                     entity_id=train_id, payload={
                         "eval_dataset_id": str(plan.eval_dataset_id), "ngram_version": plan.version,
                         "contaminates_eval": [[str(h["example_id"]), str(h["eval_example_id"]),
                                                h["similarity"], h["method"]] for h in hits]})
    return ids[-1], len(docs), len(hits)


def mark_swept(session: Session, plan: SweepPlan) -> None:
    session.execute(update(DedupState).where(DedupState.dataset_id == plan.eval_dataset_id,
                                             DedupState.swept_version < plan.version)
                    .values(swept_version=plan.version))
