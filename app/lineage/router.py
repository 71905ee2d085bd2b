from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from app.core.auth import Curator, ErasureReader, Reader
from app.core.db import INT_MAX, SessionDep
from app.core.openapi import errors
from app.lineage import erasure, service
from app.lineage import jobs as lineage_jobs
from app.lineage.schemas import (
    ErasureOut,
    ErasurePage,
    ExampleLineage,
    LicenseLineage,
    ModelLineage,
    ReviewerLineage,
    SourceLineage,
    TrainedExamplePage,
)

lineage_router = APIRouter(prefix="/v1/lineage", tags=["lineage"])
erasure_router = APIRouter(prefix="/v1/erasure-requests", tags=["erasure"])

# Lineage is read by everyone who works with the data; the auditor reads all of it and changes nothing
# (every route here is a GET, and erasure writes need curator or admin).
Limit = Annotated[int, Query(ge=1, le=1000)]
Version = Annotated[int, Path(ge=1, le=INT_MAX)]
ERASURE = {200: {"model": ErasureOut, "description": "Nothing matched (an empty report), or the replay of an "
                                                     "executed request that erased nothing"},
           **errors(409)}


@lineage_router.get("/examples/{example_id}", response_model=ExampleLineage)
def example_lineage(example_id: str, session: SessionDep, actor: Reader, include_audit: bool = False,
                    content: bool = True) -> dict[str, Any]:
    return service.example_lineage(session, example_id=example_id, actor=actor, include_audit=include_audit,
                                   include_content=content)


@lineage_router.get("/models/{name}/versions/{version}", response_model=ModelLineage)
def model_lineage(name: str, version: Version, session: SessionDep, actor: Reader) -> dict[str, Any]:
    return service.model_lineage(session, name=name, version=version)


@lineage_router.get("/models/{name}/versions/{version}/examples", response_model=TrainedExamplePage)
def model_examples(name: str, version: Version, session: SessionDep, actor: Reader, source: str | None = None,
                   license: str | None = None, reviewer: str | None = None, tag: str | None = None,
                   cursor: str | None = None, limit: Limit = 50) -> dict[str, Any]:
    items, nxt = service.model_examples(session, name=name, version=version, source=source, license=license,
                                        reviewer=reviewer, tag=tag, cursor=cursor, limit=limit, actor=actor)
    return {"items": items, "next_cursor": nxt}


@lineage_router.get("/sources/{source:path}", response_model=SourceLineage)
def by_source(source: str, session: SessionDep, actor: Reader, cursor: str | None = None,
              limit: Limit = 50) -> dict[str, Any]:
    return service.by_source(session, source=source, cursor=cursor, limit=limit, actor=actor)


@lineage_router.get("/licenses/{license:path}", response_model=LicenseLineage)
def by_license(license: str, session: SessionDep, actor: Reader, cursor: str | None = None,
               limit: Limit = 50) -> dict[str, Any]:
    return service.by_license(session, license=license, cursor=cursor, limit=limit, actor=actor)


@lineage_router.get("/reviewers/{reviewer:path}", response_model=ReviewerLineage)
def by_reviewer(reviewer: str, session: SessionDep, actor: Reader, decision: str | None = None,
                cursor: str | None = None, limit: Limit = 50) -> dict[str, Any]:
    return service.by_reviewer(session, reviewer=reviewer, decision=decision, cursor=cursor, limit=limit,
                               actor=actor)


@erasure_router.post("", status_code=201, response_model=ErasureOut, responses=ERASURE)
def create_erasure(data: erasure.ErasureCreate, session: SessionDep, actor: Curator,
                   response: Response) -> dict[str, Any]:
    body, response.status_code = lineage_jobs.create_erasure(session, data=data, actor=actor)
    if body["replayed"]:
        response.headers["Idempotent-Replayed"] = "true"
    return body


@erasure_router.get("", response_model=ErasurePage)
def list_erasures(session: SessionDep, actor: ErasureReader, cursor: str | None = None,
                  limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    items, nxt = erasure.list_page(session, cursor=cursor, limit=limit)
    return {"items": items, "next_cursor": nxt}


@erasure_router.get("/{request_id}", response_model=ErasureOut)
def get_erasure(request_id: str, session: SessionDep, actor: ErasureReader) -> dict[str, Any]:
    return erasure.get(session, request_id)


# One router for app.main to include.
router = APIRouter()
router.include_router(lineage_router)
router.include_router(erasure_router)
