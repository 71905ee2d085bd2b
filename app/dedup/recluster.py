"""Clusters from the verified pairs minus reviewer cannot-links; canonicals, statuses and minhash links
brought in line with them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.core.sql import any_of, in_chunks, insert_ignore, is_pg
from app.dedup.cluster import METHOD_EXACT, METHOD_MINHASH, Member, canonical_order
from app.dedup.minhash import shingle_sets
from app.dedup.schemas import DedupPolicy
from app.dedup.store import LINK_AUTHOR, Doc, load_docs, pair_rows, same_content
from app.models.base import utcnow
from app.models.dedup import DedupDecision
from app.models.example import DuplicateLink, Example

# A pipeline status (ingested, scrubbed) is not worth restoring: the example has finished the pipeline.
_RESTORABLE = ("pending_review", "changes_requested", "approved")


def constrained_clusters(nodes: Iterable[uuid.UUID], edges: dict[tuple[uuid.UUID, uuid.UUID], float],
                         cannot: dict[uuid.UUID, set[uuid.UUID]]) -> list[list[uuid.UUID]]:
    """Union-find over the edges, strongest first, skipping any union that would put a reviewer's
    "not a duplicate" pair into one cluster. Without decisions this is plain connected components."""
    parent = {n: n for n in nodes}
    members = {n: {n} for n in nodes}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for (a, b), _ in sorted(edges.items(), key=lambda kv: (-kv[1], str(kv[0][0]), str(kv[0][1]))):
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        small, big = (members[ra], members[rb]) if len(members[ra]) <= len(members[rb]) else (members[rb], members[ra])
        if any(cannot.get(x, set()) & big for x in small):
            continue
        parent[rb] = ra
        members[ra] |= members.pop(rb)
    return [sorted(m, key=str) for m in members.values()]


def _component(session: Session, dataset_id: uuid.UUID, seeds: set[uuid.UUID]):
    nodes, frontier = set(seeds), set(seeds)
    edges: dict[tuple[uuid.UUID, uuid.UUID], float] = {}
    while frontier:
        new: set[uuid.UUID] = set()
        for a, b, s in pair_rows(session, dataset_id, frontier):
            edges[(a, b)] = s
            for x in (a, b):
                if x not in nodes:
                    nodes.add(x)
                    new.add(x)
        frontier = new
    return nodes, edges


@dataclass
class _Plan:
    """What the examples around the seeds become: who is whose duplicate now, and which statuses change."""

    duplicate: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)  # of the batch, now a duplicate
    demoted: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)  # outside it, a better canonical joined
    restored: list[uuid.UUID] = field(default_factory=list)  # no longer anyone's duplicate
    statuses: dict[uuid.UUID, str] = field(default_factory=dict)  # new status (the stage is cleared)
    links: dict[uuid.UUID, tuple[uuid.UUID, str]] = field(default_factory=dict)  # example -> (canonical, prev)
    touched: list[uuid.UUID] = field(default_factory=list)  # whose minhash link is rewritten or dropped


def recluster(session: Session, dataset_id: uuid.UUID, policy: DedupPolicy, seeds: set[uuid.UUID], *,
              in_batch: set[uuid.UUID], sets: dict[uuid.UUID, set] | None = None,
              docs: dict[uuid.UUID, Doc] | None = None) -> dict:
    """Recompute the clusters around ``seeds`` and bring statuses and minhash links in line with them.

    Examples of the batch that are not canonical become ``duplicate`` (stage cleared, so the runner does
    not advance them). Examples outside the batch that have finished the pipeline follow their cluster:
    demoted to ``duplicate`` if a better canonical joined, restored to their previous status if they are
    no longer anyone's duplicate. Examples still in the pipeline elsewhere are left to their own run;
    erased examples take no part; rejected ones keep their status and are canonical only as a last resort.
    """
    nodes, edges = _component(session, dataset_id, seeds)
    info = _members(session, dataset_id, nodes)
    live = {n for n in nodes if n in info and info[n].status != "erased"}
    edges = {k: v for k, v in edges.items() if k[0] in live and k[1] in live}
    old_links = _old_links(session, live)
    desired = _canonicals(session, info, live, edges, _cannot_links(session, live))
    plan = _plan(info, live, in_batch, desired, old_links)
    now = utcnow()
    _write_links(session, dataset_id, policy, plan, dict(sets or {}), dict(docs or {}), now)
    _write_statuses(session, plan.statuses, now)
    return {"duplicate": plan.duplicate, "demoted": plan.demoted, "restored": plan.restored}


def _members(session: Session, dataset_id: uuid.UUID, nodes: set[uuid.UUID]) -> dict[uuid.UUID, Any]:
    pg = is_pg(session)
    info: dict[uuid.UUID, Any] = {}
    for chunk in in_chunks(nodes, pg=pg):
        for r in session.execute(
            select(Example.id, Example.dataset_id, Example.status, Example.stage, Example.created_at,
                   Example.updated_at).where(any_of(Example.id, chunk, pg=pg))
        ):
            if r.dataset_id == dataset_id:  # filtered here for the same reason as in load_docs
                info[r.id] = r
    return info


def _cannot_links(session: Session, live: set[uuid.UUID]) -> dict[uuid.UUID, set[uuid.UUID]]:
    """Reviewers' "not a duplicate" decisions touching ``live``, both ways."""
    pg = is_pg(session)
    cannot: dict[uuid.UUID, set[uuid.UUID]] = {}
    for chunk in in_chunks(live, pg=pg):
        for col in (DedupDecision.example_id, DedupDecision.other_example_id):
            for a, b in session.execute(
                select(DedupDecision.example_id, DedupDecision.other_example_id).where(
                    DedupDecision.decision == "not_duplicate", any_of(col, chunk, pg=pg))
            ):
                cannot.setdefault(a, set()).add(b)
                cannot.setdefault(b, set()).add(a)
    return cannot


