"""The periodic verification of the audit chain (Celery beat, every PEDIGREE_AUDIT_VERIFY_INTERVAL_S).

Without it the chain is verified only when someone asks, and a broken chain is found at the next audit,
not the hour it broke. Each run is incremental from the checkpoint (cheap: it hashes what was appended
since); its result feeds pedigree_audit_verifications_total and the checkpoint gauges, which
deploy/prometheus/alerts.yml watches.
"""

from __future__ import annotations

import logging
from typing import Any

from app.audit import service
from app.core.db import session_scope

VERIFY_TASK = "pedigree.audit.verify"
log = logging.getLogger(__name__)


def verify_chain() -> dict[str, Any]:
    with session_scope() as session:
        result = service.verify(session, mode="auto").to_dict()
    if not result["ok"]:
        log.error("audit chain verification failed at event %s: %s", result.get("first_bad_event"),
                  result.get("reason") or "see GET /v1/audit/verify")
    return result
