from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Curator, RunReader, Trainer
from app.core.db import BIGINT_MAX, INT_MAX, SessionDep
from app.core.errors import NotFound
from app.core.openapi import binary, errors
from app.core.sql import iso
from app.models.training import ModelVersion, TrainingRun, TrainingRunEvent
from app.training import artifacts, canaries, registry, service
from app.training import embedded as _embedded  # noqa: F401 - registers the in-process runner
from app.training.schemas import (
    AliasHistoryPage,
    AliasMove,
    AliasMoved,
    AliasName,
    EventsAccepted,
    EventsIn,
    ModelList,
    ModelName,
    RunComplete,
    RunCreate,
    RunEventPage,
    RunFail,
    RunOut,
    RunPage,
    RunStart,
    VersionOut,
    VersionPage,
    VersionStatusChange,
)

Version = Annotated[int, Path(ge=1, le=INT_MAX)]
ARTIFACT = {200: binary("application/gzip", description="The adapter as a .tar.gz; `X-Artifact-SHA256` is its digest")}
REPLAYED = {200: {"model": RunOut, "description": "The run an earlier call with the same Idempotency-Key created"}}

runs = APIRouter(prefix="/v1/training-runs", tags=["training"])
models = APIRouter(prefix="/v1/models", tags=["models"])

# Trainers read the run they were handed; auditors and curators read everything; reviewers work on
# examples and have no business here.


def run_out(session: Session, run: TrainingRun, mv: ModelVersion | None = None, *, full: bool = True,
            governance: bool = False, secrets: bool = False) -> dict[str, Any]:
    if mv is None and run.status == "succeeded":
        mv = service.versions_for(session, [run]).get(run.id)
    out: dict[str, Any] = {
        "id": str(run.id),
        "status": run.status,
        "snapshot_id": str(run.snapshot_id),
        "expected_manifest_sha256": run.expected_manifest_sha256,
        "base_model": run.base_model,
        "method": run.method,
        "hyperparameters": run.hyperparameters,
        "model_name": run.model_name,
        "metadata": run.meta,
        "error": {"code": run.error_code, "message": run.error_message, "failed_in": run.failed_in}
        if run.status == "failed" else None,
        "metrics": run.metrics or {},
        "model_version": {"name": mv.name, "version": mv.version, "status": mv.status,
                          "artifact_sha256": mv.artifact_sha256} if mv else None,
        "worker_host": run.worker_host,
        "created_by": run.created_by,
        "cancelled_by": run.cancelled_by,
        "created_at": iso(run.created_at),
        "queued_at": iso(run.queued_at),
        "started_at": iso(run.started_at),
        "heartbeat_at": iso(run.heartbeat_at),
        "finished_at": iso(run.finished_at),
        "event_count": run.event_count,
    }
    if full:
        out["model_card"] = service.model_card_facts(session, run, governance=governance)
        # The secrets go to the trainer that plants them, no one else (docs/evaluation.md).
        out["canaries"] = (canaries.with_secrets if secrets else canaries.public)(session, run.id)
    return out


def event_out(e: TrainingRunEvent) -> dict[str, Any]:
    return {"id": e.id, "kind": e.kind, "level": e.level, "message": e.message, "step": e.step, "data": e.data,
            "at": iso(e.at)}


@runs.post("", status_code=201, response_model=RunOut, responses={**REPLAYED, **errors(404, 409)})
def create_run(data: RunCreate, session: SessionDep, actor: Curator, response: Response,
               idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
               ) -> dict[str, Any]:
    """`Idempotency-Key` makes a retry safe: the same key and request answer 200 with the run the
    first call created (no second GPU run); the same key with another request is a 409. A model name
    belongs to the workspace whose run first asked for it: another workspace's is 409 `model_name_taken`."""
    run, created = service.create(session, data=data, actor=actor, idempotency_key=idempotency_key)
    if not created:
        response.status_code = 200
    return run_out(session, run)


