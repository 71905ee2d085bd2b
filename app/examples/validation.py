"""Validation records (issue 19 scope 3): one row per example saying when its current content was last
validated and by what (PII engine, spaCy model, recognizer set, PII policy, dedup policy). Written set-based,
in the transaction of the step that validated: the pipeline's last stage (through the hook app.wiring
installs), a re-scrub that finds an output unchanged, a revalidation batch.

The reviews are not copied: the record names the validated revision, and its reviews are read beside it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Any

from sqlalchemy import Select, func, literal, select, update
from sqlalchemy.orm import Session, aliased

from app.core.sql import any_of, dialect_insert, in_chunks, is_pg, iso
from app.datasets.policies import DedupPolicyFields
from app.models.dataset import Dataset
from app.models.example import Example
from app.models.pii import PiiScrub
from app.models.review import Review
from app.models.validation import ExampleValidation

COLUMNS = ("example_id", "dataset_id", "revision_id", "validated_at", "via", "pii_engine", "spacy_model",
           "recognizers", "pii_policy_sha256", "dedup_policy_sha256", "revalidation_id")


def dedup_policy_sha(stored: dict | None) -> str:
    """The effective dedup policy's hash (defaults filled in): a default changed in code changes it too."""
    try:
        policy = DedupPolicyFields.model_validate(stored or {})
    except ValueError:
        policy = DedupPolicyFields()  # as the dedup stage does with a bad stored policy
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()


def _upsert(session: Session, query: Select) -> None:
    ins = dialect_insert(session, ExampleValidation.__table__).from_select(list(COLUMNS), query)
    session.execute(ins.on_conflict_do_update(
        index_elements=["example_id"], set_={c: getattr(ins.excluded, c) for c in COLUMNS if c != "example_id"}))


def _by_dataset(session: Session, ids: list[uuid.UUID]) -> dict[uuid.UUID, list[uuid.UUID]]:
    out: dict[uuid.UUID, list[uuid.UUID]] = {}
    pg = is_pg(session)
    for part in in_chunks(ids, pg=pg):
        for eid, did in session.execute(select(Example.id, Example.dataset_id).where(any_of(Example.id, part, pg=pg))):
            out.setdefault(did, []).append(eid)
    return out


def record_pipeline(session: Session, example_ids: list[uuid.UUID], now: dt.datetime) -> None:
    """The pipeline finished on these examples: what validated them is their latest scrub's engine, model,
    recognizer set and policy, and their dataset's dedup policy as it is now."""
    if not example_ids:
        return
    pg = is_pg(session)
    later = aliased(PiiScrub)
    latest = (select(later.id).where(later.example_id == Example.id)
              .order_by(later.created_at.desc()).limit(1).scalar_subquery())
    for dataset_id, ids in _by_dataset(session, list(example_ids)).items():
        sha = dedup_policy_sha(session.scalar(select(Dataset.dedup_policy).where(Dataset.id == dataset_id)))
        for part in in_chunks(ids, pg=pg):
            _upsert(session, select(
                Example.id, Example.dataset_id, Example.current_revision_id, literal(now, ExampleValidation.validated_at.type),
                literal("pipeline"), PiiScrub.engine, PiiScrub.model, PiiScrub.recognizers, PiiScrub.policy_sha256,
                literal(sha), literal(None, ExampleValidation.revalidation_id.type))
                .outerjoin(PiiScrub, PiiScrub.id == latest)
                .where(any_of(Example.id, part, pg=pg)))


def stamp(session: Session, example_ids: list[uuid.UUID], *, now: dt.datetime, via: str,
          versions: dict[str, Any] | None, pii_policy_sha256: str | None, dedup_policy_sha256: str | None = None,
          revalidation_id: uuid.UUID | None = None) -> None:
    """These examples' current content was checked now with these versions (a re-scrub or revalidation that
    found its output unchanged); `last_validated_at` moves with the record. A null dedup hash keeps the
    recorded one (a PII-only check says nothing about dedup)."""
    if not example_ids:
        return
    pg = is_pg(session)
    v = versions or {}
    for part in in_chunks(list(example_ids), pg=pg):
        dedup = (literal(dedup_policy_sha256) if dedup_policy_sha256 is not None else
                 select(ExampleValidation.dedup_policy_sha256).where(ExampleValidation.example_id == Example.id)
                 .scalar_subquery())
        _upsert(session, select(
            Example.id, Example.dataset_id, Example.current_revision_id,
            literal(now, ExampleValidation.validated_at.type), literal(via),
            literal(v.get("pii_engine"), ExampleValidation.pii_engine.type),
            literal(v.get("spacy_model"), ExampleValidation.spacy_model.type),
            literal(v.get("recognizers"), ExampleValidation.recognizers.type),
            literal(pii_policy_sha256, ExampleValidation.pii_policy_sha256.type), dedup,
            literal(revalidation_id, ExampleValidation.revalidation_id.type))
            .where(any_of(Example.id, part, pg=pg)))
        session.execute(update(Example).where(any_of(Example.id, part, pg=pg)).values(last_validated_at=now))


def view_hook(session: Session, ex: Example, out: dict[str, Any], actor: Any) -> None:
    """`GET /v1/examples/{id}` gains `validation`: the record, and the reviews of the validated revision."""
    rec = session.get(ExampleValidation, ex.id)
    if rec is None:
        out["validation"] = None
        return
    decisions = dict(session.execute(select(Review.decision, func.count()).where(Review.revision_id == rec.revision_id)
                                     .group_by(Review.decision)).all()) if rec.revision_id else {}
    out["validation"] = {
        "validated_at": iso(rec.validated_at), "via": rec.via,
        "revision_id": str(rec.revision_id) if rec.revision_id else None,
        "current": rec.revision_id == ex.current_revision_id,
        "pii_engine": rec.pii_engine, "spacy_model": rec.spacy_model, "recognizers": rec.recognizers,
        "pii_policy_sha256": rec.pii_policy_sha256, "dedup_policy_sha256": rec.dedup_policy_sha256,
        "revalidation_id": str(rec.revalidation_id) if rec.revalidation_id else None,
        "reviews": {str(k): int(n) for k, n in decisions.items()},
    }
