"""Snapshot work that runs outside a request and so owns its transaction."""

from __future__ import annotations

import uuid

from app.core.db import session_scope
from app.snapshots import proofs, repository


def fill_merkle_root(snapshot_id: uuid.UUID) -> None:
    """The after-commit step of a large freeze: its own transaction; harmless if a read got there first."""
    with session_scope() as s:
        proofs.ensure_merkle_root(s, repository.get(s, snapshot_id))
