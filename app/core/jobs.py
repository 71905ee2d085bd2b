"""Background work, enqueued by name with ids only, sent after commit.

The API never imports `workers`: it sends tasks by name through a Celery client. In the embedded
mode (no Redis) there is no broker, so the same service function the task would call runs
in-process right after the commit; the composition root (app.wiring) installs those handlers by task
name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError
from sqlalchemy import event
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import NotWired
from app.core.logs import TASK_HEADER, current_request_id

log = logging.getLogger(__name__)

_AFTER_COMMIT = "pedigree_jobs_after_commit"
LOCAL_HANDLERS: dict[str, Callable[..., Any]] = {}

QUEUES = ("default", "pii", "dedup", "train")
# Waits between attempts at a send after commit: about 3.5 s in all, which rides out a broker
# restart or failover without holding a request much longer. A send that still fails is logged and
# left to the pipeline sweeper, which re-enqueues examples that sit at a stage with nothing queued.
SEND_BACKOFF_S = (0.25, 0.5, 1.0, 1.75)


def install_local_handlers(handlers: Mapping[str, Callable[..., Any]]) -> None:
    LOCAL_HANDLERS.clear()
    LOCAL_HANDLERS.update(handlers)


@lru_cache
def celery_client(broker_url: str) -> Celery:
    return Celery("pedigree-api", broker=broker_url, set_as_current=False)


def send(task_name: str, args: list[Any], queue: str) -> None:
    settings = get_settings()
    if settings.tasks_eager:
        if not LOCAL_HANDLERS:
            raise NotWired(f"no in-process handlers for {task_name}: the entry point must call "
                           "app.wiring.wire() first")
        handler = LOCAL_HANDLERS.get(task_name)
        if handler is None:
            log.warning("no in-process handler for %s; the task is dropped in embedded mode", task_name)
            return
        try:
            handler(*args)
        except Exception:  # the sweeper re-runs stalled stages; a request must not fail after commit
            log.exception("in-process task %s failed", task_name)
        return
    # The request id rides in a message header (not in args: tasks take ids only), so the worker's log
    # lines for this task carry the id of the request that caused it (app.core.logs).
    rid = current_request_id()
    celery_client(settings.redis_url).send_task(task_name, args=args, queue=queue,
                                                headers={TASK_HEADER: rid} if rid else None)


def _send_with_retries(task_name: str, args: list[Any], queue: str) -> bool:
    for attempt, wait in enumerate((*SEND_BACKOFF_S, None)):
        try:
            send(task_name, args, queue)
            return True
        except (BrokerError, RedisError, OSError) as exc:
            if wait is None:
                log.error("could not send %s to queue %s after %d attempts (%s); not sent (a pipeline "
                          "stage is re-enqueued by the sweeper)", task_name, queue, attempt + 1, exc)
                return False
            log.warning("send of %s failed (%s); retrying in %.2f s", task_name, exc, wait)
            time.sleep(wait)
    return False


def queue_depth(queue: str) -> int | None:
    """Messages waiting in a queue (not those a worker holds unacked); None if the broker cannot say."""
    settings = get_settings()
    if settings.tasks_eager:
        return 0
    try:
        with celery_client(settings.redis_url).connection_for_read() as conn:
            # Not passive: kombu's Redis transport reports an empty queue as missing when passive.
            return conn.default_channel.queue_declare(queue=queue).message_count
    except (BrokerError, RedisError, OSError) as exc:
        log.warning("could not read the depth of queue %s: %s", queue, exc)
        return None


def enqueue(session: Session, task_name: str, *args: Any, queue: str = "default") -> None:
    """Send after the session's transaction commits, so a worker never sees a rolled-back row."""
    session.info.setdefault(_AFTER_COMMIT, []).append((task_name, list(args), queue))


@event.listens_for(Session, "after_commit")
def _send_after_commit(session: Session) -> None:
    # The transaction is committed: raising here would turn a stored request into an error response
    # (and make the caller retry what is already there), so a send that keeps failing is logged.
    jobs = session.info.pop(_AFTER_COMMIT, None) or []
    for i, (task_name, args, queue) in enumerate(jobs):
        if not _send_with_retries(task_name, args, queue):
            # The broker is down: the other sends would fail the same way, each after its retries.
            if jobs[i + 1:]:
                log.error("%d more sends of this commit left for the sweeper", len(jobs) - i - 1)
            return


@event.listens_for(Session, "after_rollback")
def _drop_after_rollback(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)
