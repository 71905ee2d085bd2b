"""What the dedup modules share: the examples' text as dedup reads it, the per-dataset state row and its
lock, the dataset's policy, stored signatures and pairs (verified, inserted, replaced).

The text dedup reads is the comparison view of the current revision: its trainable text with each scrubbed
span replaced by a keyed hash of the value it replaced (the view function app.wiring installs, PII's
``dedup_views``), so "capital of <LOCATION>" stays "capital of France" vs "capital of Japan" in effect,
without dedup ever holding either word. Revisions without such spans are read as they are.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.core.errors import NotWired
from app.core.sql import any_of, in_chunks, insert_ignore, is_pg
from app.dedup.cluster import METHOD_EXACT, METHOD_MINHASH, verify_exact
from app.dedup.minhash import MinHashSpec, Signatures, shingle_sets, to_bytes
from app.dedup.schemas import DedupPolicy, parse_policy
from app.examples.formats import trainable_text
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.dedup import DedupPair, DedupSignature, DedupState
from app.models.example import Example, ExampleRevision

log = logging.getLogger(__name__)

# Links this stage writes (and rewrites when clusters change); ingest's exact links are never touched.
LINK_AUTHOR = "system:dedup"

# (session, {revision id: content}) -> {revision id: comparison content}, for the revisions that have one.
ViewFn = Callable[[Session, Mapping[uuid.UUID, Any]], Mapping[uuid.UUID, Any]]
_view: list[ViewFn] = []


def install_view(fn: ViewFn) -> None:
    _view[:] = [fn]


def installed_view() -> ViewFn | None:
    return _view[0] if _view else None


def _view_fn() -> ViewFn:
    if not _view:
        raise NotWired("dedup has no comparison view: the entry point must call app.wiring.wire() first")
    return _view[0]


def policy_of(ds: Dataset) -> DedupPolicy:
    try:
        return parse_policy(ds.dedup_policy)
    except Exception:  # noqa: BLE001 - a bad stored policy must not wedge the pipeline; the API refuses new bad ones
        log.warning("dataset %s has an invalid dedup_policy; using the defaults", ds.id)
        return DedupPolicy()


@dataclass
class Doc:
    id: uuid.UUID
    dataset_id: uuid.UUID
    status: str
    stage: str | None
    created_at: Any
    updated_at: Any
    revision_id: uuid.UUID | None
    content_sha256: str | None
    text: str


def load_docs(session: Session, ids: Iterable[uuid.UUID], dataset_id: uuid.UUID | None = None) -> dict[uuid.UUID, Doc]:
    pg = is_pg(session)
    view = _view_fn()
    out: dict[uuid.UUID, Doc] = {}
    for chunk in in_chunks(ids, pg=pg):
        q = (
            select(
                Example.id, Example.dataset_id, Example.status, Example.stage, Example.created_at,
                Example.updated_at, ExampleRevision.id.label("rid"), ExampleRevision.content,
                ExampleRevision.content_sha256, Dataset.format,
            )
            .join(ExampleRevision, ExampleRevision.id == Example.current_revision_id)
            .join(Dataset, Dataset.id == Example.dataset_id)
            .where(any_of(Example.id, chunk, pg=pg), Example.status != "erased")
        )
        # The dataset is checked here, not in SQL: with it in the WHERE clause PostgreSQL chose the
        # (dataset_id, status, id) index and read the whole dataset (65 ms a batch at 20k examples).
        rows = [r for r in session.execute(q) if dataset_id is None or r.dataset_id == dataset_id]
        views = view(session, {r.rid: r.content for r in rows}) if rows else {}
        for r in rows:
            out[r.id] = Doc(r.id, r.dataset_id, r.status, r.stage, r.created_at, r.updated_at, r.rid,
                            r.content_sha256, trainable_text(r.format, views.get(r.rid, r.content)))
    return out


def same_content(a: Doc, b: Doc) -> bool:
    """An exact duplicate: the same stored content and the same comparison text (two scrubbed revisions
    can be equal while the values they replaced differ; then they are not copies)."""
    return a.content_sha256 == b.content_sha256 and a.text == b.text


def ensure_state(session: Session, dataset_id: uuid.UUID) -> DedupState:
    insert_ignore(session, DedupState.__table__,
                   [{"dataset_id": dataset_id, "generation": 1, "rebuild": {}, "updated_at": utcnow()}])
    return session.scalar(
        select(DedupState).where(DedupState.dataset_id == dataset_id).execution_options(populate_existing=True)
    )


def lock_state(session: Session, dataset_id: uuid.UUID) -> DedupState:
    """Serialise clustering per dataset. PostgreSQL: the row lock. SQLite: any write takes the database
    write lock for the rest of the transaction, so touch the row first and read after."""
    ensure_state(session, dataset_id)
    q = select(DedupState).where(DedupState.dataset_id == dataset_id).execution_options(populate_existing=True)
    if is_pg(session):
        return session.scalar(q.with_for_update())
    session.execute(update(DedupState).where(DedupState.dataset_id == dataset_id).values(updated_at=utcnow()))
    return session.scalar(q)


def store_signatures(session: Session, dataset_id: uuid.UUID, batch: list[Doc], sigs: Signatures,
                     spec: MinHashSpec) -> None:
    pg = is_pg(session)
    ids = [d.id for d in batch]
    for chunk in in_chunks(ids, pg=pg):
        session.execute(delete(DedupSignature).where(any_of(DedupSignature.example_id, chunk, pg=pg)))
    now = utcnow()
    insert_ignore(
        session,
        DedupSignature.__table__,
        [
            {"example_id": d.id, "dataset_id": dataset_id, "revision_id": d.revision_id, "spec_tag": spec.tag,
             "signature": to_bytes(v, spec), "flags": int(f), "created_at": now}
            for d, v, f in zip(batch, sigs.values, sigs.flags, strict=True)
        ],
    )


def pairs_of(session: Session, dataset_id: uuid.UUID, ids: list[uuid.UUID]) -> set[tuple[uuid.UUID, uuid.UUID]]:
    return {(a, b) for a, b, _ in pair_rows(session, dataset_id, ids)}


def pair_rows(session: Session, dataset_id: uuid.UUID, ids: Iterable[uuid.UUID]) -> set[tuple]:
    """Pairs touching ``ids``: one query per side, so each uses its own index (an OR of the two made
    PostgreSQL scan every pair of the dataset: 150 ms per batch at 100k examples)."""
    pg = is_pg(session)
    out: set[tuple] = set()
    for chunk in in_chunks(ids, pg=pg):
        for col in (DedupPair.example_a_id, DedupPair.example_b_id):
            rows = session.execute(
                select(DedupPair.example_a_id, DedupPair.example_b_id, DedupPair.similarity)
                .where(any_of(col, chunk, pg=pg), DedupPair.dataset_id == dataset_id)
            )
            out.update((a, b, sim) for a, b, sim in rows)
    return out


def replace_pairs(session: Session, dataset_id: uuid.UUID, ids: list[uuid.UUID],
                  pairs: dict[tuple[uuid.UUID, uuid.UUID], tuple[float, str]]) -> None:
    pg = is_pg(session)
    for chunk in in_chunks(ids, pg=pg):
        for col in (DedupPair.example_a_id, DedupPair.example_b_id):
            session.execute(delete(DedupPair).where(any_of(col, chunk, pg=pg), DedupPair.dataset_id == dataset_id))
    insert_pairs(session, dataset_id, pairs)


def insert_pairs(session: Session, dataset_id: uuid.UUID,
                 pairs: dict[tuple[uuid.UUID, uuid.UUID], tuple[float, str]]) -> None:
    now = utcnow()
    insert_ignore(
        session,
        DedupPair.__table__,
        [{"id": uuid.uuid4(), "dataset_id": dataset_id, "example_a_id": a, "example_b_id": b, "method": m,
          "similarity": s, "created_at": now} for (a, b), (s, m) in pairs.items()],
    )


def verified_pairs(session: Session, dataset_id: uuid.UUID, policy: DedupPolicy,
                   cands: dict[uuid.UUID, set[uuid.UUID]], docs: dict[uuid.UUID, Doc]):
    """Exact Jaccard of each example against its candidates' current text (loaded into ``docs``):
    ``(pairs, sets)``, pairs keyed (a, b) sorted -> (similarity, method), sets the shingle sets."""
    need = {c for cs in cands.values() for c in cs} - set(docs)
    docs.update(load_docs(session, need, dataset_id))
    sets = dict(zip(docs, shingle_sets([d.text for d in docs.values()], policy.spec), strict=True))
    pairs: dict[tuple[uuid.UUID, uuid.UUID], tuple[float, str]] = {}
    for p in verify_exact(cands, sets, policy.threshold):
        a, b = sorted((p.a, p.b))
        method = METHOD_EXACT if same_content(docs[a], docs[b]) else METHOD_MINHASH
        pairs[(a, b)] = (p.similarity, method)
    return pairs, sets
