"""Thin tasks: ids in, a service call, nothing else. Retries cover transient faults of the database and
of Redis, whichever client reports them (redis-py for the dedup index, kombu's OperationalError for a
broker call): the batch rolled back, so running it again is safe."""

from __future__ import annotations

from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from app.examples import jobs as ingest_jobs
from app.pipeline import jobs, service
from workers.celery_app import celery


@celery.task(name=service.RUN_STAGE_TASK, acks_late=True, ignore_result=True,
             autoretry_for=(OperationalError, RedisConnectionError, BrokerOperationalError),
             retry_backoff=True, retry_kwargs={"max_retries": 10})
def run_stage(stage: str, example_ids: list[str]) -> int:
    return jobs.run_stage(stage, example_ids)


@celery.task(name=service.SWEEP_TASK, acks_late=True, ignore_result=True)
def sweep() -> int:
    moved = jobs.sweep()  # first: a fault in the import sweep below must not hold up the pipeline's
    ingest_jobs.sweep_stale_imports()
    return moved
