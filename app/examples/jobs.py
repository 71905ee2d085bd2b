"""Ingest jobs that run outside a request and own their transaction (the worker's sweep, the API's
start-up sweep)."""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import func, update

from app.audit import service as audit
from app.core.config import get_settings
from app.core.db import session_scope
from app.models.base import utcnow
from app.models.example import IngestBatch

log = logging.getLogger(__name__)

_BATCH = IngestBatch.__table__


def sweep_stale_imports(lease_s: float | None = None) -> int:
    """Mark `interrupted` the open import batches whose import stopped writing more than a lease ago
    (killed API, lost database connection). Their counts are already exact: each write updated them."""
    lease = get_settings().import_lease_s if lease_s is None else lease_s
    cutoff = utcnow() - dt.timedelta(seconds=lease)
    with session_scope() as s:
        stale = (_BATCH.c.status == "open") & (_BATCH.c.atomic.is_(False)) & \
            (func.coalesce(_BATCH.c.last_seen, _BATCH.c.created_at) < cutoff)
        ids = list(s.scalars(update(_BATCH).where(stale).values(status="interrupted", finished_at=utcnow())
                             .returning(_BATCH.c.id)))
        for bid in ids:
            audit.record(s, actor="system:sweeper", action="ingest_batch.interrupted", entity_type="ingest_batch",
                         entity_id=bid, payload={})
    if ids:
        log.info("marked %d stale import batches interrupted", len(ids))
    return len(ids)


