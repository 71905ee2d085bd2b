"""The model registry: versions counting up per name, aliases that point at versions, and the history
of every alias move (MLflow keeps none: mlflow issue 2169).

A version's status follows its aliases: `candidate` until an alias points at it, `deployed` while one
does, `retired` once the last one moves away. `tainted` (set when a trained example turns out to be
bad: the lineage issue) is sticky, and a tainted version cannot be promoted.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Actor, check_workspace, scope_actor, visible_workspaces
from app.core.errors import Conflict, Forbidden, NotFound
from app.core.pagination import page
from app.core.sql import insert_ignore, is_pg
from app.datasets import service as datasets
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.snapshot import Snapshot
from app.models.training import ModelAlias, ModelAliasHistory, ModelVersion, RegisteredModel, TrainingRun
from app.training import gates


def run_workspace(session: Session, snapshot_id: uuid.UUID) -> uuid.UUID:
    """The workspace a run trains for: its snapshot's dataset's."""
    return session.scalar(select(Dataset.workspace_id).join(Snapshot, Snapshot.dataset_id == Dataset.id)
                          .where(Snapshot.id == snapshot_id))


def reserve(session: Session, *, name: str, workspace_id: uuid.UUID) -> None:
    """The name for `workspace_id`, or 409 `model_name_taken` when another workspace holds it. Written when
    a run is created (not when it succeeds), so two workspaces' runs under a new name cannot both train
    and race for it at registration; the row's key decides which one asked first.

    The refusal says the name is in use somewhere, and nothing about where or what: that much an
    installation-wide namespace cannot hide (a name per workspace would hide it, at the price of
    `/v1/models/{name}` no longer naming one model for an admin or a member of two workspaces)."""
    insert_ignore(session, RegisteredModel.__table__,
                  [{"name": name, "latest_version": 0, "workspace_id": workspace_id, "created_at": utcnow()}],
                  index_elements=["name"])
    owner = session.scalar(select(RegisteredModel.workspace_id).where(RegisteredModel.name == name))
    if owner != workspace_id:
        raise Conflict(f"model name {name!r} is taken; choose another", code="model_name_taken",
                       details={"field": "model_name", "model_name": name})


def register(session: Session, *, name: str, run: TrainingRun, artifact_uri: str, artifact_sha256: str,
             actor: Actor) -> ModelVersion:
    # Normally reserved at the run's creation; a run created before names had workspaces reserves it now.
    reserve(session, name=name, workspace_id=run_workspace(session, run.snapshot_id))
    # The UPDATE's row lock is held to commit: two runs finishing under one name get n and n+1.
    version = session.execute(
        update(RegisteredModel).where(RegisteredModel.name == name)
        .values(latest_version=RegisteredModel.latest_version + 1).returning(RegisteredModel.latest_version)
    ).scalar_one()
    mv = ModelVersion(name=name, version=version, run_id=run.id, artifact_uri=artifact_uri,
                      artifact_sha256=artifact_sha256, status="candidate", created_by=actor.ref)
    session.add(mv)
    session.flush()
    audit.record(session, actor=actor.ref, action="model_version.registered", entity_type="model_version",
                 entity_id=mv.id, payload={"name": name, "version": version, "run_id": str(run.id),
                                           "artifact_uri": artifact_uri, "artifact_sha256": artifact_sha256})
    return mv


# Workspaces: a model version belongs to its run's dataset's workspace, a registered model (a name, and
# what hangs off it: aliases, their history, the policy) to the workspace that reserved it. Names are one
# namespace for the installation. A name from before priv06 whose versions span workspaces: each version
# stays visible by itself where its run is, the name-wide operations are its owner's only.
def visible_run_ids(session: Session) -> Any:
    """Subquery of the run ids the caller may see, or None for all."""
    visible = datasets.visible_dataset_ids(session)
    if visible is None:
        return None
    return (select(TrainingRun.id).join(Snapshot, Snapshot.id == TrainingRun.snapshot_id)
            .where(Snapshot.dataset_id.in_(visible)))


def check_version_visible(session: Session, mv: ModelVersion, missing: Exception) -> None:
    if datasets.visible_dataset_ids(session) is None:
        return
    ds_id = session.scalar(select(Snapshot.dataset_id).join(TrainingRun, TrainingRun.snapshot_id == Snapshot.id)
                           .where(TrainingRun.id == mv.run_id))
    if ds_id is None:
        raise missing
    datasets.check_dataset_id(session, ds_id, missing)


def get_version(session: Session, name: str, version: int, *, lock: bool = False) -> ModelVersion:
    q = select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    if lock:
        q = q.with_for_update()
    mv = session.scalar(q)
    missing = NotFound(f"model {name} has no version {version}", details={"model": name, "version": version})
    if mv is None:
        raise missing
    check_version_visible(session, mv, missing)
    return mv


def _require_model(session: Session, name: str, *, lock: bool = False) -> RegisteredModel:
    q = select(RegisteredModel).where(RegisteredModel.name == name)
    if lock:
        q = q.with_for_update()
    m = session.scalar(q)
    missing = NotFound(f"model {name} not found", details={"model": name})
    if m is None or not m.latest_version:  # a name reserved by a run that has not succeeded yet
        raise missing
    if scope_actor(session) is not None:
        check_workspace(session, m.workspace_id, missing)
    return m


def aliases_by_version(session: Session, name: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for alias, version in session.execute(select(ModelAlias.alias, ModelAlias.version)
                                          .where(ModelAlias.name == name).order_by(ModelAlias.alias)):
        out.setdefault(version, []).append(alias)
    return out


def list_models(session: Session) -> list[dict[str, Any]]:
    q = select(RegisteredModel.name, RegisteredModel.latest_version, RegisteredModel.created_at).where(
        RegisteredModel.latest_version > 0)
    if (ws := visible_workspaces(session)) is not None:
        q = q.where(RegisteredModel.workspace_id.in_(ws))
    rows = session.execute(q.order_by(RegisteredModel.name)).all()
    aliases: dict[str, dict[str, int]] = {}
    for name, alias, version in session.execute(select(ModelAlias.name, ModelAlias.alias, ModelAlias.version)
                                                .where(ModelAlias.name.in_([r.name for r in rows]))):
        aliases.setdefault(name, {})[alias] = version
    return [{"name": n, "latest_version": v, "created_at": c, "aliases": aliases.get(n, {})} for n, v, c in rows]


def list_versions(session: Session, name: str, *, status: str | None = None, before: int | None = None,
                  limit: int | None = None) -> tuple[list[ModelVersion], int | None]:
    """Newest first; the cursor is the last version number returned (versions only grow, so a page
    never shifts when a run registers meanwhile)."""
    _require_model(session, name)
    q = select(ModelVersion).where(ModelVersion.name == name)
    if (runs := visible_run_ids(session)) is not None:
        q = q.where(ModelVersion.run_id.in_(runs))
    if status:
        q = q.where(ModelVersion.status == status)
    if before is not None:
        q = q.where(ModelVersion.version < before)
    q = q.order_by(ModelVersion.version.desc())
    if limit is None:
        return list(session.scalars(q)), None
    return page(list(session.scalars(q.limit(limit + 1))), limit, lambda mv: mv.version, encode=None)


def move_alias(session: Session, *, name: str, alias: str, version: int, reason: str | None,
               actor: Actor, override: bool = False) -> dict[str, Any]:
    """Promote, or roll back (the same call with an earlier version). The model row is locked first, so
    concurrent moves of any alias of one model apply one after the other and the history has no gaps.

    An alias the model's policy guards needs the version's gates met (app/training/gates.py), or an
    admin's override with a reason."""
    if not is_pg(session):
        # SQLite has no row locks: a write first takes its database lock, so a concurrent move waits here
        # instead of both reading "no alias yet" and the second failing on the alias's key.
        session.execute(update(RegisteredModel).where(RegisteredModel.name == name)
                        .values(latest_version=RegisteredModel.latest_version))
    _require_model(session, name, lock=True)
    target = get_version(session, name, version, lock=True)
    if target.status == "tainted":
        raise Conflict(f"{name} v{version} is tainted and cannot be promoted", code="tainted",
                       details={"model": name, "version": version, "reason": target.status_reason})
    if override and (actor.role != "admin" or not reason):
        raise Forbidden("only an admin may override promotion gates, and only with a reason", code="override_refused")
    failed = gates.failures(session, name=name, alias=alias, mv_id=target.id)
    if failed and not override:
        raise Conflict(f"{name} v{version} fails the gates of alias {alias}: "
                       + ", ".join(f"{f['metric']}={f['value']} ({f['op']} {f['limit']})" for f in failed),
                       code="gate_failed", details=failed)
    override = bool(override and failed)
    current = session.scalar(select(ModelAlias).where(ModelAlias.name == name, ModelAlias.alias == alias)
                             .with_for_update())
    from_version = current.version if current else None
    if from_version == version:
        return {"name": name, "alias": alias, "version": version, "from_version": from_version, "changed": False}
    now = utcnow()
    if current is None:
        session.add(ModelAlias(name=name, alias=alias, version=version, model_version_id=target.id, updated_at=now,
                               updated_by=actor.ref))
    else:
        current.version, current.model_version_id = version, target.id
        current.updated_at, current.updated_by = now, actor.ref
    session.execute(insert(ModelAliasHistory), [{"name": name, "alias": alias, "from_version": from_version,
                                                 "to_version": version, "actor": actor.ref, "at": now,
                                                 "reason": reason, "override": override}])
    session.flush()
    target.status = "deployed"
    if from_version is not None:
        still = session.scalar(select(func.count()).select_from(ModelAlias)
                               .where(ModelAlias.name == name, ModelAlias.version == from_version))
        old = get_version(session, name, from_version)
        if not still and old.status == "deployed":
            old.status = "retired"
    audit.record(session, actor=actor.ref, action="model_alias.moved", entity_type="model_version",
                 entity_id=target.id, payload={"name": name, "alias": alias, "from_version": from_version,
                                               "to_version": version, "reason": reason, "override": override})
    if override:
        audit.record(session, actor=actor.ref, action="model_alias.override", entity_type="model_version",
                     entity_id=target.id, payload={"name": name, "alias": alias, "version": version,
                                                   "reason": reason, "failed_gates": failed})
    return {"name": name, "alias": alias, "version": version, "from_version": from_version, "changed": True,
            "override": override}


