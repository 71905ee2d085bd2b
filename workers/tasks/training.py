"""The training reaper, run by Celery beat on the default queue.

Training itself is not here: `pedigree.train.run` is consumed by the GPU hosts' own worker
(`celery -A trainer.worker worker -Q train`), which talks to the API over HTTP.
"""

from __future__ import annotations

import logging

from workers.celery_app import celery

log = logging.getLogger(__name__)


@celery.task(name="pedigree.training.reap", acks_late=True, ignore_result=True)
def reap() -> list[str]:
    # Idempotent: a second run in the same instant finds nothing stale (the first one's UPDATE
    # re-checks state and heartbeat under the row lock).
    from app.core.db import session_scope
    from app.lineage import openlineage  # a reaped run is an OpenLineage FAIL, sent by its audit subscriber
    from app.training.reaper import reap as reap_runs

    with session_scope() as session:
        ids = reap_runs(session)
    if ids:
        log.warning("reaped %d training runs whose heartbeats stopped: %s", len(ids), ", ".join(map(str, ids)))
        # The sender is a daemon thread; a task is short-lived enough that a recycled worker
        # process could take the FAIL events with it.
        openlineage.flush()
    return [str(i) for i in ids]


@celery.task(name="pedigree.erasure.retest_expire", acks_late=True, ignore_result=True)
def retest_expire() -> list[str]:
    # An erased subject's strings are held for a retrained version's re-test only so long
    # (PEDIGREE_ERASURE_RETEST_HOLD_DAYS; app/lineage/retest.py): past it they are deleted here.
    from app.core.db import session_scope
    from app.lineage import retest

    with session_scope() as session:
        ids = retest.expire(session)
    if ids:
        log.warning("dropped the held re-test strings of %d erasure request(s) past their hold", len(ids))
    return [str(i) for i in ids]
