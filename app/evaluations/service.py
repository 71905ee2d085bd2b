"""Evaluations of model versions (issue 17; docs/evaluation.md): creation and validation, the trainer's
protocol (start, events, complete, fail), cancel, and the read side.

The same state machine, locking and late-report refusal as training runs, written once in
app/training/protocol.py (`EVALS` here, `RUNS` there):

    queued ─▶ running ─▶ succeeded
      │          ├─────▶ failed      (trainer report, or the reaper: worker_lost)
      └──────────┴─────▶ cancelled   (curator)

Results count only on a succeeded evaluation: a failed or reaped one keeps none, so nothing partial is
ever read by a promotion gate.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core import jobs
from app.core.auth import Actor
from app.core.errors import Conflict, ValidationFailed
from app.core.pagination import page
from app.evaluations.schemas import (
    METRICS,
    SUITES,
    EvalComplete,
    EvaluationCreate,
    ModelPolicyIn,
    is_metric,
    param_problems,
)
from app.lineage import retest
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.training import (
    Evaluation,
    EvaluationEvent,
    ModelPolicy,
    ModelVersion,
    TrainingCanary,
    TrainingRun,
)
from app.snapshots import repository as snapshots
from app.training import artifacts, gates, registry
from app.training.protocol import Protocol
from app.training.schemas import EventIn

EVALUATE_TASK = "pedigree.evaluate.run"
EVALUATE_QUEUE = "train"
FINISHED = ("succeeded", "failed", "cancelled")


def _drop_results(ev: Evaluation) -> None:
    ev.results = {}  # nothing partial is ever read by a promotion gate


def _evaluation_visible(session: Session, ev: Evaluation, missing: Exception) -> None:
    # An evaluation belongs to its model version's workspace (its run's dataset's).
    mv = registry.version_by_id(session, ev.model_version_id)
    if mv is None:
        raise missing
    registry.check_version_visible(session, mv, missing)


# Claim, events, fail, cancel and the late-report refusal: the training run's steps (app/training/protocol.py).
EVALS = Protocol(model=Evaluation, event_model=EvaluationEvent, fk="evaluation_id", entity="evaluation",
                 label="evaluation", finished_code="evaluation_finished", on_fail=_drop_results,
                 visible=_evaluation_visible)


def get(session: Session, evaluation_id: str | uuid.UUID, *, lock: bool = False) -> Evaluation:
    return EVALS.get(session, evaluation_id, lock=lock)


def _finished(ev: Evaluation, doing: str) -> Conflict:
    return EVALS.finished(ev, doing)


def _dataset(session: Session, ref: str, field: str) -> Dataset:
    try:
        q = select(Dataset).where(Dataset.id == uuid.UUID(ref))
    except ValueError:
        q = select(Dataset).where(Dataset.name == ref)
    ds = session.scalar(q)
    if ds is None:
        raise ValidationFailed(f"dataset {ref!r} not found", code="unknown_dataset",
                               details=[{"field": field, "code": "unknown_dataset", "message": ref}])
    if not ds.is_eval_set:
        raise ValidationFailed(f"dataset {ds.name} is not flagged as an eval set", code="not_eval_set",
                               details=[{"field": field, "code": "not_eval_set",
                                         "message": f"{ds.name} has is_eval_set false"}])
    return ds


def create(session: Session, *, name: str, version: int, data: EvaluationCreate, actor: Actor) -> Evaluation:
    mv = registry.get_version(session, name, version)
    for i, s in enumerate(data.suites):
        if s not in SUITES:
            raise ValidationFailed(f"unknown suite {s!r}; known: {', '.join(SUITES)}", code="unknown_suite",
                                   details=[{"field": f"suites[{i}]", "code": "unknown_suite", "message": s}])
    suites = list(dict.fromkeys(data.suites))
    problems = param_problems(data.params)
    if problems:
        raise ValidationFailed("; ".join(f"{p['field']}: {p['message']}" for p in problems),
                               code=problems[0]["code"], details=problems)
    eval_sets = []
    for i, ref in enumerate(data.eval_sets):
        ds = _dataset(session, ref, f"eval_sets[{i}]")
        if all(e["id"] != str(ds.id) for e in eval_sets):
            eval_sets.append({"id": str(ds.id), "name": ds.name, "format": ds.format})
    reference = None
    if data.reference is not None:
        ds = _dataset(session, data.reference, "reference")
        reference = {"id": str(ds.id), "name": ds.name, "format": ds.format}
    if "memorization" in suites and not session.scalar(select(TrainingCanary.canary_id)
                                                        .where(TrainingCanary.run_id == mv.run_id).limit(1)):
        raise ValidationFailed(f"{name} v{version} was trained without canaries: memorization has nothing to "
                               "measure", code="no_canaries",
                               details=[{"field": "suites", "code": "no_canaries", "message": "memorization"}])
    if "membership" in suites:
        _check_membership_splits(session, mv, name=name, version=version)
    if "bias" in suites:
        from app.evaluations.corpora import crows_pairs_path

        crows_pairs_path()  # 422 bias_corpus_missing, before a GPU host is asked for
    if not artifacts.exists(mv.artifact_uri):
        raise Conflict(f"the artifact of {name} v{version} is gone from {mv.artifact_uri}", code="artifact_missing",
                       details={"model": name, "version": version})
    now = utcnow()
    ev = Evaluation(model_version_id=mv.id, suites=suites, eval_sets=eval_sets, reference=reference,
                    params=data.params, status="queued", results={}, event_count=0, created_by=actor.ref,
                    queued_at=now)
    session.add(ev)
    session.flush()
    # A version retrained after an erasure answers that erasure's re-test: its pii_extraction suite also
    # probes for the erased subject's strings (app/lineage/retest.py), so the suite runs whenever one is due.
    retests = retest.claim(session, model_version_id=mv.id, name=name, version=version, created_at=mv.created_at,
                           evaluation_id=ev.id)
    notes = [EventIn(kind="log", message=f"queued on {EVALUATE_QUEUE!r}")]
    if retests:
        if "pii_extraction" not in suites:
            suites = [*suites, "pii_extraction"]
            ev.suites = suites
        notes.append(EventIn(kind="log", message=f"pii_extraction carries the erasure re-test of "
                                                  f"{len(retests)} erasure request(s)",
                             data={"erasure_requests": [str(r) for r in retests]}))
    _add_events(session, ev, notes, now=now)
    audit.record(session, actor=actor.ref, action="evaluation.queued", entity_type="evaluation", entity_id=ev.id,
                 payload={"model": name, "version": version, "suites": suites,
                          "eval_sets": [e["name"] for e in eval_sets], "reference": (reference or {}).get("name"),
                          "erasure_retests": [str(r) for r in retests]})
    jobs.enqueue(session, EVALUATE_TASK, str(ev.id), queue=EVALUATE_QUEUE)
    return ev


def _check_membership_splits(session: Session, mv: ModelVersion, *, name: str, version: int) -> None:
    """Membership compares the version's train members with its snapshot's validation non-members; with
    either split empty the GPU host would claim the evaluation, download everything and load the model
    only to fail it `invalid_data`. The split is by a hash of each example id, so a small snapshot can
    land with no validation member at all (16 examples at 0.25: about one freeze in a hundred)."""
    snap = snapshots.get(session, session.get(TrainingRun, mv.run_id).snapshot_id)
    # As the suite's files are served (members erased since the freeze left out), not as frozen.
    counts = snapshots.served_split_counts(session, snap)
    for split, role in (("train", "member"), ("validation", "non-member")):
        if not counts[split]:
            raise ValidationFailed(
                f"{name} v{version}'s snapshot {snap.name} has no {split} examples: membership needs "
                f"{role}s (freeze with a validation_fraction, or stratify_by for an exact share)",
                code=f"no_{split}_examples",
                details=[{"field": "suites", "code": f"no_{split}_examples", "message": "membership"}])


# ---------------------------------------------------------------------------------------------------------
# The trainer's protocol


def start(session: Session, *, evaluation_id: str, worker_host: str, actor: Actor) -> Evaluation:
    return EVALS.start(session, row_id=evaluation_id, worker_host=worker_host, actor=actor)


def require_running(session: Session, evaluation_id: str) -> Evaluation:
    ev = get(session, evaluation_id)
    if ev.status != "running":
        raise _finished(ev, "serve its files") if ev.status in FINISHED else Conflict(
            f"evaluation {ev.id} is {ev.status}; its files are served only while it runs", code="not_running")
    return ev


def add_events(session: Session, *, evaluation_id: str, events: list[EventIn]) -> int:
    """A batch of events, counted as a heartbeat; refused (409) once the evaluation ended."""
    return EVALS.add_events(session, row_id=evaluation_id, events=events)


def _add_events(session: Session, ev: Evaluation, events: list[EventIn], *, now: dt.datetime) -> None:
    EVALS.append_events(session, ev, events, now=now)


def complete(session: Session, *, evaluation_id: str, data: EvalComplete, actor: Actor) -> Evaluation:
    ev = get(session, evaluation_id, lock=True)
    if ev.status == "succeeded" and ev.results == data.results:
        return ev  # a retried report
    if ev.status != "running":
        raise _finished(ev, "complete")
    missing = [s for s in ev.suites if s not in data.results]
    extra = [s for s in data.results if s not in ev.suites]
    if missing or extra:
        raise ValidationFailed(f"results must hold exactly the suites asked for ({', '.join(ev.suites)})",
                               code="bad_results", details=[
                                   *({"field": f"results.{s}", "code": "missing", "message": s} for s in missing),
                                   *({"field": f"results.{s}", "code": "not_asked", "message": s} for s in extra)])
    now = utcnow()
    ev.results = data.results
    retest.record(session, evaluation_id=ev.id, results=data.results)
    _end(session, ev, "succeeded", actor=actor, now=now,
         payload={"metrics": {m: _metric(data.results, m) for m in METRICS if _metric(data.results, m) is not None}})
    _add_events(session, ev, [EventIn(kind="log", message="results stored")], now=now)
    return ev


def _metric(results: dict[str, Any], metric: str) -> Any:
    return gates.metric_value(results, metric)


def fail(session: Session, *, evaluation_id: str, code: str, message: str, actor: Actor) -> Evaluation:
    return EVALS.fail(session, row_id=evaluation_id, code=code, message=message, actor=actor)


def cancel(session: Session, *, evaluation_id: str, actor: Actor) -> Evaluation:
    return EVALS.cancel(session, row_id=evaluation_id, actor=actor)


def _end(session: Session, ev: Evaluation, status: str, *, actor: Actor, now: dt.datetime, code: str | None = None,
         message: str | None = None, payload: dict[str, Any] | None = None) -> None:
    EVALS.end(session, ev, status, actor=actor, now=now, code=code, message=message, payload=payload)


# ---------------------------------------------------------------------------------------------------------
# Reading


def version_of(session: Session, ev: Evaluation) -> ModelVersion:
    return session.get(ModelVersion, ev.model_version_id)


def list_for_version(session: Session, *, name: str, version: int, cursor: str | None,
                     limit: int) -> tuple[list[Evaluation], str | None]:
    mv = registry.get_version(session, name, version)
    q = select(Evaluation).where(Evaluation.model_version_id == mv.id)
    if cursor:
        from app.core.pagination import decode_cursor
        q = q.where(Evaluation.id < decode_cursor(cursor))
    return page(list(session.scalars(q.order_by(Evaluation.id.desc()).limit(limit + 1))), limit)


def list_events(session: Session, *, evaluation_id: str, after: int | None,
                limit: int) -> tuple[list[EvaluationEvent], int | None]:
    ev = get(session, evaluation_id)
    q = select(EvaluationEvent).where(EvaluationEvent.evaluation_id == ev.id)
    if after is not None:
        q = q.where(EvaluationEvent.id > after)
    return page(list(session.scalars(q.order_by(EvaluationEvent.id).limit(limit + 1))), limit, encode=None)


def run_of(session: Session, ev: Evaluation) -> TrainingRun:
    return session.get(TrainingRun, version_of(session, ev).run_id)


# ---------------------------------------------------------------------------------------------------------
# Policies


def get_policy(session: Session, name: str) -> dict[str, Any]:
    registry.list_versions(session, name, limit=1)  # 404 for an unknown model
    p = session.get(ModelPolicy, name)
    return {"name": name, "gates": p.gates if p else [], "gated_aliases": p.gated_aliases if p else [],
            "updated_at": p.updated_at.isoformat() if p else None, "updated_by": p.updated_by if p else None}


def put_policy(session: Session, *, name: str, data: ModelPolicyIn, actor: Actor) -> dict[str, Any]:
    registry.list_versions(session, name, limit=1)
    for i, g in enumerate(data.gates):
        if not is_metric(g.metric):
            raise ValidationFailed(f"no suite produces metric {g.metric!r}", code="unknown_metric",
                                   details=[{"field": f"gates[{i}].metric", "code": "unknown_metric",
                                             "message": g.metric}])
    gates = [g.model_dump(exclude_none=True) for g in data.gates]
    aliases = list(dict.fromkeys(data.gated_aliases))
    p = session.get(ModelPolicy, name, with_for_update=True)
    now = utcnow()
    if p is None:
        session.add(ModelPolicy(name=name, gates=gates, gated_aliases=aliases, updated_at=now, updated_by=actor.ref))
    else:
        p.gates, p.gated_aliases, p.updated_at, p.updated_by = gates, aliases, now, actor.ref
    session.flush()
    audit.record(session, actor=actor.ref, action="model_policy.updated", entity_type="registered_model",
                 entity_id=name, payload={"gates": gates, "gated_aliases": aliases})
    return get_policy(session, name)


def succeeded_results(session: Session, mv_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Evaluation]]:
    out: dict[uuid.UUID, list[Evaluation]] = {}
    if not mv_ids:
        return out
    for ev in session.scalars(select(Evaluation).where(Evaluation.model_version_id.in_(mv_ids),
                                                       or_(Evaluation.status == "succeeded"))
                              .order_by(Evaluation.id.desc())):
        out.setdefault(ev.model_version_id, []).append(ev)
    return out
