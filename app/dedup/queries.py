"""Dedup's read API for other domains: which examples an evaluation set or a duplicate link takes out.

Set-based: each function returns a select (or runs one grouped statement) over dedup's tables, so a
caller freezing a million members composes it into its own statement instead of asking per example.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from app.models.dedup import DedupDecision, DedupEvalHit
from app.models.example import DuplicateLink


def contaminating(dataset_id: uuid.UUID) -> Select:
    """Example ids of the dataset that near-duplicate an evaluation example with no curator override:
    an allow_eval_overlap decision lifts one hit, any other hit still counts."""
    allowed = select(DedupDecision.example_id).where(
        DedupDecision.decision == "allow_eval_overlap",
        DedupDecision.example_id == DedupEvalHit.example_id,
        DedupDecision.other_example_id == DedupEvalHit.eval_example_id,
    )
    return select(DedupEvalHit.example_id).where(DedupEvalHit.dataset_id == dataset_id, ~allowed.exists()).distinct()


def linked_duplicates(dataset_id: uuid.UUID) -> Select:
    """Example ids on the non-canonical side of a duplicate link: duplicates whatever their status says."""
    return select(DuplicateLink.example_id).where(DuplicateLink.dataset_id == dataset_id).distinct()


def duplicates_by_method(session: Session, dataset_id: uuid.UUID, *, outside: Select) -> list[Any]:
    """(method, examples) for the linked duplicates of the dataset not in `outside` (a select of example
    ids, e.g. a snapshot's members): what a selection left out as duplicates, by detection method."""
    return session.execute(
        select(DuplicateLink.method, func.count(DuplicateLink.example_id.distinct()))
        .where(DuplicateLink.dataset_id == dataset_id, DuplicateLink.example_id.not_in(outside))
        .group_by(DuplicateLink.method)).all()
