"""Candidate verification, union-find clustering and the canonical-member rule.

LSH only proposes candidates; nothing is linked until the pair is verified, so LSH false positives never
reach a reviewer. ``exact`` verification (the default) compares the shingle sets themselves, so every
written link has a true Jaccard at or above the threshold; ``estimate`` compares signatures only, for when
the candidate's text is not at hand, and can be off by about 1/sqrt(num_perm) either way.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from app.dedup.minhash import estimate_jaccard

METHOD_EXACT = "exact"  # same canonical content hash
METHOD_MINHASH = "minhash"  # MinHash LSH candidate, verified


@dataclass(frozen=True)
class VerifiedPair:
    a: Hashable
    b: Hashable
    similarity: float


def verify_exact(
    candidates: Mapping[Hashable, Iterable[Hashable]],
    shingle_sets: Mapping[Hashable, set[bytes] | frozenset[bytes]],
    threshold: float,
) -> list[VerifiedPair]:
    """Keep the (query, candidate) pairs whose exact Jaccard on shingle sets reaches ``threshold``.
    A pair whose either side has no shingle set (erased meanwhile, say) is dropped, never guessed."""
    out: list[VerifiedPair] = []
    for q, cands in candidates.items():
        sq = shingle_sets.get(q)
        if not sq:
            continue
        for c in cands:
            sc = shingle_sets.get(c)
            if not sc:
                continue
            inter = len(sq & sc)
            sim = inter / (len(sq) + len(sc) - inter)
            if sim >= threshold:
                out.append(VerifiedPair(q, c, sim))
    return out


def verify_estimate(
    candidates: Mapping[Hashable, Iterable[Hashable]],
    signature: Callable[[Hashable], np.ndarray | None],
    threshold: float,
) -> list[VerifiedPair]:
    out: list[VerifiedPair] = []
    for q, cands in candidates.items():
        sq = signature(q)
        if sq is None:
            continue
        for c in cands:
            sc = signature(c)
            if sc is None:
                continue
            sim = estimate_jaccard(sq, sc)
            if sim >= threshold:
                out.append(VerifiedPair(q, c, sim))
    return out


class UnionFind:
    def __init__(self, items: Iterable[Hashable] = ()) -> None:
        self._parent: dict[Hashable, Hashable] = {x: x for x in items}

    def add(self, x: Hashable) -> None:
        self._parent.setdefault(x, x)

    def find(self, x: Hashable) -> Hashable:
        parent = self._parent
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a: Hashable, b: Hashable) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[rb] = ra

    def groups(self) -> list[list[Hashable]]:
        out: dict[Hashable, list[Hashable]] = {}
        for x in self._parent:
            out.setdefault(self.find(x), []).append(x)
        return list(out.values())


def clusters(pairs: Iterable[tuple[Hashable, Hashable]], items: Iterable[Hashable] = ()) -> list[list[Hashable]]:
    """Connected components of the verified links; ``items`` adds singletons."""
    uf = UnionFind(items)
    for a, b in pairs:
        uf.union(a, b)
    return uf.groups()


@dataclass(frozen=True)
class Member:
    key: Hashable
    ingested_at: datetime
    approved_at: datetime | None = None


def canonical_order(m: Member) -> tuple:
    """The canonical member of a cluster is the first in this order: approved members before the rest
    (a reviewer already vouched for it, and it may already sit in a snapshot), the earliest approval first;
    then the earliest ingested; the key breaks exact ties so every worker picks the same one."""
    if m.approved_at is not None:
        return (0, m.approved_at, m.ingested_at, str(m.key))
    return (1, m.ingested_at, m.ingested_at, str(m.key))


def choose_canonical(members: Sequence[Member]) -> Member:
    if not members:
        raise ValueError("an empty cluster has no canonical member")
    return min(members, key=canonical_order)
