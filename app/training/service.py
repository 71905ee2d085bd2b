"""Training runs: creation and validation, the trainer's protocol (start, events, complete, fail),
cancel, and the read side.

State machine (every transition one transaction plus one audit event):

    validating ─▶ queued ─▶ running ─▶ succeeded
        │           │          ├─────▶ failed      (trainer report, or the reaper: worker_lost)
        └─▶ failed  └──────────┴─────▶ cancelled   (curator)

Transitions lock the run row (FOR UPDATE on PostgreSQL; SQLite's single writer serialises them), so a
completion racing a cancel or the reaper ends in exactly one final state, and a report that arrives
after the run has ended is refused with 409 rather than resurrecting it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import BigInteger, Integer, Uuid, cast, func, insert, literal, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core import jobs
from app.core.auth import Actor, scope_actor
from app.core.config import get_settings
from app.core.errors import Conflict, ValidationFailed
from app.core.ids import id_or_404
from app.core.pagination import decode_cursor, page
from app.core.sql import is_pg
from app.datasets import service as datasets
from app.models.base import utcnow
from app.models.snapshot import Snapshot
from app.models.training import (
    ModelAliasHistory,
    ModelVersion,
    TrainedRevision,
    TrainingRun,
    TrainingRunEvent,
)
from app.pii import queries as pii_queries
from app.review import queries as review_queries
from app.snapshots import repository as snapshots
from app.training import artifacts, canaries, gates, registry
from app.training.protocol import Protocol
from app.training.schemas import EventIn, RunComplete, RunCreate, is_hub_id, is_valid_hub_id

TRAIN_TASK = "pedigree.train.run"
TRAIN_QUEUE = "train"



def _merge_metrics(run: TrainingRun, events: list[EventIn]) -> None:
    """A run's metrics events fold into `run.metrics` (the latest value of each), while it runs."""
    latest = [e for e in events if e.kind == "metrics" and e.data]
    if latest and run.status == "running":
        merged = dict(run.metrics or {})
        for e in latest:
            merged.update({k: v for k, v in (e.data or {}).items() if isinstance(v, (int, float, str)) or v is None})
            if e.step is not None:
                merged["step"] = e.step
        run.metrics = merged


def _run_visible(session: Session, run: TrainingRun, missing: Exception) -> None:
    if scope_actor(session) is not None:  # the run's dataset is its snapshot's
        ds_id = session.scalar(select(Snapshot.dataset_id).where(Snapshot.id == run.snapshot_id))
        datasets.check_dataset_id(session, ds_id, missing)


# Claim, events, fail, cancel and the late-report refusal: the same steps as evaluations' (app/training/protocol.py).
RUNS = Protocol(model=TrainingRun, event_model=TrainingRunEvent, fk="run_id", entity="training_run",
                label="training run", finished_code="run_finished", startable=("queued", "validating"),
                on_events=_merge_metrics, visible=_run_visible)


def get(session: Session, run_id: str | uuid.UUID, *, lock: bool = False) -> TrainingRun:
    return RUNS.get(session, run_id, lock=lock)


def _finished_conflict(run: TrainingRun, doing: str) -> Conflict:
    return RUNS.finished(run, doing)


# ---------------------------------------------------------------------------------------------------------
# Creation


