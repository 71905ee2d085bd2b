"""Review figures: per dataset and per reviewer (throughput, time to decision, agreement), and the
page's small progress count."""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.auth import Actor
from app.core.sql import aware
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.review import DECISIONS
from app.review import agreement, pairwise
from app.review.service import ESC, REV, E, R, policy_of


def stats(session: Session, *, dataset: Dataset, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    counts = dict(session.execute(select(E.c.status, func.count()).where(E.c.dataset_id == dataset.id)
                                  .group_by(E.c.status)).all())
    rows = session.execute(
        select(R.c.example_id, R.c.revision_id, R.c.reviewer, R.c.decision, R.c.created_at, R.c.leased_at,
               REV.c.created_at.label("revision_created_at"))
        .join(REV, REV.c.id == R.c.revision_id)
        .where(R.c.dataset_id == dataset.id)).all()
    escalated = session.scalar(select(func.count()).select_from(ESC).where(ESC.c.dataset_id == dataset.id)) or 0
    hour_ago, day_ago = now - dt.timedelta(hours=1), now - dt.timedelta(days=1)

    def summary(rs: list[Any]) -> dict[str, Any]:
        waits = [(aware(r.created_at) - aware(r.revision_created_at)).total_seconds() for r in rs]
        handling = [(aware(r.created_at) - aware(r.leased_at)).total_seconds() for r in rs if r.leased_at]
        by = Counter(r.decision for r in rs)
        return {
            "decisions": len(rs), **{d: by[d] for d in DECISIONS},
            "decisions_last_hour": sum(1 for r in rs if aware(r.created_at) >= hour_ago),
            "decisions_last_day": sum(1 for r in rs if aware(r.created_at) >= day_ago),
            # From the revision's creation to the decision: queue wait plus reading time.
            "median_seconds_to_decision": round(statistics.median(waits), 3) if waits else None,
            # From taking the lease to deciding: the reviewer's own time on the item.
            "median_handling_seconds": round(statistics.median(handling), 3) if handling else None,
        }

    by_reviewer: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        by_reviewer[r.reviewer].append(r)
    units = [(str(r.revision_id), r.reviewer, r.decision) for r in rows]
    agree = agreement.summarise(units)
    reviewers = []
    for name, rs in sorted(by_reviewer.items()):
        reviewers.append({"reviewer": name, **summary(rs),
                          "agreement_with_others": agree["per_reviewer"].get(name)})
    return {
        "dataset": {"id": str(dataset.id), "name": dataset.name,
                    "pending": counts.get("pending_review", 0), "approved": counts.get("approved", 0),
                    "rejected": counts.get("rejected", 0), "changes_requested": counts.get("changes_requested", 0),
                    "escalated": escalated, "in_pipeline": counts.get("ingested", 0) + counts.get("scrubbed", 0),
                    **summary(list(rows))},
        "agreement": {k: v for k, v in agree.items() if k != "per_reviewer"},
        "reviewers": reviewers,
        "policy": policy_of(dataset).full(),
        "pairwise": pairwise.stats(session, dataset_id=dataset.id) if dataset.format == "preference" else None,
    }


def progress(session: Session, *, dataset: Dataset, actor: Actor) -> dict[str, Any]:
    """Small and fast: the page's progress bar after every decision."""
    counts = dict(session.execute(select(E.c.status, func.count()).where(E.c.dataset_id == dataset.id)
                                  .group_by(E.c.status)).all())
    mine = session.scalar(select(func.count()).select_from(R).where(R.c.dataset_id == dataset.id,
                                                                    R.c.reviewer_key_id == actor.key_id)) or 0
    total = sum(counts.values()) - counts.get("duplicate", 0) - counts.get("erased", 0)
    done = counts.get("approved", 0) + counts.get("rejected", 0)
    return {"pending": counts.get("pending_review", 0), "approved": counts.get("approved", 0),
            "rejected": counts.get("rejected", 0), "changes_requested": counts.get("changes_requested", 0),
            "done": done, "total": total, "mine": mine}
