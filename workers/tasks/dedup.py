"""Dedup background work: the dataset rebuild and the evaluation-set containment sweep. The per-batch
stage runs through the pipeline runner."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from app.dedup import service
from workers.celery_app import celery


@celery.task(name=service.REBUILD_TASK, acks_late=True, ignore_result=True,
             autoretry_for=(OperationalError, RedisConnectionError), retry_backoff=True,
             retry_kwargs={"max_retries": 5})
def rebuild(dataset_id: str, rebuild_id: str) -> dict:
    return service.rebuild(dataset_id, rebuild_id)


@celery.task(name=service.EVAL_SWEEP_TASK, acks_late=True, ignore_result=True,
             autoretry_for=(OperationalError,), retry_backoff=True, retry_kwargs={"max_retries": 5})
def eval_sweep(eval_dataset_id: str) -> dict:
    return service.eval_sweep(eval_dataset_id)
