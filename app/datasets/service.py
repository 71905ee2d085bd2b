from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Actor
from app.core.errors import Conflict, NotFound, ValidationFailed
from app.datasets.schemas import DatasetCreate, DatasetUpdate, valid_layered
from app.models.dataset import Dataset
from app.models.example import STATUSES, Example


def get(session: Session, ref: str | uuid.UUID) -> Dataset:
    """By id or by name: the CLI and humans use names, the API hands out ids."""
    ds = None
    try:
        ds = session.get(Dataset, uuid.UUID(str(ref)))
    except ValueError:
        ds = session.scalar(select(Dataset).where(Dataset.name == str(ref)))
    if ds is None:
        raise NotFound(f"dataset {ref} not found", details={"dataset": str(ref)})
    return ds


def create(session: Session, *, data: DatasetCreate, actor: Actor) -> Dataset:
    if session.scalar(select(Dataset.id).where(Dataset.name == data.name)):
        raise Conflict(f"a dataset named {data.name!r} already exists", code="name_taken",
                       details={"field": "name"})
    ds = Dataset(**data.model_dump(), created_by=actor.ref)
    session.add(ds)
    try:
        session.flush()
    except IntegrityError:  # lost a race with a concurrent create of the same name
        raise Conflict(f"a dataset named {data.name!r} already exists", code="name_taken") from None
    audit.record(session, actor=actor.ref, action="dataset.created", entity_type="dataset", entity_id=ds.id,
                 payload=data.model_dump())
    return ds


def update(session: Session, *, dataset: Dataset, data: DatasetUpdate, actor: Actor) -> Dataset:
    changes = data.model_dump(exclude_unset=True, exclude_none=True)
    if "pii_policy" in changes:
        _check_layered(dataset.pii_profile, changes["pii_policy"])
    if "review_policy" in changes:  # a PATCH names the knobs it changes; the others keep their values
        changes["review_policy"] = {**dataset.review_policy, **changes["review_policy"]}
    for k, v in changes.items():
        setattr(dataset, k, v)
    session.flush()
    audit.record(session, actor=actor.ref, action="dataset.updated", entity_type="dataset",
                 entity_id=dataset.id, payload=changes)
    return dataset


def _check_layered(profile: str, policy: dict) -> None:
    try:
        valid_layered(profile, policy)
    except ValueError as exc:
        raise ValidationFailed("pii_policy does not fit pii_profile", details=[
            {"field": "pii_policy", "code": "invalid", "message": str(exc)}]) from None


def list_all(session: Session) -> list[Dataset]:
    return list(session.scalars(select(Dataset).order_by(Dataset.name)))


def counts(session: Session, dataset_id: uuid.UUID) -> dict[str, Any]:
    rows = session.execute(
        select(Example.status, func.count()).where(Example.dataset_id == dataset_id).group_by(Example.status)
    )
    out = {s: 0 for s in STATUSES}
    for status, n in rows:
        out[status] = n
    out["total"] = sum(v for k, v in out.items())
    return out
