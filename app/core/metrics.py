"""Prometheus metrics recorded by the process that does the work (API requests, stage batches, tasks).

Production runs several uvicorn and Celery worker processes, so prometheus-client runs in its multiprocess
mode whenever PROMETHEUS_MULTIPROC_DIR is set (it must be set before the process starts, to an empty
folder shared by the processes of one host or container): each process writes its counters and histograms
to memory-mapped files there, and a scrape merges them (app.ops.metrics). Without it (the embedded mode,
tests) the same objects count in this process only.

Only counters and histograms live here: they merge across processes by summing. What is a level rather
than a count (examples per stage, queue depth, runs by status, the audit checkpoint) is read from the
database and Redis at scrape time (app.ops.metrics), so no process holds a stale copy of it.

PEDIGREE_METRICS=false turns recording off (the benchmarks measure with and without).
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import Counter, Histogram

from app.core.config import get_settings

# prometheus-client reads PROMETHEUS_MULTIPROC_DIR itself (its variable, not a Pedigree setting) and
# writes a file there as soon as a metric without labels is defined: a process given the variable but
# not the folder (compose's beat, a CLI command) would die on import. Make it exist first.
if _dir := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(_dir, exist_ok=True)

# Latency buckets for API requests: 5 ms to 60 s (imports of a large file take tens of seconds).
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

HTTP_DURATION = Histogram(
    "pedigree_http_request_duration_seconds",
    "API request duration, by route template (not the raw path: ids would explode the series), method and status.",
    ["method", "route", "status"], buckets=_HTTP_BUCKETS)
AUTH_FAILURES = Counter(
    "pedigree_auth_failures_total",
    "Requests refused for their key: 401 (missing, malformed, unknown or revoked key) or 403 (role).",
    ["status"])
AUTH_THROTTLED = Counter(
    "pedigree_auth_throttled_total",
    "Failed-authentication throttling: started (an address passed the limit; also an auth.throttled audit "
    "event) and refused (requests answered 429 while throttled).",
    ["outcome"])
STAGE_BATCH_DURATION = Histogram(
    "pedigree_stage_batch_duration_seconds", "Duration of one pipeline stage batch, by stage and outcome.",
    ["stage", "outcome"], buckets=_BATCH_BUCKETS)
STAGE_BATCH_EXAMPLES = Counter(
    "pedigree_stage_batch_examples_total", "Examples handled by pipeline stage batches.", ["stage"])
TASK_OUTCOMES = Counter(
    "pedigree_task_outcomes_total", "Celery task runs by task name and outcome (ok, retried, failed).",
    ["task", "outcome"])
VAULT_REVEALS = Counter(
    "pedigree_pii_vault_reveals_total", "Raw texts read back from the PII vault (admin reveals).")
AUDIT_VERIFICATIONS = Counter(
    "pedigree_audit_verifications_total", "Audit chain verifications, by result (ok, failed).", ["result"])
TRAINING_RUNS_REAPED = Counter(
    "pedigree_training_runs_reaped_total", "Training runs failed by the reaper (worker_lost: no heartbeat).")


def enabled() -> bool:
    return get_settings().metrics


def inc(counter: Any, amount: float = 1, **labels: str) -> None:
    if not enabled():
        return
    (counter.labels(**labels) if labels else counter).inc(amount)


def observe(histogram: Any, value: float, **labels: str) -> None:
    if enabled():
        histogram.labels(**labels).observe(value)


class HttpMetricsMiddleware:
    """Pure ASGI: times each request and labels it with the matched route's template (FastAPI puts the
    route in the scope when it matches). Unmatched paths share one label, so a scanner's random URLs
    cannot create series."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def _send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            HTTP_DURATION.labels(method=scope.get("method", ""), route=template,
                                 status=str(status)).observe(time.perf_counter() - start)
            if status in (401, 403):
                AUTH_FAILURES.labels(status=str(status)).inc()
