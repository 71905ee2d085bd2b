"""Inter-reviewer agreement on nominal decisions (approve / reject / request_changes).

Krippendorff's alpha (the `krippendorff` package) covers any number of reviewers per item and
missing ratings; Cohen's kappa is reported per pair of reviewers who shared at least two items.
Both are undefined when every rating is the same value (no variation to agree on): reported as None.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from itertools import combinations
from typing import Any

import krippendorff
import numpy as np

CODES = {"approve": 0, "reject": 1, "request_changes": 2}


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    n = len(a)
    if n == 0:
        return None
    po = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    pe = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    if pe >= 1.0:
        return None
    return round((po - pe) / (1 - pe), 4)


def krippendorff_alpha(units: dict[str, dict[str, str]], raters: list[str],
                       codes: dict[str, int] = CODES) -> float | None:
    values = {v for u in units.values() for v in u.values()}
    if len(units) == 0 or len(values) < 2:
        return None
    cols = list(units)
    data = np.full((len(raters), len(cols)), np.nan)
    idx = {r: i for i, r in enumerate(raters)}
    for j, u in enumerate(cols):
        for r, v in units[u].items():
            data[idx[r], j] = codes.get(v, len(codes))
    alpha = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    return None if alpha is None or math.isnan(alpha) else round(float(alpha), 4)


def summarise(ratings: list[tuple[str, str, str]], codes: dict[str, int] = CODES) -> dict[str, Any]:
    """ratings: (unit, rater, value). Units are revisions: an edit makes a new item to agree on."""
    by_unit: dict[str, dict[str, str]] = defaultdict(dict)
    for unit, rater, value in ratings:
        by_unit[unit][rater] = value
    multi = {u: rs for u, rs in by_unit.items() if len(rs) >= 2}
    raters = sorted({r for rs in multi.values() for r in rs})
    pairs = []
    for a, b in combinations(raters, 2):
        shared = [u for u, rs in multi.items() if a in rs and b in rs]
        if len(shared) >= 2:
            xa, xb = [multi[u][a] for u in shared], [multi[u][b] for u in shared]
            pairs.append({"a": a, "b": b, "items": len(shared), "kappa": cohen_kappa(xa, xb),
                          "percent_agreement": round(sum(x == y for x, y in zip(xa, xb)) / len(shared), 4)})
    agree_pairs = total_pairs = 0
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rs in multi.values():
        for (ra, va), (rb, vb) in combinations(sorted(rs.items()), 2):
            total_pairs += 1
            same = int(va == vb)
            agree_pairs += same
            for r in (ra, rb):
                per[r][0] += same
                per[r][1] += 1
    return {
        "items_with_several_reviews": len(multi),
        "reviewers": len(raters),
        "percent_agreement": round(agree_pairs / total_pairs, 4) if total_pairs else None,
        "krippendorff_alpha": krippendorff_alpha(multi, raters, codes),
        "cohen_kappa_pairs": pairs,
        "per_reviewer": {r: round(a / t, 4) for r, (a, t) in per.items() if t},
    }
