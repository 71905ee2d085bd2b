"""The evaluation and model-policy APIs (docs/evaluation.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from app.core.auth import Curator, RunReader, Trainer
from app.core.db import BIGINT_MAX, INT_MAX, SessionDep
from app.core.errors import NotFound
from app.core.openapi import binary, errors
from app.core.sql import iso
from app.evaluations import files, service
from app.evaluations.schemas import (
    EvalComplete,
    EvalEventPage,
    EvalEvents,
    EvalEventsAccepted,
    EvalFail,
    EvalStart,
    EvaluationCreate,
    EvaluationOut,
    EvaluationPage,
    EvaluationSpec,
    ModelPolicyIn,
    ModelPolicyOut,
)
from app.models.training import Evaluation, EvaluationEvent, ModelVersion
from app.training import artifacts
from app.training.schemas import ModelName

Version = Annotated[int, Path(ge=1, le=INT_MAX)]
# A file of the wire protocol: JSON lines (train, validation, eval sets, probes) or the adapter.
FILES = {200: binary("application/x-ndjson", "application/gzip",
                     description="JSON lines; `adapter` is the .tar.gz (`X-Artifact-SHA256`)"), **errors(409)}

evaluations = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])
models = APIRouter(prefix="/v1/models", tags=["evaluations"])


def evaluation_out(session: Session, ev: Evaluation, mv: ModelVersion | None = None) -> dict[str, Any]:
    mv = mv or service.version_of(session, ev)
    return {
        "id": str(ev.id),
        "status": ev.status,
        "model": {"name": mv.name, "version": mv.version},
        "suites": ev.suites,
        "eval_sets": ev.eval_sets,
        "reference": ev.reference,
        "params": ev.params,
        # Shown only once succeeded: a failed or cancelled evaluation's figures never read as passing.
        "results": ev.results if ev.status == "succeeded" else {},
        "error": {"code": ev.error_code, "message": ev.error_message, "failed_in": ev.failed_in}
        if ev.status == "failed" else None,
        "worker_host": ev.worker_host,
        "created_by": ev.created_by,
        "cancelled_by": ev.cancelled_by,
        "created_at": iso(ev.created_at),
        "queued_at": iso(ev.queued_at),
        "started_at": iso(ev.started_at),
        "heartbeat_at": iso(ev.heartbeat_at),
        "finished_at": iso(ev.finished_at),
        "event_count": ev.event_count,
    }


@models.post("/{name}/versions/{version}/evaluations", status_code=202, response_model=EvaluationOut,
             responses=errors(409))
def create_evaluation(name: ModelName, version: Version, data: EvaluationCreate, session: SessionDep,
                      actor: Curator) -> dict[str, Any]:
    ev = service.create(session, name=name, version=version, data=data, actor=actor)
    return evaluation_out(session, ev)


@models.get("/{name}/versions/{version}/evaluations", response_model=EvaluationPage)
def list_evaluations(name: ModelName, version: Version, session: SessionDep, actor: RunReader,
                     cursor: str | None = None, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    rows, nxt = service.list_for_version(session, name=name, version=version, cursor=cursor, limit=limit)
    return {"items": [evaluation_out(session, ev) for ev in rows], "next_cursor": nxt}


@models.put("/{name}/policy", response_model=ModelPolicyOut)
def put_policy(name: ModelName, body: ModelPolicyIn, session: SessionDep, actor: Curator) -> dict[str, Any]:
    return service.put_policy(session, name=name, data=body, actor=actor)


@models.get("/{name}/policy", response_model=ModelPolicyOut)
def get_policy(name: ModelName, session: SessionDep, actor: RunReader) -> dict[str, Any]:
    return service.get_policy(session, name)


@evaluations.get("/{evaluation_id}", response_model=EvaluationOut)
def get_evaluation(evaluation_id: str, session: SessionDep, actor: RunReader) -> dict[str, Any]:
    return evaluation_out(session, service.get(session, evaluation_id))


def event_out(e: EvaluationEvent) -> dict[str, Any]:
    return {"id": e.id, "kind": e.kind, "level": e.level, "message": e.message, "step": e.step, "data": e.data,
            "at": iso(e.at)}


@evaluations.get("/{evaluation_id}/events", response_model=EvalEventPage)
def list_events(evaluation_id: str, session: SessionDep, actor: RunReader,
                cursor: Annotated[int | None, Query(ge=0, le=BIGINT_MAX)] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    rows, nxt = service.list_events(session, evaluation_id=evaluation_id, after=cursor, limit=limit)
    return {"items": [event_out(e) for e in rows], "next_cursor": nxt}


@evaluations.post("/{evaluation_id}/cancel", response_model=EvaluationOut, responses=errors(409))
def cancel_evaluation(evaluation_id: str, session: SessionDep, actor: Curator) -> dict[str, Any]:
    return evaluation_out(session, service.cancel(session, evaluation_id=evaluation_id, actor=actor))


# The trainer's side (docs/evaluation.md, "The wire protocol").


@evaluations.post("/{evaluation_id}/start", response_model=EvaluationOut, responses=errors(409))
def start_evaluation(evaluation_id: str, body: EvalStart, session: SessionDep, actor: Trainer) -> dict[str, Any]:
    return evaluation_out(session, service.start(session, evaluation_id=evaluation_id,
                                                 worker_host=body.worker_host, actor=actor))


@evaluations.get("/{evaluation_id}/spec", response_model=EvaluationSpec, responses=errors(409))
def get_spec(evaluation_id: str, session: SessionDep, actor: Trainer) -> dict[str, Any]:
    return files.spec(session, service.require_running(session, evaluation_id))


@evaluations.get("/{evaluation_id}/files/{name:path}", response_class=StreamingResponse, responses=FILES)
def get_file(evaluation_id: str, name: str, session: SessionDep, actor: Trainer) -> StreamingResponse:
    ev = service.require_running(session, evaluation_id)
    if name == "adapter":
        mv = service.version_of(session, ev)
        if not artifacts.exists(mv.artifact_uri):
            raise NotFound(f"the artifact of {mv.name} v{mv.version} is gone", code="artifact_missing")
        return StreamingResponse(artifacts.iter_bytes(mv.artifact_uri), media_type="application/gzip",
                                 headers={"X-Artifact-SHA256": mv.artifact_sha256})
    # Built before the response starts: the request's session is closed by the time a body streams.
    body = list(files.lines(session, ev, name))
    return StreamingResponse(iter(body), media_type="application/x-ndjson")


@evaluations.post("/{evaluation_id}/events", response_model=EvalEventsAccepted, responses=errors(409))
def post_events(evaluation_id: str, body: EvalEvents, session: SessionDep, actor: Trainer) -> dict[str, Any]:
    return {"accepted": service.add_events(session, evaluation_id=evaluation_id, events=body.events)}


@evaluations.post("/{evaluation_id}/complete", response_model=EvaluationOut, responses=errors(409))
def complete_evaluation(evaluation_id: str, body: EvalComplete, session: SessionDep,
                        actor: Trainer) -> dict[str, Any]:
    return evaluation_out(session, service.complete(session, evaluation_id=evaluation_id, data=body, actor=actor))


@evaluations.post("/{evaluation_id}/fail", response_model=EvaluationOut, responses=errors(409))
def fail_evaluation(evaluation_id: str, body: EvalFail, session: SessionDep, actor: Trainer) -> dict[str, Any]:
    return evaluation_out(session, service.fail(session, evaluation_id=evaluation_id, code=body.code,
                                                message=body.message, actor=actor))


router = APIRouter()
router.include_router(evaluations)
router.include_router(models)
