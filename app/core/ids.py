"""Time-ordered UUIDs (v7): primary keys that sort by creation, so cursors are just the last id
and B-tree inserts stay append-mostly."""

from __future__ import annotations

import uuid

import uuid_utils
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import NotFound


def new_id() -> uuid.UUID:
    return uuid.UUID(bytes=uuid_utils.uuid7().bytes)


def new_ids(n: int) -> list[uuid.UUID]:
    return [uuid.UUID(bytes=uuid_utils.uuid7().bytes) for _ in range(n)]


def id_or_404(value: object, what: str) -> uuid.UUID:
    """`value` as a UUID; anything that is not one names no `what`, so it is a 404, not a 422: a client
    holding an id from us never sends a malformed one."""
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"{what} {value} not found", details={what: str(value)}) from None


def by_id_or_name(session: Session, model: type, ref: object):
    """The row of `model` whose id or unique name is `ref`, or None: the CLI and humans use names, the API
    hands out ids."""
    try:
        return session.get(model, uuid.UUID(str(ref)))
    except ValueError:
        return session.scalar(select(model).where(model.name == str(ref)))
