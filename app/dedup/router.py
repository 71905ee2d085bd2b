from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.core.auth import Curator, Judge
from app.core.db import SessionDep
from app.core.openapi import errors
from app.datasets import service as datasets
from app.dedup import rebuild as rebuilds
from app.dedup import service
from app.dedup.schemas import ClusterPage, DedupSummary, OverruleIn, RebuildQueued
from app.examples import service as examples
from app.examples.schemas import ExampleOut

router = APIRouter(tags=["dedup"])

# Reviewers see both examples side by side, so they may separate them; keeping an eval overlap is a
# curator's call, checked in the service.


@router.get("/v1/datasets/{dataset_ref}/duplicates", response_model=ClusterPage)
def list_duplicates(
    dataset_ref: str,
    session: SessionDep,
    actor: Judge,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Clusters with their canonical member first; ``members`` excludes the canonical."""
    ds = datasets.get(session, dataset_ref)
    return service.clusters_page(session, dataset_id=ds.id, cursor=cursor, limit=limit)


@router.get("/v1/datasets/{dataset_ref}/dedup", response_model=DedupSummary)
def dedup_summary(dataset_ref: str, session: SessionDep, actor: Judge) -> dict[str, Any]:
    """Effective policy, index layout, counts and the latest rebuild with its progress."""
    return service.dataset_summary(session, datasets.get(session, dataset_ref))


@router.post("/v1/datasets/{dataset_ref}/dedup:rebuild", status_code=202, response_model=RebuildQueued,
             responses=errors(409))
def rebuild(dataset_ref: str, session: SessionDep, actor: Curator) -> dict[str, Any]:
    ds = datasets.get(session, dataset_ref)
    rb = rebuilds.request_rebuild(session, ds=ds, actor=actor)
    return {"rebuild": rebuilds.rebuild_view(rb), "status_url": f"/v1/datasets/{ds.id}/dedup"}


@router.post("/v1/examples/{example_id}/dedup:overrule", response_model=ExampleOut, responses=errors(409))
def overrule(example_id: str, body: OverruleIn, session: SessionDep, actor: Judge) -> dict[str, Any]:
    ex = examples.get(session, example_id)
    return service.overrule(session, example=ex, data=body, actor=actor)
