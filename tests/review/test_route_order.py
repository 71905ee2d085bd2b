"""app/main.py includes the review router first, so the hot review routes are matched before the rest;
that is only a speed-up while no route of one router also matches another router's path with the same
method (then the order would decide which one serves it)."""

from __future__ import annotations

import re

from app.main import app

_SAMPLE = "00000000-0000-0000-0000-000000000001"


def _routes(routes, group, out):
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            _routes(inner.routes, group if group is not None else id(r), out)
        elif hasattr(r, "path_regex"):
            out.append((group if group is not None else id(r), r))
    return out


def test_no_path_of_one_router_is_served_by_another_with_the_same_method():
    routes = _routes(app.router.routes, None, [])
    clashes = []
    for g1, a in routes:
        for g2, b in routes:
            if g1 == g2:
                continue
            methods = (getattr(a, "methods", None) or set()) & (getattr(b, "methods", None) or set())
            if methods and a.path_regex.match(re.sub(r"\{[^}]+\}", _SAMPLE, b.path)):
                clashes.append((a.path, b.path, sorted(methods)))
    assert clashes == []


def test_the_review_router_is_matched_first():
    first = next(r for r in app.router.routes if getattr(r, "original_router", None) is not None)
    paths = {getattr(r, "path", None) for r in first.original_router.routes}
    assert {"/v1/review/queue", "/v1/examples/{example_id}/reviews"} <= paths
