"""OpenLineage run events for snapshot freezes and training runs (when PEDIGREE_OPENLINEAGE_URL is set).

Pedigree keeps record-level lineage itself (OpenLineage has no facet for "these 10,000 rows"); what it
tells a Marquez / DataHub / OpenMetadata is the coarse graph those tools draw: the curated dataset
feeds a freeze job, whose output is a snapshot dataset versioned by its manifest hash; a snapshot feeds
a training job, whose output is a model version.

- Snapshot freeze: START when the request begins, COMPLETE once the freeze's transaction commits, FAIL
  when it raises or rolls back (a hook in the snapshots router: `snapshot_freeze`).
- Training run: START / COMPLETE / FAIL / ABORT follow the run's audit events (training_run.started,
  .succeeded, .failed, .cancelled), read after they commit (app.wiring subscribes `on_audit`), so the
  training domain needs no hook. A run that ends without ever starting (refused in validation, cancelled
  while queued) still gets its START, sent just before the terminal event.

Events are sent from one background thread: a slow or absent lineage server must never slow down or
fail a freeze or a trainer's report. `flush()` waits for the queue (tests, process exit).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import logging
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import PedigreeError
from app.core.sql import iso, iso_now

log = logging.getLogger(__name__)

PRODUCER = "https://github.com/pedigree/pedigree"
_PENDING = "pedigree_openlineage_pending"


@lru_cache
def _client(url: str, endpoint: str, api_key: str | None, timeout: float):
    from openlineage.client import OpenLineageClient
    from openlineage.client.transport.http import ApiKeyTokenProvider, HttpConfig, HttpTransport

    cfg = HttpConfig(url=url, endpoint=endpoint, timeout=timeout,
                     # Two quick retries: the sender thread must not sit on one dead endpoint for minutes.
                     retry={"total": 2, "read": 2, "connect": 2, "backoff_factor": 0.2,
                            "status_forcelist": [500, 502, 503, 504], "allowed_methods": ["HEAD", "POST"]})
    if api_key:
        cfg.auth = ApiKeyTokenProvider({"apiKey": api_key})
    return OpenLineageClient(transport=HttpTransport(cfg))


# ---------------------------------------------------------------------------------------------------------
# The sender thread


_queue: queue.Queue[Callable[[], Any] | None] = queue.Queue()
_thread: threading.Thread | None = None
_lock = threading.Lock()


def _worker() -> None:
    while True:
        job = _queue.get()
        try:
            if job is not None:
                job()
        except Exception:  # a lineage server problem is logged, never raised into the service
            log.warning("OpenLineage event not delivered", exc_info=True)
        finally:
            _queue.task_done()


def _submit(job: Callable[[], Any]) -> None:
    global _thread
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_worker, name="openlineage-sender", daemon=True)
            _thread.start()
    _queue.put(job)


def flush(timeout: float = 10.0) -> bool:
    """Wait until every queued event was sent (or failed). True when the queue drained in time."""
    done = threading.Event()

    def _wait() -> None:
        _queue.join()
        done.set()

    threading.Thread(target=_wait, daemon=True).start()
    return done.wait(timeout)


atexit.register(flush, 5.0)


def _namespace() -> str:
    return get_settings().openlineage.namespace


def enabled() -> bool:
    return bool(get_settings().openlineage.url)


def _emit(ev: Any) -> None:
    s = get_settings().openlineage
    if not s.url:
        return
    _client(s.url, s.endpoint, s.api_key, s.timeout_s).emit(ev)


# ---------------------------------------------------------------------------------------------------------
# Datasets and events


def _snapshot_dataset(cls: Any, *, dataset_name: str, snapshot_name: str, manifest_sha256: str | None,
                      member_count: int | None = None, output: bool = False) -> Any:
    from openlineage.client.facet_v2 import dataset_version_dataset, documentation_dataset

    facets: dict[str, Any] = {}
    if manifest_sha256:
        # The manifest hash is the snapshot's identity: two freezes with the same members share it.
        facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=manifest_sha256)
        facets["documentation"] = documentation_dataset.DocumentationDatasetFacet(
            description=f"Pedigree snapshot {snapshot_name} of dataset {dataset_name} "
                        f"(manifest sha256 {manifest_sha256})")
    kw: dict[str, Any] = {"facets": facets}
    if output and member_count is not None:
        from openlineage.client.facet_v2 import output_statistics_output_dataset

        kw["outputFacets"] = {"outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
            rowCount=member_count)}
    return cls(namespace=_namespace(), name=f"{dataset_name}/snapshots/{snapshot_name}", **kw)


def _run_event(state: str, *, run_id: str, job_name: str, event_time: str | None = None,
               inputs: list[Any] | None = None, outputs: list[Any] | None = None,
               error: str | None = None) -> Any:
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import error_message_run, job_type_job

    run_facets: dict[str, Any] = {}
    if error:
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(message=error, programmingLanguage="python")
    job = Job(namespace=_namespace(), name=job_name,
              facets={"jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="PEDIGREE",
                                                             jobType="SNAPSHOT_FREEZE" if job_name.endswith(".freeze")
                                                             else "TRAINING")})
    return RunEvent(eventType=getattr(RunState, state), eventTime=event_time or iso_now(), producer=PRODUCER,
                    run=Run(runId=run_id, facets=run_facets), job=job, inputs=inputs or [], outputs=outputs or [])


class _Freeze:
    snapshot: Any = None


@contextlib.contextmanager
def snapshot_freeze(session: Session, *, dataset_ref: Any, name: str) -> Iterator[_Freeze]:
    """Wrap a freeze: START now; COMPLETE after the commit, FAIL if it raises or the transaction rolls
    back. Set `.snapshot` to the frozen row inside the block. A no-op when OpenLineage is not configured."""
    holder = _Freeze()
    if not enabled():
        yield holder
        return
    from openlineage.client.event_v2 import InputDataset
    from openlineage.client.uuid import generate_new_uuid

    from app.datasets import service as datasets

    run_id = str(generate_new_uuid())
    try:
        ds_name = datasets.get(session, dataset_ref).name
    except PedigreeError:  # the freeze itself reports the unknown dataset
        ds_name = str(dataset_ref)
    job = f"{ds_name}.freeze"
    source = InputDataset(namespace=_namespace(), name=ds_name)
    start = _run_event("START", run_id=run_id, job_name=job, inputs=[source])
    _submit(lambda: _emit(start))
    try:
        yield holder
    except BaseException as exc:
        fail = _run_event("FAIL", run_id=run_id, job_name=job, inputs=[source], error=f"{type(exc).__name__}: {exc}")
        _submit(lambda: _emit(fail))
        raise
    snap = holder.snapshot
    if snap is None:
        return
    info = {"run_id": run_id, "job": job, "source": source, "dataset": ds_name, "name": snap.name,
            "manifest": snap.manifest_sha256, "count": snap.member_count}
    session.info.setdefault(_PENDING, []).append(info)


def _freeze_complete(info: dict[str, Any]) -> None:
    from openlineage.client.event_v2 import OutputDataset

    out = _snapshot_dataset(OutputDataset, dataset_name=info["dataset"], snapshot_name=info["name"],
                            manifest_sha256=info["manifest"], member_count=info["count"], output=True)
    _emit(_run_event("COMPLETE", run_id=info["run_id"], job_name=info["job"], inputs=[info["source"]],
                     outputs=[out]))


def _freeze_rolled_back(info: dict[str, Any]) -> None:
    _emit(_run_event("FAIL", run_id=info["run_id"], job_name=info["job"], inputs=[info["source"]],
                     error="the freeze's transaction was rolled back"))


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    for info in session.info.pop(_PENDING, None) or ():
        _submit(lambda info=info: _freeze_complete(info))


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    for info in session.info.pop(_PENDING, None) or ():
        _submit(lambda info=info: _freeze_rolled_back(info))


# ---------------------------------------------------------------------------------------------------------
# Training runs, from their audit events

_RUN_STATES = {"training_run.started": "START", "training_run.succeeded": "COMPLETE",
               "training_run.failed": "FAIL", "training_run.cancelled": "ABORT"}
_TERMINAL = ("COMPLETE", "FAIL", "ABORT")
# The states a run ends from without ever having been started by a trainer (the audit payload's "from").
_NEVER_STARTED = ("validating", "queued")


def _training_event(run_id: str, state: str, occurred_at: dt.datetime | None, payload: dict[str, Any]) -> None:
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from sqlalchemy import select

    from app.core.db import session_scope
    from app.lineage import training as tr
    from app.models.dataset import Dataset
    from app.models.snapshot import Snapshot

    with session_scope() as s:
        run = s.execute(select(tr.training_runs).where(tr.training_runs.c.id == uuid.UUID(run_id))).first()
        if run is None:
            return
        snap = s.get(Snapshot, run.snapshot_id)
        ds_name = s.get(Dataset, snap.dataset_id).name if snap else "unknown"
        mv = None
        if state == "COMPLETE":
            mv = s.execute(select(tr.model_versions).where(tr.model_versions.c.run_id == run.id)).first()
    inputs = [_snapshot_dataset(InputDataset, dataset_name=ds_name, snapshot_name=snap.name,
                                manifest_sha256=snap.manifest_sha256)] if snap else []
    outputs = []
    if mv is not None:
        from openlineage.client.facet_v2 import dataset_version_dataset

        outputs.append(OutputDataset(namespace=_namespace(), name=f"models/{mv.name}", facets={
            "version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=str(mv.version))}))
    error = None
    if state == "FAIL":
        error = f"{payload.get('code') or 'failed'}: {payload.get('message') or ''}".strip()
    job_name, at = f"{run.model_name}.train", iso(occurred_at) or iso_now()
    if state in _TERMINAL and payload.get("from") in _NEVER_STARTED:
        # A run refused in validation or cancelled while queued never had a training_run.started event,
        # but the spec's run cycle is one START and one terminal event: without the START, Marquez and
        # DataHub show an orphan FAIL/ABORT with no run to hang it on. Stamped when the run was created.
        _emit(_run_event("START", run_id=run_id, job_name=job_name, event_time=iso(run.created_at) or at,
                         inputs=inputs))
    _emit(_run_event(state, run_id=run_id, job_name=job_name, event_time=at, inputs=inputs, outputs=outputs,
                     error=error))


def on_audit(events: list[dict[str, Any]]) -> None:
    # Called after every commit that audited anything: look at the actions before the settings,
    # which are read from the environment on each call (a review decision's commit has no run event).
    runs = [(ev, _RUN_STATES[ev["action"]]) for ev in events if ev["action"] in _RUN_STATES and ev.get("entity_id")]
    if not runs or not enabled():
        return
    for ev, state in runs:
        _submit(lambda ev=ev, state=state: _training_event(ev["entity_id"], state, ev.get("occurred_at"),
                                                           ev.get("payload") or {}))

