"""Per model version counts of what it was trained on (source, license, legal basis), computed once.

A version's lineage never changes after its run succeeds (erasure tombstones examples but keeps their
provenance), so the counts are written right after the run's commit, from its `training_run.succeeded`
audit event, with one INSERT ... SELECT over its lineage rows. Readers use them where a version has
them (the '*' marker row) and fall back to the lineage rows where it has not (a version registered
while this process was down, or before this table existed): a missing count costs speed, never a
wrong answer.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    cast,
    delete,
    func,
    literal,
    literal_column,
    null,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from app.core.sql import any_of, is_pg
from app.lineage import training as tr
from app.models.example import Example
from app.models.lineage import ModelVersionFacet

log = logging.getLogger(__name__)

FACETS = {"source": Example.source, "license": Example.license, "legal_basis": Example.legal_basis}
MARKER = "*"


def refresh(session: Session, mv_ids: list[uuid.UUID]) -> int:
    """(Re)count these versions' facets; returns the rows written."""
    if not mv_ids:
        return 0
    ln = tr.lineage
    t = ModelVersionFacet.__table__
    session.execute(delete(t).where(any_of(t.c.model_version_id, mv_ids, pg=is_pg(session))))
    parts = []
    for name, col in FACETS.items():
        # A literal, not a parameter: PostgreSQL matches the GROUP BY expression to the selected one
        # by text, and two parameters are two expressions.
        value = func.coalesce(col, literal_column("''"))
        parts.append(select(ln.c.model_version_id, literal(name), value, func.count(),
                            func.coalesce(func.sum(ln.c.tokens), 0))
                     .join(Example, Example.id == ln.c.example_id)
                     .where(any_of(ln.c.model_version_id, mv_ids, pg=is_pg(session)))
                     .group_by(ln.c.model_version_id, value))
    parts.append(select(ln.c.model_version_id, literal(MARKER), literal(""), func.count(),
                        func.coalesce(func.sum(ln.c.tokens), 0))
                 .where(any_of(ln.c.model_version_id, mv_ids, pg=is_pg(session))).group_by(ln.c.model_version_id))
    res = session.execute(t.insert().from_select(["model_version_id", "facet", "value", "examples", "tokens"],
                                                 union_all(*parts)))
    return res.rowcount or 0


def versions_with(session: Session, facet: str, value: str | None) -> dict[uuid.UUID, int]:
    """{model_version_id: examples} of every version trained on examples whose `facet` is `value`."""
    t = ModelVersionFacet.__table__
    col = FACETS[facet]
    mv, ln = tr.model_versions, tr.lineage
    # One statement: the counted versions that have the value, and the versions not counted at all.
    hits = select(t.c.model_version_id, t.c.examples).where(t.c.facet == facet, t.c.value == (value or ""))
    uncounted = select(mv.c.id, cast(null(), Integer)).where(~select(t.c.model_version_id).where(
        t.c.model_version_id == mv.c.id, t.c.facet == MARKER).exists())
    found: dict[uuid.UUID, int] = {}
    missing: list[uuid.UUID] = []
    for mv_id, n in session.execute(union_all(hits, uncounted)):
        if n is None:
            missing.append(mv_id)
        else:
            found[mv_id] = n
    if missing:
        cond: ColumnElement[bool] = col.is_(None) if value is None else col == value
        found.update(dict(session.execute(
            select(ln.c.model_version_id, func.count()).join(Example, Example.id == ln.c.example_id)
            .where(any_of(ln.c.model_version_id, missing, pg=is_pg(session)), cond).group_by(ln.c.model_version_id)).all()))
    return found


def on_audit(events: list[dict[str, Any]]) -> None:
    runs = [ev["entity_id"] for ev in events if ev["action"] == "training_run.succeeded" and ev.get("entity_id")]
    if not runs:
        return
    from app.core.db import session_scope

    try:
        with session_scope() as s:
            mv = tr.model_versions
            ids = list(s.scalars(select(mv.c.id).where(mv.c.run_id.in_([uuid.UUID(r) for r in runs]))))
            refresh(s, ids)
    except Exception:  # readers fall back to the lineage rows for a version without counts
        log.exception("could not count the facets of runs %s", runs)

