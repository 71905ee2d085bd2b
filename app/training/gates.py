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
    suite, _, field = metric.partition(".")
    v = (results.get(suite) or {}).get(field)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


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
