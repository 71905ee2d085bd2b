"""Logs, request ids, task outcomes and the metrics exporter of a Celery worker (docs/operations.md).

Connected to Celery's signals when workers.celery_app is imported, i.e. in `celery -A workers.celery_app
worker` and in every process that sends tasks through that app.
"""

from __future__ import annotations

from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    task_success,
    worker_init,
)

from app.core import metrics
from app.core.config import get_settings
from app.core.logs import (
    TASK_HEADER,
    configure_logging,
    reset_request_id,
    reset_task,
    set_request_id,
    set_task,
)

_TOKENS: dict[str, tuple[Any, Any]] = {}


@after_setup_logger.connect
@after_setup_task_logger.connect
def _json_logs(**_: Any) -> None:
    s = get_settings()
    configure_logging(s.log_format_resolved, s.log_level)


def _request_id(request: Any) -> str | None:
    # A custom message header shows up as an attribute of the request (protocol 2) or in its headers.
    rid = getattr(request, TASK_HEADER, None) or (getattr(request, "headers", None) or {}).get(TASK_HEADER)
    return rid if isinstance(rid, str) else None


@task_prerun.connect
def _enter(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    # Restored around the task, so its log lines and the tasks it sends carry the request's id.
    if task is None or task_id is None:
        return
    _TOKENS[task_id] = (set_request_id(_request_id(task.request)), set_task(task.name, task_id))


@task_postrun.connect
def _leave(task_id: str | None = None, **_: Any) -> None:
    tokens = _TOKENS.pop(task_id or "", None)
    if tokens is not None:
        try:
            reset_request_id(tokens[0])
            reset_task(tokens[1])
        except ValueError:  # set in another context (eager tasks nested in a request): leave it
            pass


@task_success.connect
def _ok(sender: Any = None, **_: Any) -> None:
    metrics.inc(metrics.TASK_OUTCOMES, task=getattr(sender, "name", "?"), outcome="ok")


@task_retry.connect
def _retried(sender: Any = None, **_: Any) -> None:
    metrics.inc(metrics.TASK_OUTCOMES, task=getattr(sender, "name", "?"), outcome="retried")


@task_failure.connect
def _failed(sender: Any = None, **_: Any) -> None:
    metrics.inc(metrics.TASK_OUTCOMES, task=getattr(sender, "name", "?"), outcome="failed")


@worker_init.connect
def _exporter(**_: Any) -> None:
    s = get_settings()
    if s.metrics_port is not None:
        from app.ops import exporter

        exporter.start(s.metrics_host, s.metrics_port)
