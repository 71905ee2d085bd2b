"""Time-ordered UUIDs (v7): primary keys that sort by creation, so cursors are just the last id
and B-tree inserts stay append-mostly."""

from __future__ import annotations

import uuid

import uuid_utils

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
