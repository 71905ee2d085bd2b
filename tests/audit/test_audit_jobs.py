"""The periodic verification beat runs: it advances the checkpoint when the chain holds and counts a
failure (the metric deploy/prometheus/alerts.yml alerts on) when it does not."""

from __future__ import annotations

from sqlalchemy import text

from app.audit import jobs
from app.core import metrics
from tests.factories import new_dataset


def _count(result: str) -> float:
    return metrics.AUDIT_VERIFICATIONS.labels(result=result)._value.get()


def test_verify_chain_counts_passes_and_failures(api):
    for i in range(3):
        new_dataset(api, name=f"audited-{i}")
    ok_before, failed_before = _count("ok"), _count("failed")
    res = jobs.verify_chain()
    assert res["ok"] is True and res["events"] >= 3
    assert _count("ok") == ok_before + 1
    from app.core.db import get_engine

    with get_engine().begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2"))
    res = jobs.verify_chain()
    assert res["ok"] is False and res["first_bad_event"] is not None
    assert _count("failed") == failed_before + 1


def test_beat_sends_the_verification():
    from workers.celery_app import celery
    from workers.tasks.audit import verify

    assert verify.name == jobs.VERIFY_TASK and "workers.tasks.audit" in celery.conf.include
    entry = celery.conf.beat_schedule["audit-verify"]
    assert entry["task"] == jobs.VERIFY_TASK and jobs.VERIFY_TASK in celery.tasks
    assert entry["schedule"] == 3600.0