def create(session: Session, *, data: RunCreate, actor: Actor,
           idempotency_key: str | None = None) -> tuple[TrainingRun, bool]:
    """The run and whether this call created it. With an idempotency key, a retry of the same
    request returns the run the first call made (a lost response must not cost a second GPU run);
    the same key with a different request is refused."""
    check_base_model_allowed(data.base_model)
    request_sha = None
    if idempotency_key is not None:
        request_sha = hashlib.sha256(orjson.dumps(data.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS))\
            .hexdigest()
        prior = _by_idempotency_key(session, actor, idempotency_key, request_sha)
        if prior is not None:
            return prior, False
    snap = snapshots.get(session, data.snapshot_id)
    if data.expected_manifest_sha256 and data.expected_manifest_sha256 != snap.manifest_sha256:
        raise Conflict(
            f"snapshot {snap.id} has manifest {snap.manifest_sha256}, not the expected {data.expected_manifest_sha256}",
            code="manifest_mismatch",
            details={"field": "expected_manifest_sha256", "snapshot_manifest_sha256": snap.manifest_sha256},
        )
    if data.method == "dpo" and snap.format != "preference":
        raise ValidationFailed(f"method dpo needs a preference snapshot; snapshot {snap.id} is {snap.format}",
                               code="method_format_mismatch",
                               details=[{"field": "method", "code": "method_format_mismatch",
                                         "message": f"dpo trains on preference pairs, not {snap.format} examples"}])
    erased = snapshots.erased_members(session, snap)
    if snap.contains_erased or erased:
        # Its export omits the erased members, so it no longer hashes to its manifest: training it would
        # fail on the GPU host. Say so now, and say what to do.
        raise Conflict(f"snapshot {snap.id} contains erased examples; freeze a new snapshot to train on",
                       code="snapshot_contains_erased", details={"erased_members": len(erased)})
    if not (snap.counts or {}).get("train"):
        # The split is by a hash of each example id: a small snapshot with a large validation_fraction can
        # freeze with every member in validation, and the GPU host would only fail it `invalid_data`.
        raise ValidationFailed(f"snapshot {snap.id} has no train examples ({snap.member_count} in validation)",
                               code="no_train_examples",
                               details=[{"field": "snapshot_id", "code": "no_train_examples",
                                         "message": f"validation_fraction {snap.validation_fraction}"}])
    # The name is the workspace's from the first run that asks for it: what hangs off a name (aliases,
    # policy, erasure re-tests) must never be reachable from another workspace's version.
    registry.reserve(session, name=data.model_name, workspace_id=registry.run_workspace(session, snap.id))
    now = utcnow()
    run = TrainingRun(
        snapshot_id=snap.id,
        expected_manifest_sha256=snap.manifest_sha256,
        base_model=data.base_model,
        method=data.method,
        hyperparameters=data.hyperparameters.model_dump(exclude_unset=True),
        model_name=data.model_name,
        meta=data.metadata,
        status="validating",
        created_by=actor.ref,
        metrics={},
        event_count=0,
        idempotency_key=idempotency_key,
        request_sha256=request_sha,
    )
    if idempotency_key is None:
        session.add(run)
        session.flush()
    else:
        try:
            # A concurrent twin with the same key waits on the unique index here and then fails:
            # answer it with the run the other request made.
            with session.begin_nested():
                session.add(run)
                session.flush()
        except IntegrityError:
            prior = _by_idempotency_key(session, actor, idempotency_key, request_sha)
            if prior is None:
                raise
            return prior, False
    audit.record(session, actor=actor.ref, action="training_run.created", entity_type="training_run",
                 entity_id=run.id, payload={"snapshot_id": str(snap.id), "manifest_sha256": snap.manifest_sha256,
                                            "base_model": run.base_model, "method": run.method,
                                            "hyperparameters": run.hyperparameters, "model_name": run.model_name,
                                            "canaries": data.canaries.model_dump() if data.canaries else None})
    if data.canaries is not None:
        canaries.draw(session, run_id=run.id, count=data.canaries.count, repetitions=data.canaries.repetitions)
    problem = _validate_base_model(run.base_model)
    if problem:
        # The run is kept (a record of what was asked and why it did not train), ended before any GPU
        # host sees it.
        _end(session, run, "failed", code="bad_base_model", message=problem, actor=actor, now=now)
        _add_events(session, run, [EventIn(kind="log", level="error", message=problem)], now=now)
        return run, True
    run.status, run.queued_at = "queued", now
    _add_events(session, run, [EventIn(kind="log", message=f"queued on {TRAIN_QUEUE!r}")], now=now)
    audit.record(session, actor=actor.ref, action="training_run.queued", entity_type="training_run",
                 entity_id=run.id, payload={"queue": TRAIN_QUEUE})
    jobs.enqueue(session, TRAIN_TASK, str(run.id), queue=TRAIN_QUEUE)
    return run, True


def _by_idempotency_key(session: Session, actor: Actor, key: str, request_sha: str | None) -> TrainingRun | None:
    prior = session.scalar(select(TrainingRun).where(TrainingRun.created_by == actor.ref,
                                                     TrainingRun.idempotency_key == key))
    if prior is not None and prior.request_sha256 != request_sha:
        raise Conflict(f"Idempotency-Key {key!r} was used for a different request (run {prior.id})",
                       code="idempotency_key_reused",
                       details={"field": "Idempotency-Key", "run_id": str(prior.id)})
    return prior


BASE_MODEL_REFUSED = ("base_model must be a hub id ('org/name') or a path inside a configured model root "
                      "(PEDIGREE_MODEL_ROOTS)")


