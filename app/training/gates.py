"""Promotion gates (issue 17): a model's policy names the figures an alias requires, and a version is
promoted to a guarded alias only on a succeeded evaluation of it that carries every gated metric.

The policy and evaluations are written by app/evaluations (a layer above); the check lives here, beside
the alias move it guards, reading their rows directly, so the move and its check share one transaction
and the model-row lock of `registry.move_alias`.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models.training import Evaluation, ModelPolicy


def metric_value(results: dict[str, Any], metric: str) -> float | None:
    """The number at a dotted path ("heldout.forgetting.delta"); None when absent or not a number. A key
    holding a dot (an eval set's name) is matched whole before the path is split further."""
    node: Any = results
    rest = metric
    while rest:
        if not isinstance(node, dict):
            return None
        # The longest key that the path starts with: an eval set named "qa.v1" is one step, not two.
        keys = [k for k in node if rest == k or rest.startswith(f"{k}.")]
        if not keys:
            return None
        key = max(keys, key=len)
        node, rest = node[key], rest[len(key) + 1:]
    if isinstance(node, bool) or not isinstance(node, (int, float)) or math.isnan(node):
        return None
    return float(node)


def latest_succeeded(session: Session, mv_id: uuid.UUID) -> Evaluation | None:
    return session.scalar(select(Evaluation).where(Evaluation.model_version_id == mv_id,
                                                   Evaluation.status == "succeeded")
                          .order_by(Evaluation.finished_at.desc(), Evaluation.id.desc()).limit(1))


def failures(session: Session, *, name: str, alias: str, mv_id: uuid.UUID) -> list[dict[str, Any]] | None:
    """None when no policy guards `alias`; else every failing or missing gate (empty: all pass). The
    newest succeeded evaluation decides: an older, better one does not outvote a newer, worse one."""
    policy = session.get(ModelPolicy, name)
    if policy is None or alias not in (policy.gated_aliases or []) or not policy.gates:
        return None
    ev = latest_succeeded(session, mv_id)
    results = ev.results if ev is not None else {}
    out = []
    for g in policy.gates:
        op, limit = ("max", g["max"]) if g.get("max") is not None else ("min", g["min"])
        value = metric_value(results, g["metric"])
        ok = value is not None and (value <= limit if op == "max" else value >= limit)
        if not ok:
            out.append({"metric": g["metric"], "value": value, "limit": limit, "op": op,
                        "evaluation_id": str(ev.id) if ev is not None else None})
    return out
