"""PII's read API for other domains: what scrubbing found and which engine model ran, over a set of
examples given as a select, each one grouped statement (no per-row Python)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select, union
from sqlalchemy.orm import Session

from app.models.pii import PiiFinding, PiiScrub


def scrub_models(session: Session, examples: Select) -> list[Any]:
    """(model, examples scrubbed with it), most used first."""
    n = func.count(PiiScrub.example_id.distinct())
    return session.execute(select(PiiScrub.model, n).where(PiiScrub.example_id.in_(examples))
                           .group_by(PiiScrub.model).order_by(n.desc())).all()


def count_handled_by_model(session: Session, examples: Select, model: str) -> int:
    """How many of the examples a scrub or a finding records as handled by `model`."""
    hit = union(select(PiiScrub.example_id).where(PiiScrub.model == model, PiiScrub.example_id.in_(examples)),
                select(PiiFinding.example_id).where(PiiFinding.model == model, PiiFinding.example_id.in_(examples)))
    return session.scalar(select(func.count()).select_from(hit.subquery())) or 0


def findings_by_type_and_operator(session: Session, examples: Select) -> list[Any]:
    """(entity_type, operator, findings, of them marked false positive by a reviewer), most first."""
    n = func.count()
    return session.execute(
        select(PiiFinding.entity_type, PiiFinding.operator, n, func.count().filter(PiiFinding.verdict == "false_positive"))
        .where(PiiFinding.example_id.in_(examples))
        .group_by(PiiFinding.entity_type, PiiFinding.operator).order_by(n.desc())).all()


def findings_by_type(session: Session, examples: Select) -> dict[str, int]:
    """{entity_type: findings} over the examples."""
    rows = session.execute(select(PiiFinding.entity_type, func.count()).where(PiiFinding.example_id.in_(examples))
                           .group_by(PiiFinding.entity_type).order_by(PiiFinding.entity_type))
    return {t: n for t, n in rows}


def count_with_findings(session: Session, examples: Select) -> int:
    """How many of the examples have at least one finding."""
    return session.scalar(select(func.count(PiiFinding.example_id.distinct()))
                          .where(PiiFinding.example_id.in_(examples))) or 0