@runs.get("", response_model=RunPage, responses=errors(404))
def list_runs(session: SessionDep, actor: RunReader,
              status: Literal["validating", "queued", "running", "succeeded", "failed", "cancelled"] | None = None,
              snapshot: str | None = None, model: str | None = None, cursor: str | None = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    rows, nxt = service.list_page(session, status=status, snapshot_id=snapshot, model_name=model, cursor=cursor,
                                  limit=limit)
    mvs = service.versions_for(session, rows)
    return {"items": [run_out(session, r, mvs.get(r.id), full=False) for r in rows], "next_cursor": nxt}


@runs.get("/{run_id}", response_model=RunOut)
def get_run(run_id: str, session: SessionDep, actor: RunReader, model_card: bool = False) -> dict[str, Any]:
    # The trainer fetches a run once, to train it, and writes the model card from it: it gets the review
    # and PII aggregates without asking; a status poll does not pay for them.
    return run_out(session, service.get(session, run_id), governance=model_card or actor.role == "trainer",
                   secrets=actor.role == "trainer")


@runs.get("/{run_id}/events", response_model=RunEventPage)
def list_events(run_id: str, session: SessionDep, actor: RunReader,
                cursor: Annotated[int | None, Query(ge=0, le=BIGINT_MAX)] = None,
                kind: Literal["log", "metrics"] | None = None, level: Literal["info", "warn", "error"] | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    rows, nxt = service.list_events(session, run_id=run_id, after=cursor, limit=limit, kind=kind, level=level)
    return {"items": [event_out(e) for e in rows], "next_cursor": nxt}


@runs.post("/{run_id}/cancel", response_model=RunOut, responses=errors(409))
def cancel_run(run_id: str, session: SessionDep, actor: Curator) -> dict[str, Any]:
    return run_out(session, service.cancel(session, run_id=run_id, actor=actor))


# The trainer's side of the protocol (trainer/client.py).


@runs.post("/{run_id}/start", response_model=RunOut, responses=errors(409))
def start_run(run_id: str, body: RunStart, session: SessionDep, actor: Trainer) -> dict[str, Any]:
    return run_out(session, service.start(session, run_id=run_id, worker_host=body.worker_host, actor=actor))


@runs.post("/{run_id}/events", response_model=EventsAccepted, responses=errors(409))
def post_events(run_id: str, body: EventsIn, session: SessionDep, actor: Trainer) -> dict[str, Any]:
    return {"accepted": service.add_events(session, run_id=run_id, events=body.events)}


@runs.post("/{run_id}/complete", response_model=RunOut, responses=errors(409))
def complete_run(run_id: str, body: RunComplete, session: SessionDep, actor: Trainer) -> dict[str, Any]:
    run, mv = service.complete(session, run_id=run_id, data=body, actor=actor)
    return run_out(session, run, mv)


@runs.post("/{run_id}/fail", response_model=RunOut, responses=errors(409))
def fail_run(run_id: str, body: RunFail, session: SessionDep, actor: Trainer) -> dict[str, Any]:
    return run_out(session, service.fail(session, run_id=run_id, code=body.code, message=body.message, actor=actor))


# Model registry


def version_out(mv: ModelVersion, aliases: list[str]) -> dict[str, Any]:
    return {"name": mv.name, "version": mv.version, "status": mv.status, "status_reason": mv.status_reason,
            "run_id": str(mv.run_id), "artifact_uri": mv.artifact_uri, "artifact_sha256": mv.artifact_sha256,
            "aliases": aliases, "created_at": iso(mv.created_at), "created_by": mv.created_by}


@models.get("", response_model=ModelList)
def list_models(session: SessionDep, actor: RunReader) -> dict[str, Any]:
    return {"items": [{**m, "created_at": iso(m["created_at"])} for m in registry.list_models(session)]}


@models.get("/{name}/versions", response_model=VersionPage)
def list_versions(name: ModelName, session: SessionDep, actor: RunReader,
                  status: Literal["candidate", "deployed", "retired", "tainted"] | None = None,
                  cursor: Annotated[int | None, Query(ge=1, le=INT_MAX)] = None,
                  limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    rows, nxt = registry.list_versions(session, name, status=status, before=cursor, limit=limit)
    aliases = registry.aliases_by_version(session, name)
    return {"items": [version_out(mv, aliases.get(mv.version, [])) for mv in rows], "next_cursor": nxt}


@models.get("/{name}/versions/{version}", response_model=VersionOut)
def get_version(name: ModelName, version: Version, session: SessionDep, actor: RunReader) -> dict[str, Any]:
    mv = registry.get_version(session, name, version)
    return version_out(mv, registry.aliases_by_version(session, name).get(version, []))


@models.patch("/{name}/versions/{version}", response_model=VersionOut, responses=errors(409))
def change_version_status(name: ModelName, version: Version, body: VersionStatusChange, session: SessionDep,
                          actor: Curator) -> dict[str, Any]:
    mv = registry.set_status(session, name=name, version=version, status=body.status, reason=body.reason,
                             actor=actor)
    return version_out(mv, registry.aliases_by_version(session, name).get(version, []))


@models.get("/{name}/versions/{version}/artifact", response_class=StreamingResponse, responses=ARTIFACT)
def download_artifact(name: ModelName, version: Version, session: SessionDep, actor: RunReader) -> StreamingResponse:
    mv = registry.get_version(session, name, version)
    if not artifacts.exists(mv.artifact_uri):
        raise NotFound(f"the artifact of {name} v{version} is gone from {mv.artifact_uri}", code="artifact_missing")
    # Who took a copy of a model, and of exactly which bytes, belongs in the audit trail.
    audit.record(session, actor=actor.ref, action="model_version.downloaded", entity_type="model_version",
                 entity_id=mv.id, payload={"name": name, "version": version, "artifact_sha256": mv.artifact_sha256})
    return StreamingResponse(artifacts.iter_bytes(mv.artifact_uri), media_type="application/gzip", headers={
        "Content-Disposition": f'attachment; filename="{name}-v{version}.tar.gz"',
        "X-Artifact-SHA256": mv.artifact_sha256,
    })


@models.post("/{name}/aliases/{alias}", response_model=AliasMoved, responses=errors(409))
def move_alias(name: ModelName, alias: AliasName, body: AliasMove, session: SessionDep,
               actor: Curator) -> dict[str, Any]:
    return registry.move_alias(session, name=name, alias=alias, version=body.version, reason=body.reason,
                               actor=actor, override=body.override)


@models.get("/{name}/aliases/{alias}/history", response_model=AliasHistoryPage)
def get_alias_history(name: ModelName, alias: AliasName, session: SessionDep, actor: RunReader,
                      cursor: Annotated[int | None, Query(ge=1, le=BIGINT_MAX)] = None,
                      limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    rows, nxt = registry.alias_history(session, name=name, alias=alias, before=cursor, limit=limit)
    return {"items": [{"from_version": h.from_version, "to_version": h.to_version, "actor": h.actor,
                       "at": iso(h.at), "reason": h.reason, "override": h.override} for h in rows], "next_cursor": nxt}


router = APIRouter()
router.include_router(runs)
router.include_router(models)
