"""The dedup pipeline stage, the read side (clusters, an example's dedup view, the summary) and overrules.

One batch (``dedup_handler``), in the runner's transaction:
1. signatures of the current revisions' trainable text (stored, so the index can be rebuilt);
2. query-then-insert in the dataset's LSH index (Redis when configured, else in process): candidates;
3. exact Jaccard verification against the candidates' current text: only verified pairs are stored;
4. the evaluation-set guard (training examples near an eval example get ``contaminates_eval``);
5. under the dataset's dedup_state row lock: replace the batch's pairs, recompute the affected clusters
   (connected components minus reviewer cannot-links), pick canonicals, set statuses and links.

Steps 1-4 run in parallel across workers; only step 5 is serialised per dataset, and it reads the pairs
other workers committed, so two workers that linked into the same cluster agree on its canonical.
A Redis fault raises (after the client's own retries), the whole batch rolls back and is redelivered:
nothing is marked without a verified check.

The index is index.py's, clustering recluster.py's, the guard eval_guard.py's, rebuilds rebuild.py's;
jobs.py holds the bodies that open their own sessions.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, aliased

from app.audit import service as audit
from app.core.auth import CURATOR, Actor, check_role
from app.core.config import get_settings
from app.core.errors import InvalidState
from app.core.pagination import decode_cursor, page
from app.core.sql import any_of, in_chunks, insert_ignore, is_pg
from app.dedup.eval_guard import guard_hits, index_eval_ngrams, store_eval_hits
from app.dedup.index import hasher, open_index
from app.dedup.minhash import Signatures, flag_names
from app.dedup.queries import contaminating
from app.dedup.rebuild import rebuild_view
from app.dedup.recluster import recluster
from app.dedup.schemas import DedupPolicy, OverruleIn
from app.dedup.store import (
    LINK_AUTHOR,
    Doc,
    ensure_state,
    load_docs,
    lock_state,
    pairs_of,
    policy_of,
    replace_pairs,
    store_signatures,
    verified_pairs,
)
from app.examples import service as examples
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.dedup import DedupDecision, DedupEvalHit, DedupRebuild, DedupSignature, DedupState
from app.models.example import DuplicateLink, Example

log = logging.getLogger(__name__)


# --- the stage -------------------------------------------------------------------------------------------


def dedup_handler(*, session: Session, example_ids: list[uuid.UUID]) -> None:
    docs = load_docs(session, example_ids)
    by_ds: dict[uuid.UUID, list[Doc]] = {}
    for eid in example_ids:  # keep the runner's order (by id) for determinism
        d = docs.get(eid)
        if d is not None:
            by_ds.setdefault(d.dataset_id, []).append(d)
    for ds_id, batch in by_ds.items():
        ds = session.get(Dataset, ds_id)
        policy = policy_of(ds)
        if policy.enabled:
            dedup_batch(session, ds, policy, batch)


def _discover(session: Session, ds: Dataset, policy: DedupPolicy, batch: list[Doc], sigs: Signatures,
              generation: int) -> dict[uuid.UUID, set[uuid.UUID]]:
    """Query-then-insert the batch in one index generation: example -> its candidates (unverified)."""
    index = open_index(session, ds.id, policy, generation)
    found = index.query_insert([d.id.bytes for d in batch], sigs)
    cands: dict[uuid.UUID, set[uuid.UUID]] = {}
    for d, cs in zip(batch, found, strict=True):
        cands[d.id] = {uuid.UUID(bytes=c) for c in cs} - {d.id}
    return cands


def dedup_batch(session: Session, ds: Dataset, policy: DedupPolicy, batch: list[Doc]) -> dict:
    spec = policy.spec
    ids = [d.id for d in batch]
    id_set = set(ids)
    state = ensure_state(session, ds.id)
    generation = state.generation
    sigs = hasher(spec).signatures([d.text for d in batch])
    cands = _discover(session, ds, policy, batch, sigs, generation)
    store_signatures(session, ds.id, batch, sigs, spec)

    # Pairs found earlier are re-verified against the current text: an edit may have moved an example
    # away from (or towards) its old partners, and with first-writer-wins buckets the partner that found
    # this example will not find it again.
    old = pairs_of(session, ds.id, ids)
    for a, b in old:
        if a in id_set:
            cands.setdefault(a, set()).add(b)
        if b in id_set:
            cands.setdefault(b, set()).add(a)

    if ds.is_eval_set:
        index_eval_ngrams(session, ds, policy, batch)
    hits = guard_hits(session, ds, policy, batch) if policy.eval_guard else []

    state = lock_state(session, ds.id)
    if state.generation != generation:
        # A rebuild switched the live index while this batch was being compared: claim in the new one too.
        more = _discover(session, ds, policy, batch, sigs, state.generation)
        for k, v in more.items():
            cands.setdefault(k, set()).update(v)

    docs = {d.id: d for d in batch}
    pairs, sets = verified_pairs(session, ds.id, policy, {k: v for k, v in cands.items() if k in id_set}, docs)
    replace_pairs(session, ds.id, ids, pairs)
    changes = recluster(session, ds.id, policy, id_set | {x for pr in pairs for x in pr} | {x for pr in old for x in pr},
                        in_batch=id_set, sets=sets, docs=docs)
    store_eval_hits(session, hits)
    flagged = [int(f) for f in sigs.flags]
    audit.record(
        session,
        actor="system:dedup",
        action="dedup.batch",
        entity_type="example_batch",
        workspace_id=ds.workspace_id,
        payload={
            "dataset_id": str(ds.id),
            "examples": len(batch),
            "spec": spec.tag,
            "threshold": policy.threshold,
            "verified_pairs": [[str(a), str(b), round(s, 4), m] for (a, b), (s, m) in sorted(pairs.items())],
            "duplicates": {str(k): str(v) for k, v in changes["duplicate"].items()},
            "demoted": {str(k): str(v) for k, v in changes["demoted"].items()},
            "restored": [str(x) for x in changes["restored"]],
            "contaminates_eval": [[str(h["example_id"]), str(h["eval_example_id"]), round(h["similarity"], 4),
                                   h["method"]] for h in hits],
            "flags": {str(d.id): flag_names(f) for d, f in zip(batch, flagged, strict=True) if f},
        },
    )
    return {"pairs": pairs, **changes, "eval_hits": hits}


# --- read side -------------------------------------------------------------------------------------------


_MAX_CHAIN = 8  # links followed from a root; a chain is one or two long in practice


def _cluster_members(session: Session, dataset_id: uuid.UUID, roots: list[uuid.UUID]) -> dict[uuid.UUID, list[dict]]:
    """Each root's members, following links through members that are canonical of links of their own.

    Ingest's exact links keep pointing at the copy they found, as the record of what ingest saw; when
    that copy later joins another cluster (a better canonical arrived, or it was edited), the exact
    copies of it belong to that cluster too. They are listed there with `via`, the member they copy."""
    pg = is_pg(session)
    out: dict[uuid.UUID, list[dict]] = {r: [] for r in roots}
    frontier = {r: r for r in roots}  # node -> its root
    seen = set(roots)
    for _ in range(_MAX_CHAIN):
        if not frontier:
            break
        nxt: dict[uuid.UUID, uuid.UUID] = {}
        for chunk in in_chunks(list(frontier), pg=pg):
            rows = session.execute(
                select(DuplicateLink.canonical_example_id, DuplicateLink.example_id, DuplicateLink.method,
                       DuplicateLink.similarity)
                .where(DuplicateLink.dataset_id == dataset_id, any_of(DuplicateLink.canonical_example_id, chunk, pg=pg))
                .order_by(DuplicateLink.canonical_example_id, DuplicateLink.example_id)
            )
            for c, e, m, sim in rows:
                if e in seen:
                    continue
                seen.add(e)
                root = frontier[c]
                item = {"example_id": str(e), "method": m, "similarity": sim}
                if c != root:
                    item["via"] = str(c)
                out[root].append(item)
                nxt[e] = root
        frontier = nxt
    return out


def clusters_page(session: Session, *, dataset_id: uuid.UUID, cursor: str | None, limit: int) -> dict:
    # Clusters are named by their root: a canonical that is nobody's duplicate itself.
    inner = aliased(DuplicateLink)
    q = (select(DuplicateLink.canonical_example_id).where(DuplicateLink.dataset_id == dataset_id)
         .where(~select(inner.id).where(inner.example_id == DuplicateLink.canonical_example_id).exists())
         .distinct())
    if cursor:
        q = q.where(DuplicateLink.canonical_example_id > decode_cursor(cursor))
    rows = list(session.scalars(q.order_by(DuplicateLink.canonical_example_id).limit(limit + 1)))
    canon, nxt = page(rows, limit, key=lambda c: c)
    members = _cluster_members(session, dataset_id, canon)
    return {
        "clusters": [{"canonical": str(c), "size": len(members[c]) + 1, "members": members[c]} for c in canon],
        "next_cursor": nxt,
    }


def _link_of(session: Session, example_id: uuid.UUID) -> Any:
    return session.execute(
        select(DuplicateLink.canonical_example_id, DuplicateLink.method, DuplicateLink.similarity)
        .where(DuplicateLink.example_id == example_id).order_by(DuplicateLink.created_at.desc())
    ).first()


def example_dedup_view(session: Session, ex: Example) -> dict:
    link = _link_of(session, ex.id)
    # The cluster's root: up the links (an exact copy found at ingest points at the copy it found,
    # which may have joined another cluster since), then its members as the listing counts them.
    canonical, seen = ex.id, {ex.id}
    up = link
    while up is not None and up.canonical_example_id not in seen and len(seen) <= _MAX_CHAIN:
        canonical = up.canonical_example_id
        seen.add(canonical)
        up = _link_of(session, canonical)
    size = 1 + len(_cluster_members(session, ex.dataset_id, [canonical])[canonical])
    sig = session.get(DedupSignature, ex.id)
    hits = session.execute(
        select(DedupEvalHit.eval_dataset_id, DedupEvalHit.eval_example_id, DedupEvalHit.similarity,
               DedupEvalHit.method)
        .where(DedupEvalHit.example_id == ex.id)
    ).all()
    allowed = set(session.scalars(
        select(DedupDecision.other_example_id).where(
            DedupDecision.example_id == ex.id, DedupDecision.decision == "allow_eval_overlap"
        )
    ))
    decisions = session.execute(
        select(DedupDecision.decision, DedupDecision.other_example_id, DedupDecision.decided_by,
               DedupDecision.reason, DedupDecision.created_at)
        .where(or_(DedupDecision.example_id == ex.id, DedupDecision.other_example_id == ex.id))
    ).all()
    return {
        "cluster": {"canonical": str(canonical), "size": size, "is_canonical": link is None},
        "link": {"method": link.method, "similarity": link.similarity} if link else None,
        "signature": {"spec": sig.spec_tag, "flags": flag_names(sig.flags), "revision_id": str(sig.revision_id)}
        if sig else None,
        "eval_matches": [{"eval_dataset_id": str(h.eval_dataset_id), "eval_example_id": str(h.eval_example_id),
                          "similarity": round(h.similarity, 4), "method": h.method,
                          "allowed": h.eval_example_id in allowed}
                         for h in hits],
        "decisions": [{"decision": d.decision, "other_example_id": str(d.other_example_id), "by": d.decided_by,
                       "reason": d.reason, "at": d.created_at.isoformat()} for d in decisions],
    }


def view_hook(session: Session, ex: Example, out: dict, actor: Actor) -> None:
    view = example_dedup_view(session, ex)
    out["dedup"] = view
    out["contaminates_eval"] = any(not m["allowed"] for m in view["eval_matches"])


def dataset_summary(session: Session, ds: Dataset) -> dict:
    policy = policy_of(ds)
    state = session.get(DedupState, ds.id)
    last = session.scalar(
        select(DedupRebuild).where(DedupRebuild.dataset_id == ds.id).order_by(DedupRebuild.created_at.desc()).limit(1)
    )
    by_method = dict(session.execute(
        select(DuplicateLink.method, func.count()).where(DuplicateLink.dataset_id == ds.id).group_by(DuplicateLink.method)
    ).all())
    n_clusters = session.scalar(
        select(func.count(func.distinct(DuplicateLink.canonical_example_id))).where(DuplicateLink.dataset_id == ds.id)
    )
    n_contam = session.scalar(select(func.count()).select_from(contaminating(ds.id).subquery()))
    b, r = policy.index_config.params
    return {
        "dataset_id": str(ds.id),
        "policy": policy.model_dump(),
        "index": {"backend": "redis" if get_settings().redis_url else "memory", "bands": b, "rows": r,
                  "spec": policy.spec.tag, "generation": state.generation if state else None},
        "duplicates": by_method,
        "clusters": n_clusters,
        "contaminates_eval": n_contam,
        "rebuild": rebuild_view(last) if last else None,
    }


# --- overrule --------------------------------------------------------------------------------------------


def overrule(session: Session, *, example: Example, data: OverruleIn, actor: Actor) -> dict:
    ds = session.get(Dataset, example.dataset_id)
    policy = policy_of(ds)
    now = utcnow()
    if data.decision == "not_duplicate":
        if data.other_example_id is not None:
            other = examples.get(session, data.other_example_id)
            if other.dataset_id != example.dataset_id:
                raise InvalidState("both examples must belong to the same dataset")
            other_id = other.id
        else:
            link = session.execute(
                select(DuplicateLink.canonical_example_id).where(
                    DuplicateLink.example_id == example.id, DuplicateLink.created_by == LINK_AUTHOR)
            ).first()
            if link is None:
                if session.scalar(select(func.count()).select_from(DuplicateLink)
                                  .where(DuplicateLink.example_id == example.id)):
                    raise InvalidState("an exact copy found at ingest cannot be overruled: its content is identical")
                raise InvalidState("this example is no one's duplicate; name other_example_id",
                                   details={"example_id": str(example.id)})
            other_id = link.canonical_example_id
        if other_id == example.id:
            raise InvalidState("an example cannot be separated from itself")
        insert_ignore(session, DedupDecision.__table__, [{
            "id": uuid.uuid4(), "dataset_id": ds.id, "example_id": example.id, "other_example_id": other_id,
            "decision": "not_duplicate", "reason": data.reason, "decided_by": actor.ref, "created_at": now,
        }])
        lock_state(session, ds.id)
        changes = recluster(session, ds.id, policy, {example.id, other_id}, in_batch=set())
        payload = {"other_example_id": str(other_id), "reason": data.reason,
                   "restored": [str(x) for x in changes["restored"]],
                   "demoted": {str(k): str(v) for k, v in changes["demoted"].items()}}
    else:
        check_role(actor, CURATOR, "keep an example that overlaps an evaluation set")
        q = select(DedupEvalHit.eval_example_id).where(DedupEvalHit.example_id == example.id)
        if data.other_example_id is not None:
            q = q.where(DedupEvalHit.eval_example_id == data.other_example_id)
        targets = list(session.scalars(q))
        if not targets:
            raise InvalidState("this example overlaps no evaluation example", details={"example_id": str(example.id)})
        insert_ignore(session, DedupDecision.__table__, [{
            "id": uuid.uuid4(), "dataset_id": ds.id, "example_id": example.id, "other_example_id": t,
            "decision": "allow_eval_overlap", "reason": data.reason, "decided_by": actor.ref, "created_at": now,
        } for t in targets])
        payload = {"eval_example_ids": [str(t) for t in targets], "reason": data.reason}
    audit.record(session, actor=actor.ref, action=f"dedup.overruled.{data.decision}", entity_type="example",
                 entity_id=example.id, payload=payload)
    session.flush()
    session.expire(example)
    return examples.view(session, example, actor)