def _inside_model_roots(base_model: str) -> bool:
    try:
        # realpath follows symlinks: a link inside a root that points outside it is outside.
        real = os.path.realpath(os.path.expanduser(base_model))
        roots = [os.path.realpath(r) for r in get_settings().model_root_list]
    except (OSError, ValueError):  # e.g. an embedded NUL byte
        return False
    return any(real != root and os.path.commonpath([real, root]) == root for root in roots)


def check_base_model_allowed(base_model: str) -> None:
    """Refuse, with one answer for every case, a base model that is neither a well-formed hub id nor a
    path inside a model root, before anything looks at the path: the answer must not tell a caller
    whether some file on the API host exists."""
    ok = is_valid_hub_id(base_model) if is_hub_id(base_model) else _inside_model_roots(base_model)
    if not ok:
        raise ValidationFailed(BASE_MODEL_REFUSED, code="bad_base_model",
                               details=[{"field": "base_model", "code": "bad_base_model",
                                         "message": BASE_MODEL_REFUSED}])


def _validate_base_model(base_model: str) -> str | None:
    if is_hub_id(base_model):
        return None  # resolved (or refused) on the GPU host, which may have it cached
    path = Path(base_model).expanduser()
    if not path.exists():
        return f"base model path {base_model} does not exist"
    if path.is_dir() and not (path / "config.json").exists():
        return f"base model path {base_model} has no config.json (not a Hugging Face model folder)"
    return None


# ---------------------------------------------------------------------------------------------------------
# The trainer's protocol


def start(session: Session, *, run_id: str, worker_host: str, actor: Actor) -> TrainingRun:
    return RUNS.start(session, row_id=run_id, worker_host=worker_host, actor=actor)


def add_events(session: Session, *, run_id: str, events: list[EventIn]) -> int:
    return RUNS.add_events(session, row_id=run_id, events=events)


def _add_events(session: Session, run: TrainingRun, events: list[EventIn], *, now: dt.datetime) -> None:
    RUNS.append_events(session, run, events, now=now)


def complete(session: Session, *, run_id: str, data: RunComplete, actor: Actor) -> tuple[TrainingRun, ModelVersion]:
    run = get(session, run_id, lock=True)
    if run.status == "succeeded":
        mv = session.scalar(select(ModelVersion).where(ModelVersion.run_id == run.id))
        if mv is not None and mv.artifact_sha256 == data.artifact_sha256:
            return run, mv  # a retried report (lost response): same answer, nothing written twice
        raise Conflict(f"training run {run.id} already completed with artifact {mv.artifact_sha256 if mv else '-'}",
                       code="already_completed")
    if run.status != "running":
        raise _finished_conflict(run, "complete")
    artifacts.check_under_root(data.artifact_uri)
    try:
        actual = artifacts.sha256_of(data.artifact_uri)
    except FileNotFoundError:
        raise ValidationFailed(f"artifact {data.artifact_uri} does not exist", details=[
            {"field": "artifact_uri", "code": "missing", "message": "no file at this URI"}]) from None
    if actual != data.artifact_sha256:
        raise ValidationFailed(f"artifact hashes to {actual}, the report says {data.artifact_sha256}", details=[
            {"field": "artifact_sha256", "code": "mismatch", "message": f"the stored file hashes to {actual}"}])
    revs = _revision_ids(data)
    now = utcnow()
    mv = registry.register(session, name=run.model_name, run=run, artifact_uri=data.artifact_uri,
                           artifact_sha256=data.artifact_sha256, actor=actor)
    written = _write_lineage(session, run=run, mv=mv, revs=revs, data=data)
    if written != len(revs):
        # Any reported revision outside the snapshot would be a false lineage claim: refuse the whole
        # report (the request's rollback takes the model version with it).
        raise ValidationFailed(f"{len(revs) - written} reported revisions are not members of snapshot "
                               f"{run.snapshot_id}", details=[{"field": "examples", "code": "not_in_snapshot",
                                                               "message": "every revision must be a member"}])
    run.metrics = data.metrics
    _end(session, run, "succeeded", actor=actor, now=now,
         payload={"model_version": {"name": mv.name, "version": mv.version}, "artifact_sha256": mv.artifact_sha256,
                  "lineage_rows": written, "tokens": sum(e["tokens"] for e in data.examples)})
    _add_events(session, run, [EventIn(kind="log", message=f"registered {mv.name} v{mv.version} "
                                       f"({written} trained revisions)")], now=now)
    return run, mv