def _old_links(session: Session, live: set[uuid.UUID]) -> dict[uuid.UUID, Any]:
    pg = is_pg(session)
    old_links: dict[uuid.UUID, Any] = {}
    for chunk in in_chunks(live, pg=pg):
        for ln in session.execute(
            select(DuplicateLink.example_id, DuplicateLink.canonical_example_id, DuplicateLink.note).where(
                any_of(DuplicateLink.example_id, chunk, pg=pg), DuplicateLink.created_by == LINK_AUTHOR
            )
        ):
            old_links[ln.example_id] = ln
    return old_links


def _approved_at(session: Session, info: dict[uuid.UUID, Any], live: set[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """Approval time: the last approving review (the one that made it approved); the row's last update
    for an example approved without a review row (imported as approved, set by an admin)."""
    pg = is_pg(session)
    approved_at: dict[uuid.UUID, Any] = {}
    approved = [n for n in live if info[n].status == "approved"]
    if approved:
        from app.models.review import Review

        for chunk in in_chunks(approved, pg=pg):
            approved_at.update(session.execute(
                select(Review.example_id, func.max(Review.created_at))
                .where(any_of(Review.example_id, chunk, pg=pg), Review.decision == "approve")
                .group_by(Review.example_id)
            ).all())
    return {n: approved_at.get(n, info[n].updated_at) for n in approved}


def _canonicals(session: Session, info: dict[uuid.UUID, Any], live: set[uuid.UUID],
                edges: dict[tuple[uuid.UUID, uuid.UUID], float],
                cannot: dict[uuid.UUID, set[uuid.UUID]]) -> dict[uuid.UUID, uuid.UUID | None]:
    """Each live example's canonical (None for a canonical and for a cluster of one)."""
    approved_at = _approved_at(session, info, live)

    def order(n):
        r = info[n]
        # Rejected members are canonical only when the whole cluster is rejected.
        return (r.status == "rejected",
                *canonical_order(Member(n, ingested_at=r.created_at, approved_at=approved_at.get(n))))

    desired: dict[uuid.UUID, uuid.UUID | None] = {}
    for group in constrained_clusters(live, edges, cannot):
        canon = min(group, key=order) if len(group) > 1 else None
        for n in group:
            desired[n] = canon if n != canon else None
    return desired


def _plan(info: dict[uuid.UUID, Any], live: set[uuid.UUID], in_batch: set[uuid.UUID],
          desired: dict[uuid.UUID, uuid.UUID | None], old_links: dict[uuid.UUID, Any]) -> _Plan:
    plan = _Plan()
    # Only these are changed here: an example still in the pipeline elsewhere is settled by its own run,
    # a rejected one keeps the reviewer's verdict.
    settled = {n for n in live if (info[n].stage is None or n in in_batch) and info[n].status != "rejected"}
    for n in settled:
        r, canon = info[n], desired.get(n)
        old = old_links.get(n)
        if canon is not None:
            if n in in_batch:
                plan.duplicate[n] = canon
            elif r.status != "duplicate":
                plan.demoted[n] = canon
            if r.status != "duplicate" or r.stage is not None:
                plan.statuses[n] = "duplicate"
            plan.links[n] = (canon, old.note if old is not None else r.status)
        elif old is not None and r.status == "duplicate":
            # No longer anyone's duplicate (a reviewer separated it, or a rebuild at another threshold).
            plan.restored.append(n)
            plan.statuses[n] = old.note if old.note in _RESTORABLE else "pending_review"
    plan.touched = [n for n in settled if n in old_links or n in plan.links]
    return plan


def _write_links(session: Session, dataset_id: uuid.UUID, policy: DedupPolicy, plan: _Plan,
                 sets: dict[uuid.UUID, set], docs: dict[uuid.UUID, Doc], now) -> None:
    """Replace the touched examples' minhash links by the plan's, each with its similarity to its
    canonical (texts not at hand are loaded)."""
    pg = is_pg(session)
    for chunk in in_chunks(plan.touched, pg=pg):
        session.execute(
            delete(DuplicateLink).where(any_of(DuplicateLink.example_id, chunk, pg=pg), DuplicateLink.created_by == LINK_AUTHOR)
        )
    if not plan.links:
        return
    want = set(plan.links) | {c for c, _ in plan.links.values()}
    missing = [n for n in want if n not in sets]
    if missing:
        docs.update(load_docs(session, [n for n in missing if n not in docs], dataset_id))
        have = [n for n in missing if n in docs]
        sets.update(zip(have, shingle_sets([docs[n].text for n in have], policy.spec), strict=True))
    rows = []
    for m, (c, prev) in plan.links.items():
        a, b = sets.get(m, set()), sets.get(c, set())
        sim = len(a & b) / len(a | b) if (a or b) else 0.0
        same = m in docs and c in docs and same_content(docs[m], docs[c])
        rows.append({
            "id": uuid.uuid4(), "dataset_id": dataset_id, "example_id": m, "canonical_example_id": c,
            "method": METHOD_EXACT if same else METHOD_MINHASH,
            "similarity": round(sim, 4), "created_by": LINK_AUTHOR, "created_at": now,
            # The status before it became a duplicate, so a later overrule can give it back.
            "note": prev,
        })
    insert_ignore(session, DuplicateLink.__table__, rows)


def _write_statuses(session: Session, statuses: dict[uuid.UUID, str], now) -> None:
    pg = is_pg(session)
    groups: dict[str, list[uuid.UUID]] = {}
    for n, st in statuses.items():
        groups.setdefault(st, []).append(n)
    for st, ids in groups.items():  # one UPDATE per target status, not one per example
        for chunk in in_chunks(ids, pg=pg):
            session.execute(update(Example).where(any_of(Example.id, chunk, pg=pg))
                            .values(status=st, stage=None, updated_at=now))
