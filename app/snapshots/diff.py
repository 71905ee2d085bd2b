"""Diffing two snapshots, per example."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Uuid, bindparam, text
from sqlalchemy.orm import Session

from app.core.errors import ValidationFailed
from app.core.pagination import decode_cursor, page
from app.models.snapshot import Snapshot
from app.snapshots.repository import as_uuid

CHANGES = ("added", "removed", "revised", "split_changed")


def diff(session: Session, a: Snapshot, b: Snapshot, *, change: str | None, cursor: str | None,
         limit: int) -> dict[str, Any]:
    """Per example: in b only (added), in a only (removed), another revision (revised), or the same
    revision in another split (split_changed). Counts for all, a page of items in example-id order."""
    if change is not None and change not in CHANGES:
        raise ValidationFailed(f"unknown change {change!r}", details=[
            {"field": "change", "code": "invalid", "message": f"one of {', '.join(CHANGES)}"}])
    # Two LEFT JOINs and a UNION instead of FULL OUTER JOIN: same plan quality, and SQLite has it too.
    base = (
        "SELECT ma.example_id AS example_id, ma.revision_id AS rev_a, mb.revision_id AS rev_b, "
        "ma.split AS split_a, mb.split AS split_b FROM snapshot_members ma "
        "LEFT JOIN snapshot_members mb ON mb.snapshot_id = :b AND mb.example_id = ma.example_id "
        "WHERE ma.snapshot_id = :a "
        "UNION ALL "
        "SELECT mb.example_id, NULL, mb.revision_id, NULL, mb.split FROM snapshot_members mb "
        "WHERE mb.snapshot_id = :b AND NOT EXISTS (SELECT 1 FROM snapshot_members ma "
        "WHERE ma.snapshot_id = :a AND ma.example_id = mb.example_id)"
    )
    kind = ("CASE WHEN d.rev_a IS NULL THEN 'added' WHEN d.rev_b IS NULL THEN 'removed' "
            "WHEN d.rev_a <> d.rev_b THEN 'revised' WHEN d.split_a <> d.split_b THEN 'split_changed' "
            "ELSE 'unchanged' END")
    binds = [bindparam("a", type_=Uuid()), bindparam("b", type_=Uuid())]
    params: dict[str, Any] = {"a": a.id, "b": b.id}
    counts = dict.fromkeys((*CHANGES, "unchanged"), 0)
    for k, n in session.execute(text(f"SELECT {kind} AS k, count(*) FROM ({base}) d GROUP BY k").bindparams(*binds),
                                params):
        counts[k] = n
    where = [f"{kind} <> 'unchanged'"]
    if change:
        where.append(f"{kind} = :change")
        params["change"] = change
    if cursor:
        where.append("d.example_id > :cursor")
        params["cursor"] = decode_cursor(cursor)
        binds.append(bindparam("cursor", type_=Uuid()))
    rows = session.execute(text(
        f"SELECT d.example_id, d.rev_a, d.rev_b, d.split_a, d.split_b, {kind} FROM ({base}) d "
        f"WHERE {' AND '.join(where)} ORDER BY d.example_id LIMIT :lim").bindparams(*binds),
        {**params, "lim": limit + 1}).all()
    rows, nxt = page(rows, limit, key=lambda r: as_uuid(r[0]))
    items = []
    for ex, ra, rb, sa, sb, k in rows:
        items.append({"change": k, "example_id": str(as_uuid(ex)), "revision_a": _opt(ra), "revision_b": _opt(rb),
                      "split_a": sa, "split_b": sb})
    return {
        "a": {"id": str(a.id), "name": a.name, "manifest_sha256": a.manifest_sha256, "members": a.member_count},
        "b": {"id": str(b.id), "name": b.name, "manifest_sha256": b.manifest_sha256, "members": b.member_count},
        "same_manifest": a.manifest_sha256 == b.manifest_sha256,
        "counts": counts,
        "items": items,
        "next_cursor": nxt,
    }


def _opt(value: Any) -> str | None:
    return None if value is None else str(as_uuid(value))