def _revision_ids(data: RunComplete) -> list[str]:
    revs = [e["revision_id"] for e in data.examples]
    if len(set(revs)) != len(revs):
        seen: set[str] = set()
        for i, r in enumerate(revs):
            if r in seen:
                raise ValidationFailed(f"examples[{i}].revision_id {r} is reported twice", details=[
                    {"field": f"examples[{i}].revision_id", "code": "duplicate", "message": "reported twice"}])
            seen.add(r)
    return revs


def _write_lineage(session: Session, *, run: TrainingRun, mv: ModelVersion, revs: list[str],
                   data: RunComplete) -> int:
    if not revs:
        return 0
    toks = [e["tokens"] for e in data.examples]
    eps = [e["epochs"] for e in data.examples]
    # The membership comes from the snapshots domain as a subquery; this domain owns only the rows it writes.
    m = snapshots.member_pairs(run.snapshot_id).subquery("m")
    if is_pg(session):
        # One statement: the reported arrays joined to the snapshot's partition, so example ids come
        # from the frozen membership and a revision outside the snapshot simply does not join.
        # The arrays travel as three strings: binding 3n Python objects costs more than the INSERT.
        u = func.unnest(
            cast(func.string_to_array(",".join(revs), ","), postgresql.ARRAY(postgresql.UUID())),
            cast(func.string_to_array(",".join(map(str, toks)), ","), postgresql.ARRAY(BigInteger())),
            cast(func.string_to_array(",".join(map(str, eps)), ","), postgresql.ARRAY(Integer())),
        ).table_valued("revision_id", "tokens", "epochs").render_derived(name="u")
        rows = (select(literal(run.id, Uuid()), literal(mv.id, Uuid()), m.c.revision_id, m.c.example_id,
                       u.c.tokens, u.c.epochs)
                .select_from(u.join(m, m.c.revision_id == u.c.revision_id))
                # Ids are time-ordered (UUIDv7): in example order, every index of lineage is filled nearly
                # left to right instead of at a million random leaf pages (1M rows: 63 s -> see bench).
                .order_by(m.c.example_id))
        # SQLAlchemy reports -1 for an INSERT's rowcount unless asked to keep the driver's; that count is
        # what proves every reported revision joined.
        stmt = insert(TrainedRevision.__table__).from_select(
            ["run_id", "model_version_id", "revision_id", "example_id", "tokens", "epochs"], rows
        ).execution_options(preserve_rowcount=True)
        # Enough memory to sort a million-row report without spilling (this transaction only).
        session.execute(text("SET LOCAL work_mem = '128MB'"))
        res = session.execute(stmt)
        return res.rowcount
    # SQLite (the embedded mode's sizes): the membership as a dict, then one executemany.
    members = dict(session.execute(select(m.c.revision_id, m.c.example_id)).all())
    rows = [{"run_id": run.id, "model_version_id": mv.id, "revision_id": r, "example_id": members[r],
             "tokens": t, "epochs": e} for r, t, e in zip(map(uuid.UUID, revs), toks, eps, strict=True) if r in members]
    if rows:
        session.execute(insert(TrainedRevision), rows)
    return len(rows)


def fail(session: Session, *, run_id: str, code: str, message: str, actor: Actor) -> TrainingRun:
    return RUNS.fail(session, row_id=run_id, code=code, message=message, actor=actor)


def cancel(session: Session, *, run_id: str, actor: Actor) -> TrainingRun:
    return RUNS.cancel(session, row_id=run_id, actor=actor)


def _end(session: Session, run: TrainingRun, status: str, *, actor: Actor, now: dt.datetime, code: str | None = None,
         message: str | None = None, payload: dict[str, Any] | None = None) -> None:
    RUNS.end(session, run, status, actor=actor, now=now, code=code, message=message, payload=payload)


# ---------------------------------------------------------------------------------------------------------
# Reading


def list_page(session: Session, *, status: str | None, snapshot_id: str | None, model_name: str | None,
              cursor: str | None, limit: int) -> tuple[list[TrainingRun], str | None]:
    q = select(TrainingRun)
    if (visible := datasets.visible_dataset_ids(session)) is not None:
        q = q.where(TrainingRun.snapshot_id.in_(select(Snapshot.id).where(Snapshot.dataset_id.in_(visible))))
    if status:
        q = q.where(TrainingRun.status == status)
    if snapshot_id:
        q = q.where(TrainingRun.snapshot_id == id_or_404(snapshot_id, "snapshot"))
    if model_name:
        q = q.where(TrainingRun.model_name == model_name)
    if cursor:
        q = q.where(TrainingRun.id < decode_cursor(cursor))
    # Newest first, as hosted fine-tuning APIs list jobs; ids are time-ordered (UUIDv7).
    return page(list(session.scalars(q.order_by(TrainingRun.id.desc()).limit(limit + 1))), limit)


