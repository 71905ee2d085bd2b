"""Background work, enqueued by name with ids only, sent after commit.

The API never imports `workers`: it sends tasks by name through a Celery client. In the embedded
mode (no Redis) there is no broker, so the same service function the task would call runs
in-process right after the commit; handlers register themselves here by task name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session

from app.core.config import get_settings

log = logging.getLogger(__name__)

_AFTER_COMMIT = "pedigree_jobs_after_commit"
LOCAL_HANDLERS: dict[str, Callable[..., Any]] = {}

QUEUES = ("default", "pii", "dedup", "train")


def local_handler(task_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        LOCAL_HANDLERS[task_name] = fn
        return fn

    return deco


@lru_cache
def celery_client(broker_url: str) -> Celery:
    return Celery("pedigree-api", broker=broker_url, set_as_current=False)


def send(task_name: str, args: list[Any], queue: str) -> None:
    settings = get_settings()
    if settings.tasks_eager:
        handler = LOCAL_HANDLERS.get(task_name)
        if handler is None:
            log.warning("no in-process handler for %s; the task is dropped in embedded mode", task_name)
            return
        try:
            handler(*args)
        except Exception:  # the sweeper re-runs stalled stages; a request must not fail after commit
            log.exception("in-process task %s failed", task_name)
        return
    celery_client(settings.redis_url).send_task(task_name, args=args, queue=queue)


def enqueue(session: Session, task_name: str, *args: Any, queue: str = "default") -> None:
    """Send after the session's transaction commits, so a worker never sees a rolled-back row."""
    session.info.setdefault(_AFTER_COMMIT, []).append((task_name, list(args), queue))


@event.listens_for(Session, "after_commit")
def _send_after_commit(session: Session) -> None:
    jobs = session.info.pop(_AFTER_COMMIT, None)
    for task_name, args, queue in jobs or ():
        send(task_name, args, queue)


@event.listens_for(Session, "after_rollback")
def _drop_after_rollback(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)
