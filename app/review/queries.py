"""Review's read API for other domains: approvals, decisions and agreement over a set of revisions
or examples given as a select, each one grouped statement (no per-row Python)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, func, select, union_all
from sqlalchemy.orm import Session

from app.models.review import Review


def approvals_by_revision(dataset_id: uuid.UUID) -> Any:
    """(revision_id, n): distinct human reviewers who approved each revision of the dataset. Counted per
    revision, so an edit (a new revision) resets the count, exactly as the review policy does. A
    `pairwise_swap` revision holds the pair its parent's reviewers approved (their majority made it), so it
    counts its parent's approvals."""
    from app.models.example import ExampleRevision

    own = (select(Review.revision_id, func.count(Review.reviewer_key_id.distinct()).label("n"))
           .where(Review.dataset_id == dataset_id, Review.decision == "approve")
           .group_by(Review.revision_id))
    swapped = (select(ExampleRevision.id.label("revision_id"), func.count(Review.reviewer_key_id.distinct()).label("n"))
               .join(Review, Review.revision_id == ExampleRevision.parent_id)
               .where(Review.dataset_id == dataset_id, Review.decision == "approve",
                      ExampleRevision.reason == "pairwise_swap")
               .group_by(ExampleRevision.id))
    return union_all(own, swapped)


def decisions_by_reviewer(session: Session, revisions: Select) -> list[Any]:
    """(reviewer, decision, count) over the reviews of the given revision ids."""
    return session.execute(
        select(Review.reviewer, Review.decision, func.count())
        .where(Review.revision_id.in_(revisions))
        .group_by(Review.reviewer, Review.decision).order_by(Review.reviewer)).all()


def agreement(session: Session, revisions: Select) -> tuple[int, int]:
    """(revisions reviewed more than once, of those the ones every reviewer decided alike)."""
    multi = (select(Review.revision_id, func.count(Review.decision.distinct()).label("d"))
             .where(Review.revision_id.in_(revisions))
             .group_by(Review.revision_id).having(func.count() > 1).subquery())
    n, same = session.execute(select(func.count(), func.count().filter(multi.c.d == 1)).select_from(multi)).one()
    return n or 0, same or 0


def summary_for_examples(session: Session, examples: Select) -> dict[str, int]:
    """Decisions, distinct reviewers and approvals over every review of the given example ids."""
    decisions, reviewers, approvals = session.execute(
        select(func.count(), func.count(Review.reviewer.distinct()), func.count().filter(Review.decision == "approve"))
        .where(Review.example_id.in_(examples))).one()
    return {"decisions": decisions, "reviewers": reviewers, "approvals": approvals}


def pairwise_for_examples(session: Session, examples: Select) -> dict[str, Any] | None:
    """Pairwise comparisons over the given example ids: counts by what was preferred, and per reviewer.
    None when there were none (not a preference set, or compared by no one)."""
    from app.models.review import PairwiseJudgment

    rows = session.execute(
        select(PairwiseJudgment.reviewer, PairwiseJudgment.preferred, func.count())
        .where(PairwiseJudgment.example_id.in_(examples))
        .group_by(PairwiseJudgment.reviewer, PairwiseJudgment.preferred)).all()
    if not rows:
        return None
    by_pick: dict[str, int] = {}
    by_reviewer: dict[str, dict[str, int]] = {}
    for reviewer, preferred, n in rows:
        by_pick[preferred] = by_pick.get(preferred, 0) + n
        by_reviewer.setdefault(reviewer, {})[preferred] = n
    return {"comparisons": sum(by_pick.values()), "by_pick": by_pick, "by_reviewer": by_reviewer}
