"""Time-ordered UUIDs (v7): primary keys that sort by creation, so cursors are just the last id
and B-tree inserts stay append-mostly."""

from __future__ import annotations

import uuid

import uuid_utils


def new_id() -> uuid.UUID:
    return uuid.UUID(bytes=uuid_utils.uuid7().bytes)


def new_ids(n: int) -> list[uuid.UUID]:
    return [uuid.UUID(bytes=uuid_utils.uuid7().bytes) for _ in range(n)]
