from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Actor, check_workspace, scope_actor, visible_workspaces
from app.core.errors import Conflict, NotFound, ValidationFailed
from app.core.ids import by_id_or_name
from app.datasets.schemas import DatasetCreate, DatasetUpdate, valid_layered
from app.models.dataset import Dataset
from app.models.example import STATUSES, Example


def get(session: Session, ref: str | uuid.UUID) -> Dataset:
    """By id or by name: the CLI and humans use names, the API hands out ids."""
    ds = by_id_or_name(session, Dataset, ref)
    missing = NotFound(f"dataset {ref} not found", details={"dataset": str(ref)})
    if ds is None:
        raise missing
    check_workspace(session, ds.workspace_id, missing)  # another workspace's dataset is not found either
    return ds


def check_dataset_id(session: Session, dataset_id: uuid.UUID, missing: Exception) -> None:
    """For lookups of things that hang off a dataset (examples, batches, snapshots, runs): `missing`
    when the dataset is outside the caller's workspaces. One indexed read by primary key; none outside
    a request (workers and the CLI have no caller to scope, and their loops must not pay for it)."""
    if scope_actor(session) is None:
        return
    ws = session.scalar(select(Dataset.workspace_id).where(Dataset.id == dataset_id))
    if ws is None:
        raise missing
    check_workspace(session, ws, missing)


def visible_dataset_ids(session: Session, roles: tuple[str, ...] | None = None) -> Any:
    """A subquery of the dataset ids the caller may see (holding one of `roles` there, when given), or None
    for all: list queries filter by it."""
    visible = visible_workspaces(session, roles)
    if visible is None:
        return None
    return select(Dataset.id).where(Dataset.workspace_id.in_(visible))


def create(session: Session, *, data: DatasetCreate, actor: Actor) -> Dataset:
    if session.scalar(select(Dataset.id).where(Dataset.name == data.name)):
        raise Conflict(f"a dataset named {data.name!r} already exists", code="name_taken",
                       details={"field": "name"})
    from app.access import workspaces

    ws = workspaces.get(session, data.workspace)
    ds = Dataset(**data.model_dump(exclude={"workspace"}), workspace_id=ws.id, created_by=actor.ref)
    session.add(ds)
    try:
        session.flush()
    except IntegrityError:  # lost a race with a concurrent create of the same name
        raise Conflict(f"a dataset named {data.name!r} already exists", code="name_taken") from None
    audit.record(session, actor=actor.ref, action="dataset.created", entity_type="dataset", entity_id=ds.id,
                 payload={**data.model_dump(exclude={"workspace"}), "workspace_id": str(ws.id)})
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


def list_all(session: Session, *, roles: tuple[str, ...] | None = None) -> list[Dataset]:
    """The datasets of the workspaces the caller may see; with `roles`, only those where it holds one."""
    q = select(Dataset).order_by(Dataset.name)
    visible = visible_workspaces(session, roles)
    if visible is not None:
        q = q.where(Dataset.workspace_id.in_(visible))
    return list(session.scalars(q))


def counts(session: Session, dataset_id: uuid.UUID) -> dict[str, Any]:
    rows = session.execute(
        select(Example.status, func.count()).where(Example.dataset_id == dataset_id).group_by(Example.status)
    )
    out = {s: 0 for s in STATUSES}
    for status, n in rows:
        out[status] = n
    out["total"] = sum(v for k, v in out.items())
    return out