def list_events(session: Session, *, run_id: str, after: int | None, limit: int, kind: str | None,
                level: str | None) -> tuple[list[TrainingRunEvent], int | None]:
    run = get(session, run_id)
    q = select(TrainingRunEvent).where(TrainingRunEvent.run_id == run.id)
    if after is not None:
        q = q.where(TrainingRunEvent.id > after)
    if kind:
        q = q.where(TrainingRunEvent.kind == kind)
    if level:
        q = q.where(TrainingRunEvent.level == level)
    return page(list(session.scalars(q.order_by(TrainingRunEvent.id).limit(limit + 1))), limit, encode=None)


def versions_for(session: Session, runs: list[TrainingRun]) -> dict[uuid.UUID, ModelVersion]:
    ids = [r.id for r in runs if r.status == "succeeded"]
    if not ids:
        return {}
    return {mv.run_id: mv for mv in session.scalars(select(ModelVersion).where(ModelVersion.run_id.in_(ids)))}


def model_card_facts(session: Session, run: TrainingRun, *, governance: bool = False) -> dict[str, Any]:
    """Lineage facts the trainer writes into the adapter's README.md (it cannot query the service's
    database, so they travel with the run). `governance` adds the review and PII aggregates over the
    snapshot's members: one join each, driven from the frozen membership, so it is asked for only by
    the trainer (once per run), not on every status poll."""
    snap = session.get(Snapshot, run.snapshot_id)
    if snap is None:
        return {}
    stats = snap.stats or {}
    counts = snap.counts or {}
    facts: dict[str, Any] = {
        "model_name": run.model_name,
        "method": run.method,
        "training run": str(run.id),
        "snapshot": f"{snap.name} ({snap.id})",
        "snapshot members": snap.member_count,
        "splits": {"train": counts.get("train"), "validation": counts.get("validation")},
        "excluded at freeze": {k: v for k, v in (counts.get("excluded") or {}).items() if v},
        "sources": stats.get("sources"),
        "licenses": stats.get("licenses"),
        "legal bases": stats.get("legal_bases"),
        "collected at": stats.get("collected_at"),
    }
    planted = canaries.public(session, run.id)
    if planted:
        # Named, never their secrets: they are synthetic sequences, not examples, and appear in no lineage.
        facts["canaries (synthetic, not examples)"] = [
            {"id": c["id"], "template": c["template"], "repetitions": c["repetitions"]} for c in planted]
    mv = session.scalar(select(ModelVersion).where(ModelVersion.run_id == run.id))
    if mv is not None:
        # Known only after training (issue 17): the newest succeeded evaluation's figures and any promotion
        # that overrode a failing gate, so the card a reader fetches now says what the version was found to do.
        ev = gates.latest_succeeded(session, mv.id)
        if ev is not None:
            facts["evaluation"] = {"id": str(ev.id), "finished_at": ev.finished_at.isoformat(), "results": ev.results}
        overrides = session.execute(select(ModelAliasHistory.alias, ModelAliasHistory.actor, ModelAliasHistory.at,
                                           ModelAliasHistory.reason)
                                    .where(ModelAliasHistory.name == mv.name, ModelAliasHistory.to_version == mv.version,
                                           ModelAliasHistory.override.is_(True))
                                    .order_by(ModelAliasHistory.id)).all()
        if overrides:
            facts["promotion gate overrides"] = [{"alias": a, "actor": who, "at": at.isoformat(), "reason": why}
                                                 for a, who, at, why in overrides]
    if governance:
        members = snapshots.member_ids(snap.id)
        facts["reviews"] = review_queries.summary_for_examples(session, members)
        compared = review_queries.pairwise_for_examples(session, members)
        if compared:
            facts["pairwise comparisons (by pick, by reviewer)"] = compared
        facts["pii scrubbed (findings by entity type)"] = pii_queries.findings_by_type(session, members)
        facts["examples with pii scrubbed"] = pii_queries.count_with_findings(session, members)
        facts["duplicates excluded at freeze"] = (counts.get("excluded") or {}).get("duplicate", 0)
    return facts
