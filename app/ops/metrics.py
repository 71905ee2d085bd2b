"""The Prometheus scrape: what every process recorded (app.core.metrics), plus levels read at scrape time.

Counters and histograms come from this process, or, in multiprocess mode (PROMETHEUS_MULTIPROC_DIR set),
from every process that writes into that folder: the API's uvicorn workers and, on the same host or a
shared volume, Celery workers. Levels are read here, from the database and Redis, so they are right
whichever process answers the scrape:

- pedigree_pipeline_examples{stage,status}: examples by next stage ("done" once the pipeline is through)
  and status; pedigree_pipeline_stage_oldest_seconds{stage}: how long the oldest example has waited at
  each stage (a stuck stage grows it); pedigree_pipeline_expired_leases{stage}: batches whose worker died.
- pedigree_celery_queue_length{queue}: messages waiting in each Redis queue.
- pedigree_training_runs{status}, pedigree_erasure_requests{status}, pedigree_dedup_rebuilds{status}.
- pedigree_audit_last_verified_event / _timestamp_seconds / pedigree_audit_head_event: the checkpoint of
  the last verification that passed, and the chain's head (the gap is what is not yet verified).

The database levels are GROUP BY counts over indexed columns, cached for LEVELS_TTL_S and bounded by a
statement timeout on PostgreSQL, so a scrape every 15 s costs the database one cheap query set at most
every LEVELS_TTL_S, and a slow database makes a scrape answer without levels rather than hang.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select, text

from app.core import jobs
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.sql import aware, is_pg

log = logging.getLogger(__name__)

LEVELS_TTL_S = 10.0
STATEMENT_TIMEOUT_MS = 2000
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess_dir() -> str | None:
    # Read by prometheus-client itself from the environment, before any metric exists; the one place
    # the service reads it too, to know which registry to expose.
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def _counts(session, model, *cols) -> list[tuple]:
    return list(session.execute(select(*cols, func.count()).select_from(model).group_by(*cols)).all())


def _read_levels() -> dict[str, list[tuple[tuple[str, ...], float]]]:
    from app.models.audit import AuditCheckpoint, AuditHead
    from app.models.base import utcnow
    from app.models.dedup import DedupRebuild
    from app.models.example import Example
    from app.models.lineage import ErasureRequest
    from app.models.pipeline import StageLease
    from app.models.training import TrainingRun

    out: dict[str, list[tuple[tuple[str, ...], float]]] = {}
    with session_scope() as s:
        if is_pg(s):
            s.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
        stage = func.coalesce(Example.stage, "done")
        out["pipeline_examples"] = [((st, status), n) for st, status, n in _counts(s, Example, stage, Example.status)]
        now = utcnow()
        oldest = s.execute(select(Example.stage, func.min(Example.updated_at))
                           .where(Example.stage.is_not(None)).group_by(Example.stage)).all()
        out["stage_oldest"] = [((st,), max(0.0, (now - aware(at)).total_seconds())) for st, at in oldest if at]
        expired = s.execute(select(StageLease.stage, func.count()).where(StageLease.expires_at < now)
                            .group_by(StageLease.stage)).all()
        out["expired_leases"] = [((st,), n) for st, n in expired]
        out["training_runs"] = [((st,), n) for st, n in _counts(s, TrainingRun, TrainingRun.status)]
        out["erasure_requests"] = [((st,), n) for st, n in _counts(s, ErasureRequest, ErasureRequest.status)]
        out["dedup_rebuilds"] = [((st,), n) for st, n in _counts(s, DedupRebuild, DedupRebuild.status)]
        cp = s.get(AuditCheckpoint, 1)
        head = s.get(AuditHead, 1)
        out["audit_last_verified"] = [((), float(cp.seq))] if cp else [((), 0.0)]
        out["audit_last_verified_ts"] = [((), aware(cp.verified_at).timestamp())] if cp else []
        out["audit_last_full_ts"] = ([((), aware(cp.full_verified_at).timestamp())]
                                     if cp and cp.full_verified_at else [])
        out["audit_head"] = [((), float(head.seq))] if head else [((), 0.0)]
    return out


class _Levels:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = 0.0
        self._url: str | None = None
        self._value: dict[str, Any] | None = None

    def get(self) -> dict[str, Any] | None:
        url = get_settings().database_url
        with self._lock:
            if self._value is None or self._url != url or time.monotonic() - self._at > LEVELS_TTL_S:
                self._url = url
                try:
                    self._value = _read_levels()
                except Exception as exc:  # noqa: BLE001 - a scrape answers with what it has; the levels' absence alerts
                    log.warning("metrics: could not read levels from the database: %s: %s", type(exc).__name__, exc)
                    self._value = None
                self._at = time.monotonic()
            return self._value

    def clear(self) -> None:
        with self._lock:
            self._value, self._at = None, 0.0


LEVELS = _Levels()

_GAUGES = {
    "pipeline_examples": ("pedigree_pipeline_examples", ("Examples by next pipeline stage ('done' when through) "
                          "and status."), ["stage", "status"]),
    "stage_oldest": ("pedigree_pipeline_stage_oldest_seconds", "Age of the oldest example waiting at each stage.",
                     ["stage"]),
    "expired_leases": ("pedigree_pipeline_expired_leases", ("Stage batches whose lease expired (their worker "
                       "died); the sweeper re-enqueues them."), ["stage"]),
    "training_runs": ("pedigree_training_runs", "Training runs by status.", ["status"]),
    "erasure_requests": ("pedigree_erasure_requests", "Erasure requests by status.", ["status"]),
    "dedup_rebuilds": ("pedigree_dedup_rebuilds", "Dedup index rebuilds by status.", ["status"]),
    "audit_last_verified": ("pedigree_audit_last_verified_event", ("Sequence number of the last audit event a "
                            "verification proved good (the checkpoint)."), []),
    "audit_last_verified_ts": ("pedigree_audit_last_verified_timestamp_seconds", ("When the checkpoint was last "
                               "advanced by a verification that passed."), []),
    "audit_last_full_ts": ("pedigree_audit_last_full_verification_timestamp_seconds", ("When the whole chain was "
                           "last re-hashed and passed."), []),
    "audit_head": ("pedigree_audit_head_event", "Sequence number of the newest audit event.", []),
}


class LevelsCollector:
    """Gauges computed when scraped (a custom collector: nothing of it is written to the multiprocess files)."""

    def collect(self):
        levels = LEVELS.get()
        yield GaugeMetricFamily("pedigree_metrics_levels_up", "1 when the database levels below could be read.",
                                value=1.0 if levels is not None else 0.0)
        if levels is not None:
            for key, (name, doc, labels) in _GAUGES.items():
                g = GaugeMetricFamily(name, doc, labels=labels)
                for values, v in levels.get(key, []):
                    g.add_metric(list(values), v)
                yield g
        depth = GaugeMetricFamily("pedigree_celery_queue_length", "Messages waiting in each Celery queue "
                                  "(Redis list length; absent when the broker cannot say).", labels=["queue"])
        if get_settings().redis_url:
            for q in jobs.QUEUES:
                n = jobs.queue_depth(q)
                if n is not None:
                    depth.add_metric([q], float(n))
        yield depth


class _Forward:
    """The process's own registry inside a per-scrape one (single-process mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):
        yield from self.registry.collect()


def process_registry() -> CollectorRegistry:
    """What this host's processes recorded: the multiprocess folder merged, or this process's registry."""
    reg = CollectorRegistry()
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(reg)
    else:
        reg.register(_Forward(REGISTRY))
    return reg


def scrape(*, levels: bool = True) -> bytes:
    reg = process_registry()
    if levels:
        reg.register(LevelsCollector())
    return generate_latest(reg)
