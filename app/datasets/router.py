from __future__ import annotations

from fastapi import APIRouter

from app.core.auth import Curator, Reader
from app.core.db import SessionDep
from app.core.openapi import errors
from app.datasets import service
from app.datasets.schemas import DatasetCreate, DatasetList, DatasetOut, DatasetUpdate

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _out(session, ds, with_counts: bool = True) -> DatasetOut:
    out = DatasetOut.model_validate(ds, from_attributes=True)
    if with_counts:
        out.counts = service.counts(session, ds.id)
    return out


@router.post("", status_code=201, response_model=DatasetOut, responses=errors(409))
def create_dataset(data: DatasetCreate, session: SessionDep, actor: Curator) -> DatasetOut:
    return _out(session, service.create(session, data=data, actor=actor))


@router.get("", response_model=DatasetList)
def list_datasets(session: SessionDep, actor: Reader) -> dict:
    return {"items": [_out(session, ds, with_counts=False) for ds in service.list_all(session)]}


@router.get("/{dataset_ref}", response_model=DatasetOut)
def get_dataset(dataset_ref: str, session: SessionDep, actor: Reader) -> DatasetOut:
    return _out(session, service.get(session, dataset_ref))


@router.patch("/{dataset_ref}", response_model=DatasetOut)
def update_dataset(dataset_ref: str, data: DatasetUpdate, session: SessionDep, actor: Curator) -> DatasetOut:
    ds = service.get(session, dataset_ref)
    return _out(session, service.update(session, dataset=ds, data=data, actor=actor))