def alias_history(session: Session, *, name: str, alias: str, before: int | None,
                  limit: int) -> tuple[list[ModelAliasHistory], int | None]:
    _require_model(session, name)
    q = select(ModelAliasHistory).where(ModelAliasHistory.name == name, ModelAliasHistory.alias == alias)
    if before is not None:
        q = q.where(ModelAliasHistory.id < before)
    return page(list(session.scalars(q.order_by(ModelAliasHistory.id.desc()).limit(limit + 1))), limit,
                encode=None)


def set_status(session: Session, *, name: str, version: int, status: str, reason: str | None,
               actor: Actor) -> ModelVersion:
    """Retire or taint a version by hand (the lineage issue taints automatically through this)."""
    mv = get_version(session, name, version, lock=True)
    if mv.status == "tainted" and status != "tainted":
        raise Conflict(f"{name} v{version} is tainted; a tainted version stays tainted", code="tainted")
    if status in ("tainted", "retired", "candidate"):
        holding = session.scalars(select(ModelAlias.alias).where(ModelAlias.name == name,
                                                                 ModelAlias.version == version)).all()
        if holding and status != "tainted":
            raise Conflict(f"{name} v{version} is served by alias(es) {', '.join(holding)}; move them first",
                           code="aliased", details={"aliases": list(holding)})
    previous = mv.status
    mv.status, mv.status_reason = status, reason
    audit.record(session, actor=actor.ref, action="model_version.status_changed", entity_type="model_version",
                 entity_id=mv.id, payload={"name": name, "version": version, "from": previous, "to": status,
                                           "reason": reason})
    return mv


def version_by_id(session: Session, mv_id: uuid.UUID) -> ModelVersion | None:
    return session.get(ModelVersion, mv_id)
