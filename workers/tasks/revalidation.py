"""Revalidation in Celery workers (queue "pii", where the engine is built): a requested run, and the check
that compares every dataset's validation records with this worker's versions (beat, and a dataset's policy
change)."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from app.revalidation import jobs
from app.revalidation.service import CHECK_TASK, RUN_TASK
from workers.celery_app import celery


@celery.task(name=RUN_TASK, acks_late=True, ignore_result=True,
             autoretry_for=(OperationalError,), retry_backoff=True, retry_kwargs={"max_retries": 5})
def run(revalidation_id: str) -> dict:
    """Resumable and idempotent (app/revalidation/jobs.py): a redelivery resumes after the last batch."""
    return jobs.run(revalidation_id)


@celery.task(name=CHECK_TASK, acks_late=True, ignore_result=True)
def check(dataset_id: str | None = None) -> list[str]:
    return jobs.check(dataset_id)
