"""Dedup background work: the dataset rebuild and the evaluation-set containment sweep. The per-batch
stage runs through the pipeline runner."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from app.dedup import jobs
from app.dedup.eval_guard import EVAL_SWEEP_TASK
from app.dedup.rebuild import REBUILD_TASK
from workers.celery_app import celery


@celery.task(name=REBUILD_TASK, acks_late=True, ignore_result=True,
             autoretry_for=(OperationalError, RedisConnectionError), retry_backoff=True,
             retry_kwargs={"max_retries": 5})
def rebuild(dataset_id: str, rebuild_id: str) -> dict:
    return jobs.rebuild(dataset_id, rebuild_id)


@celery.task(name=EVAL_SWEEP_TASK, acks_late=True, ignore_result=True,
             autoretry_for=(OperationalError,), retry_backoff=True, retry_kwargs={"max_retries": 5})
def eval_sweep(eval_dataset_id: str) -> dict:
    return jobs.eval_sweep(eval_dataset_id)
