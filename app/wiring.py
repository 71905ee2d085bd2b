"""The composition root: the one place that connects the domains' extension points.

Every process entry point calls `wire()` before it serves anything: the API factory (`app.main`),
the Celery app (`workers.celery_app`), the CLI (`app.cli`), and the test suite's conftest. It fills
the registries that used to be filled by import side effects, so what a process does (which stages
run, what `GET /v1/examples/{id}` shows, who hears committed audit events, what runs in-process
without a broker) no longer depends on which modules it happened to import:

- the pipeline's stage list (`app.pipeline.stages`): each domain's handler is handed in here, so the
  pipeline package imports no domain that imports it back;
- the example view's hooks (`app.examples.service`);
- the audit log's after-commit subscribers (`app.audit.service`);
- the in-process handlers for tasks in the embedded mode (`app.core.jobs`);
- the text dedup compares (`app.dedup.store`): PII's view, scrubbed spans as keyed hashes.

A read of an empty stage list, view-hook list or handler table raises `NotWired` instead of quietly
doing less. `wire()` is idempotent; `registered()` names what is installed (the layout test compares
it across the entry points).
"""

from __future__ import annotations

import threading
from typing import Any

from app.audit import service as audit
from app.core import jobs
from app.dedup import jobs as dedup_jobs
from app.dedup import service as dedup
from app.dedup.eval_guard import EVAL_SWEEP_TASK
from app.dedup.rebuild import REBUILD_TASK
from app.dedup.store import install_view, installed_view
from app.evaluations import embedded as embedded_evaluations
from app.evaluations import service as evaluations
from app.examples import quality, validation
from app.examples import service as examples
from app.lineage import facets, openlineage
from app.pii import jobs as pii_jobs
from app.pii import queries as pii_queries
from app.pii import rescrub as pii_rescrub
from app.pii import service as pii
from app.pii.rescrub import RESCRUB_TASK
from app.pipeline import jobs as pipeline_jobs
from app.pipeline import service as pipeline
from app.pipeline import stages
from app.revalidation import jobs as revalidation_jobs
from app.revalidation import service as revalidation
from app.review import service as review
from app.training import embedded as embedded_training
from app.training import service as training

_lock = threading.Lock()
_wired = False


def _stage_list() -> list[stages.Stage]:
    return [
        stages.Stage(name="quality", queue="default", handler=quality.quality_handler),
        stages.Stage(name="pii", queue="pii", handler=pii.scrub_handler),
        # After pii: the scrubbed text is what a model would be trained on, so it is what is compared.
        stages.Stage(name="dedup", queue="dedup", handler=dedup.dedup_handler),
    ]


def wire() -> None:
    global _wired
    with _lock:
        if _wired:
            return
        stages.install(_stage_list(), on_validated=validation.record_pipeline)
        # The hooks write disjoint keys of the view; the order is fixed anyway, so two processes
        # build the same view.
        examples.install_view_hooks([pii.view_hook, dedup.view_hook, review.review_view, validation.view_hook])
        audit.install_subscribers([facets.on_audit, openlineage.on_audit, pii_rescrub.on_audit, revalidation.on_audit])
        # Dedup compares scrubbed text through PII's view (spans as keyed hashes of their values).
        install_view(pii_queries.dedup_views)
        jobs.install_local_handlers({
            pipeline.RUN_STAGE_TASK: pipeline_jobs.run_stage,
            pipeline.SWEEP_TASK: pipeline_jobs.sweep,
            REBUILD_TASK: dedup_jobs.rebuild,
            EVAL_SWEEP_TASK: dedup_jobs.eval_sweep,
            RESCRUB_TASK: pii_jobs.rescrub,
            revalidation.RUN_TASK: revalidation_jobs.run,
            revalidation.CHECK_TASK: revalidation_jobs.check,
            training.TRAIN_TASK: embedded_training.start_in_background,
            evaluations.EVALUATE_TASK: embedded_evaluations.start_in_background,
        })
        _wired = True


def _name(fn: Any) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def registered() -> dict[str, list[str]]:
    """What the registries hold now, by qualified name (empty lists before `wire()`)."""
    return {
        "stages": [f"{s.name}@{s.queue}:{_name(s.handler)}" for s in stages.STAGES],
        "on_validated": [_name(h) for h in stages.ON_VALIDATED],
        "view_hooks": [_name(h) for h in examples.VIEW_HOOKS],
        "audit_subscribers": [_name(f) for f in audit.subscribers()],
        "local_handlers": sorted(f"{k}:{_name(v)}" for k, v in jobs.LOCAL_HANDLERS.items()),
        "dedup_view": [_name(v) for v in [installed_view()] if v is not None],
    }
