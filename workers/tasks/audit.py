"""The audit chain's periodic verification, run by Celery beat on the default queue."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from app.audit import jobs
from workers.celery_app import celery


@celery.task(name=jobs.VERIFY_TASK, acks_late=True, ignore_result=True,
             autoretry_for=(OperationalError,), retry_backoff=True, retry_kwargs={"max_retries": 3})
def verify() -> dict:
    # Idempotent: a second run finds nothing new after the checkpoint the first one advanced.
    return jobs.verify_chain()
