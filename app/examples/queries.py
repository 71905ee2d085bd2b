"""What other domains may ask of examples and their ingest batches, given a set of example ids as a
subquery (a snapshot's members, a dataset's slice), so the caller never names these tables itself."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from app.models.example import Example, IngestBatch


def erased_among(session: Session, dataset_id: uuid.UUID, example_ids: Select) -> list[uuid.UUID]:
    """Examples of `example_ids` erased since. Driven from the (dataset, status) index, so it costs the
    number of erased examples in the dataset, not the size of `example_ids`."""
    rows = session.execute(select(Example.id).where(
        Example.dataset_id == dataset_id, Example.status == "erased", Example.id.in_(example_ids)))
    return sorted(uuid.UUID(str(r[0])) for r in rows)


def ingest_batches_of(session: Session, example_ids: Select) -> list[Any]:
    """(batch id, channel, created_by, first created_at, examples) for the batches that brought
    `example_ids` in, largest first."""
    n = func.count()
    return list(session.execute(
        select(IngestBatch.id, IngestBatch.channel, IngestBatch.created_by, func.min(IngestBatch.created_at), n)
        .join(Example, Example.ingest_batch_id == IngestBatch.id)
        .where(Example.id.in_(example_ids))
        .group_by(IngestBatch.id, IngestBatch.channel, IngestBatch.created_by)
        .order_by(n.desc())).all())
