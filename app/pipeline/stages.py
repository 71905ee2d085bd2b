"""The ingest pipeline as an ordered list of stages.

An example enters at the first stage; each stage processes batches of examples that sit at it, and
the runner moves them to the next one. After the last stage an example lands in `pending_review`.
A later capability plugs in by adding a Stage here; nothing else needs rewiring.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models.dataset import Dataset
from app.models.example import Example, ExampleRevision
from app.pipeline import quality


@dataclass(frozen=True)
class Stage:
    name: str
    queue: str
    # Runs on examples currently at this stage (already locked by the runner), in the runner's
    # transaction. It may set an example's status (e.g. `duplicate`, `scrubbed`) or its stage to
    # None to stop it early; the runner advances the rest.
    handler: Callable[..., None]


def quality_handler(*, session: Session, example_ids: list[uuid.UUID]) -> None:
    rows = session.execute(
        select(ExampleRevision.id, ExampleRevision.content, Dataset.format, Dataset.quality_rules)
        .join(Example, Example.current_revision_id == ExampleRevision.id)
        .join(Dataset, Dataset.id == Example.dataset_id)
        .where(Example.id.in_(example_ids))
    ).all()
    updates = [
        {"rid": r.id, "quality": quality.check(r.format, r.content, r.quality_rules)} for r in rows
    ]
    if updates:
        from sqlalchemy import bindparam

        session.execute(
            update(ExampleRevision.__table__)
            .where(ExampleRevision.__table__.c.id == bindparam("rid"))
            .values(quality=bindparam("quality")),
            updates,
        )


def pii_handler(*, session: Session, example_ids: list[uuid.UUID]) -> None:
    # Imported on first use: Presidio and spaCy take seconds to import, which processes that never
    # scrub (the API in production, the trainer) should not pay.
    from app.pii.service import scrub_handler

    scrub_handler(session=session, example_ids=example_ids)


def dedup_handler(*, session: Session, example_ids: list[uuid.UUID]) -> None:
    # Imported on first use, like pii: numpy and the index client are not needed by every process.
    from app.dedup.service import dedup_handler as handler

    handler(session=session, example_ids=example_ids)


STAGES: list[Stage] = [
    Stage(name="quality", queue="default", handler=quality_handler),
    Stage(name="pii", queue="pii", handler=pii_handler),
    # After pii: the scrubbed text is what a model would be trained on, so it is what is compared.
    Stage(name="dedup", queue="dedup", handler=dedup_handler),
]


# Exact duplicates found at ingest enter here directly: their text is the same as their twin's, but the
# ingest revision is raw and must be scrubbed (and vaulted) like any other before anyone reads it.
SCRUB_STAGE = "pii"


def stage_names() -> list[str]:
    return [s.name for s in STAGES]


def pii_pending_stages() -> tuple[str, ...]:
    """The stages an example sits at before it has been through the scrub: its current text may be raw."""
    names = stage_names()
    return tuple(names[: names.index(SCRUB_STAGE) + 1])


def get_stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(name)


def next_stage(name: str | None) -> str | None:
    names = stage_names()
    if name is None:
        return names[0] if names else None
    i = names.index(name)
    return names[i + 1] if i + 1 < len(names) else None
