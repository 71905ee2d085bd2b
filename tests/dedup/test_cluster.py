from datetime import UTC, datetime, timedelta

import numpy as np

from app.dedup.cluster import (
    Member,
    UnionFind,
    choose_canonical,
    clusters,
    verify_estimate,
    verify_exact,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_union_find_groups_transitively():
    groups = clusters([("a", "b"), ("c", "d"), ("b", "c"), ("x", "y")], items=["z"])
    assert sorted(sorted(g) for g in groups) == [["a", "b", "c", "d"], ["x", "y"], ["z"]]
    uf = UnionFind()
    for i in range(1000):  # a long chain stays cheap thanks to path compression
        uf.union(i, i + 1)
    assert uf.find(0) == uf.find(1000)


def test_verify_exact_drops_false_candidates_and_missing_sides():
    sets = {"q": {b"1", b"2", b"3", b"4"}, "near": {b"1", b"2", b"3", b"4", b"5"}, "far": {b"1", b"9"}}
    pairs = verify_exact({"q": ["near", "far", "gone"]}, sets, 0.8)
    assert [(p.a, p.b, p.similarity) for p in pairs] == [("q", "near", 0.8)]


def test_verify_estimate_uses_signatures():
    sig = {"q": np.array([1, 2, 3, 4]), "c": np.array([1, 2, 3, 9]), "d": np.array([0, 0, 0, 0])}
    pairs = verify_estimate({"q": ["c", "d", "missing"]}, sig.get, 0.7)
    assert [(p.b, p.similarity) for p in pairs] == [("c", 0.75)]


def test_canonical_is_earliest_approved_else_earliest_ingested():
    a = Member("a", ingested_at=T0)
    b = Member("b", ingested_at=T0 + timedelta(hours=1), approved_at=T0 + timedelta(days=2))
    c = Member("c", ingested_at=T0 + timedelta(hours=2), approved_at=T0 + timedelta(days=1))
    assert choose_canonical([a, b, c]).key == "c"
    assert choose_canonical([a, b]).key == "b"
    d = Member("d", ingested_at=T0 + timedelta(minutes=5))
    assert choose_canonical([d, a]).key == "a"
    # exact ties are broken by key so every worker agrees
    e, f = Member("f", ingested_at=T0), Member("e", ingested_at=T0)
    assert choose_canonical([e, f]).key == choose_canonical([f, e]).key == "e"


def test_cannot_link_keeps_a_pair_apart_and_the_stronger_edge_wins():
    from app.dedup.recluster import constrained_clusters

    edges = {("d", "c"): 0.9, ("x", "d"): 0.85}
    assert sorted(map(sorted, constrained_clusters("cdx", edges, {}))) == [["c", "d", "x"]]
    cannot = {"x": {"c"}, "c": {"x"}}
    assert sorted(map(sorted, constrained_clusters("cdx", edges, cannot))) == [["c", "d"], ["x"]]
    edges = {("d", "c"): 0.82, ("x", "d"): 0.95}
    assert sorted(map(sorted, constrained_clusters("cdx", edges, cannot))) == [["c"], ["d", "x"]]
