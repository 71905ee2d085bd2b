"""Celery application for the CPU queues (default, pii, dedup).

Delivery is explicit: acks_late + reject_on_worker_lost, so a worker killed mid-batch leaves the
message on the broker and another worker redelivers it; prefetch 1, so a slow batch does not hold
others hostage. Tasks are idempotent (see app.pipeline.service), which is what makes this safe.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from app.core.config import get_settings
from app.wiring import wire
from workers import observability  # noqa: F401  (connects the logging, request-id and metrics signals)

# The Celery app is an entry point: its stages, audit subscribers and handlers are the API's.
wire()
settings = get_settings()
# One setting names the broker (PEDIGREE_REDIS_URL); without it (embedded mode) tasks run in-process and
# the in-memory transport only lets the app import.
broker = settings.redis_url or "memory://"

celery = Celery("pedigree", broker=broker,
                include=["workers.tasks.pipeline", "workers.tasks.pii", "workers.tasks.dedup",
                         "workers.tasks.training", "workers.tasks.audit", "workers.tasks.revalidation"])
celery.conf.update(
    task_queues=[Queue("default"), Queue("pii"), Queue("dedup")],
    task_default_queue="default",
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    # A pool child builds the PII engine (spaCy model, recognizer fingerprints) before it reports up: on a
    # loaded host that takes longer than Celery's 4 s default, which then kills and re-forks it forever.
    worker_proc_alive_timeout=120.0,
    broker_connection_retry_on_startup=True,
    # Redis redelivers an unacked message after this long; longer than the slowest batch (see the
    # setting). A killed worker's batch is recovered sooner by the lease sweeper.
    broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_s},
    task_always_eager=settings.tasks_eager,
    beat_schedule={
        # A sweep that waited longer than one interval in a busy queue is dropped: the next is due.
        "pipeline-sweep": {"task": "pedigree.pipeline.sweep", "schedule": settings.sweep_interval_s,
                           "options": {"queue": "default", "expires": settings.sweep_interval_s}},
        "training-reap": {"task": "pedigree.training.reap", "schedule": 30.0, "options": {"queue": "default"}},
        "erasure-retest-expire": {"task": "pedigree.erasure.retest_expire", "schedule": 3600.0,
                                  "options": {"queue": "default", "expires": 3600.0}},
        # Engines and recognizers change with a deploy, ages with time: compare the records hourly.
        "revalidation-check": {"task": "pedigree.revalidation.check", "schedule": settings.revalidation_check_interval_s,
                               "options": {"queue": "pii", "expires": settings.revalidation_check_interval_s}},
        "audit-verify": {"task": "pedigree.audit.verify", "schedule": settings.audit_verify_interval_s,
                         "options": {"queue": "default", "expires": settings.audit_verify_interval_s}},
    },
    timezone="UTC",
)
app = celery  # `celery -A workers.celery_app` finds `app` or `celery`
