from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from app.core.auth import Actor, Curator, require
from app.core.db import SessionDep
from app.core.openapi import errors
from app.revalidation import service
from app.revalidation.schemas import RevalidationIn, RevalidationOut, RevalidationPage

router = APIRouter(tags=["revalidation"])
# Progress is the curator's and the auditor's business (what was revalidated, what went back to review).
ProgressReader = Annotated[Actor, Depends(require("curator", "auditor"))]


@router.post("/v1/datasets/{dataset_ref}/revalidations", status_code=202, response_model=RevalidationOut,
             responses=errors(404))
def post_revalidation(dataset_ref: str, body: RevalidationIn, session: SessionDep, actor: Curator) -> dict[str, Any]:
    """Queue a background revalidation (queue "pii"); it supersedes the dataset's running one."""
    rv = service.request_api(session, dataset_ref=dataset_ref, actor=actor, triggers=body.triggers, scope=body.scope)
    return service.view(rv)


@router.get("/v1/datasets/{dataset_ref}/revalidations", response_model=RevalidationPage, responses=errors(404))
def list_revalidations(dataset_ref: str, session: SessionDep, actor: ProgressReader,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
    return {"items": [service.view(rv) for rv in service.list_for(session, dataset_ref=dataset_ref, limit=limit)]}


@router.get("/v1/revalidations/{revalidation_id}", response_model=RevalidationOut, responses=errors(404))
def get_revalidation(revalidation_id: str, session: SessionDep, actor: ProgressReader) -> dict[str, Any]:
    """Progress: counts committed with each batch."""
    return service.view(service.get(session, revalidation_id))
