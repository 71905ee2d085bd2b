"""PII's job bodies: each opens its own sessions. The Celery task (workers/tasks/pii.py) and the embedded
mode's in-process runner call these."""

from __future__ import annotations

import uuid
from typing import Any

from app.core.db import session_scope
from app.models.dataset import Dataset
from app.pii import rescrub as rescrubs


def rescrub(dataset_id: str, value_tokens: list[str] | None = None, reason: str = "policy_changed") -> dict[str, Any]:
    """Re-scrub a dataset's candidates under its current policy, one transaction per batch (so a large
    dataset never holds one long transaction, and a crash loses at most one batch, which the redelivered
    task redoes: what is done is no candidate any more)."""
    ds_id = uuid.UUID(str(dataset_id))
    totals: dict[str, Any] = {"dataset_id": str(ds_id), "batches": 0, "examples": 0, "changed": 0, "unchanged": 0,
                              "approvals_reset": 0, "skipped_reviewed": 0}
    after: uuid.UUID | None = None
    while True:
        with session_scope() as session:
            ds = session.get(Dataset, ds_id)
            if ds is None:
                return totals
            ids = rescrubs.next_batch(session, ds, value_tokens, after)
            if not ids:
                return totals
            res = rescrubs.rescrub_batch(session, ds, ids, reason=reason)
        after = ids[-1]
        totals["batches"] += 1
        totals["examples"] += res["examples"]
        totals["unchanged"] += res["unchanged"]
        for k in ("changed", "approvals_reset", "skipped_reviewed"):
            totals[k] += len(res[k])
