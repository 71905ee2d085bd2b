"""Reading snapshots: get and list, erased members, the split hash and the manifest hashes.

The manifest formula is shared with the trainer (which cannot import this package):
    sha256("\\n".join(sorted(f"{content_sha256} {split}" for each member)).encode("utf-8")).hexdigest()
The same sorted lines are the leaves of an RFC 6962 Merkle tree (app/snapshots/merkle.py), whose root is
stored beside the manifest hash so one member's membership can be proven without the whole list.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from sqlalchemy import Select, Uuid, bindparam, func, select, text
from sqlalchemy.orm import Session

from app.core.errors import NotFound
from app.core.pagination import decode_cursor, page
from app.core.sql import is_pg
from app.datasets import service as datasets
from app.examples import queries as examples_queries
from app.models.snapshot import Snapshot, SnapshotMember
from app.snapshots import merkle

SPLIT_SPACE = 2**32


def manifest_sha256(members: Any) -> str:
    """members: iterable of (content_sha256, split). The reference implementation of the formula."""
    lines = sorted(f"{sha} {split}" for sha, split in members)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def split_h32(example_id: uuid.UUID | str, seed: str) -> int:
    """First 32 bits of sha256(str(example_id) + seed): the example's position in the split space.
    Depends on nothing but the example and the seed, so adding examples never moves existing ones."""
    return int(hashlib.sha256(f"{uuid.UUID(str(example_id))}{seed}".encode()).hexdigest()[:8], 16)


def validation_threshold(fraction: float) -> int:
    # An integer threshold keeps PostgreSQL and Python in exact agreement (no float comparisons).
    return round(fraction * SPLIT_SPACE)



def get(session: Session, snapshot_id: str | uuid.UUID) -> Snapshot:
    try:
        snap = session.get(Snapshot, uuid.UUID(str(snapshot_id)))
    except ValueError:
        snap = None
    missing = NotFound(f"snapshot {snapshot_id} not found", details={"snapshot": str(snapshot_id)})
    if snap is None:
        raise missing
    datasets.check_dataset_id(session, snap.dataset_id, missing)
    return snap


def list_page(session: Session, *, dataset_ref: str | None, cursor: str | None,
              limit: int) -> tuple[list[Snapshot], str | None]:
    q = select(Snapshot)
    if (visible := datasets.visible_dataset_ids(session)) is not None:
        q = q.where(Snapshot.dataset_id.in_(visible))
    if dataset_ref:
        q = q.where(Snapshot.dataset_id == datasets.get(session, dataset_ref).id)
    if cursor:
        q = q.where(Snapshot.id > decode_cursor(cursor))
    return page(list(session.scalars(q.order_by(Snapshot.id).limit(limit + 1))), limit)


def erased_members(session: Session, snap: Snapshot) -> list[uuid.UUID]:
    """Members whose example was erased after the freeze (asked of the examples domain)."""
    return examples_queries.erased_among(session, snap.dataset_id, member_ids(snap.id))


def served_split_counts(session: Session, snap: Snapshot) -> dict[str, int]:
    """Members per split as an export serves them now: the freeze's counts less the members erased since."""
    counts = {split: int((snap.counts or {}).get(split) or 0) for split in ("train", "validation")}
    erased = erased_members(session, snap)
    if erased:
        for split, n in session.execute(
                select(SnapshotMember.split, func.count()).where(SnapshotMember.snapshot_id == snap.id,
                                                                 SnapshotMember.example_id.in_(erased))
                .group_by(SnapshotMember.split)):
            counts[split] -= n
    return counts


def member_pairs(snapshot_id: uuid.UUID) -> Select:
    """(revision_id, example_id) of every member: what a training run's lineage rows are joined to."""
    return select(SnapshotMember.revision_id, SnapshotMember.example_id).where(
        SnapshotMember.snapshot_id == snapshot_id)


def member_ids(snapshot_id: uuid.UUID) -> Select:
    """The snapshot's example ids, as a subquery other domains' read APIs take."""
    return select(SnapshotMember.example_id).where(SnapshotMember.snapshot_id == snapshot_id)


def manifest_hashes(session: Session, snapshot_id: uuid.UUID, *, omit: list[uuid.UUID] | None = None,
               with_merkle: bool = False) -> dict[str, Any]:
    """{"all" | "train" | "validation": {"sha256", "count"}} over the stored members (minus `omit`);
    with_merkle (SQLite only, at freeze) adds "merkle_root" from the same pass over the sorted lines."""
    sid = bindparam("sid", type_=Uuid())
    omit_sql = ""
    binds = [sid]
    params: dict[str, Any] = {"sid": snapshot_id}
    if omit:
        omit_sql = "AND m.example_id NOT IN :omit"
        binds.append(bindparam("omit", expanding=True, type_=Uuid()))
        params["omit"] = omit
    if is_pg(session):
        agg = ("encode(sha256(convert_to(COALESCE(string_agg(x.l, E'\\n' ORDER BY x.l) {f}, ''), 'UTF8')), 'hex'), "
               "count(*) {f}")
        sel = ", ".join(agg.format(f=flt) for flt in ("", "FILTER (WHERE x.split = 'train')",
                                                      "FILTER (WHERE x.split = 'validation')"))
        row = session.execute(text(
            f"SELECT {sel} FROM (SELECT (m.content_sha256 || ' ' || m.split) COLLATE \"C\" AS l, m.split "
            f"FROM snapshot_members m WHERE m.snapshot_id = :sid {omit_sql}) x").bindparams(*binds), params).one()
        return {"all": {"sha256": row[0], "count": row[1]}, "train": {"sha256": row[2], "count": row[3]},
                "validation": {"sha256": row[4], "count": row[5]}}
    hashers = {k: hashlib.sha256() for k in ("all", "train", "validation")}
    counts = dict.fromkeys(hashers, 0)
    result = session.execute(text(
        f"SELECT m.content_sha256 || ' ' || m.split, m.split FROM snapshot_members m "
        f"WHERE m.snapshot_id = :sid {omit_sql} ORDER BY 1").bindparams(*binds), params)
    tree = merkle.RootBuilder() if with_merkle else None
    for line, split in result:
        raw = line.encode()
        for key in ("all", split):
            if counts[key]:
                hashers[key].update(b"\n")
            hashers[key].update(raw)
            counts[key] += 1
        if tree is not None:
            tree.add(merkle.leaf_hash(raw))
    out: dict[str, Any] = {k: {"sha256": h.hexdigest(), "count": counts[k]} for k, h in hashers.items()}
    if tree is not None:
        out["merkle_root"] = tree.root().hex()
    return out



def manifest_document(session: Session, snap: Snapshot) -> dict[str, Any]:
    """manifest.json: everything needed to check an export and to cite the snapshot."""
    ds = datasets.get(session, snap.dataset_id)
    erased = erased_members(session, snap)
    current = manifest_hashes(session, snap.id, omit=erased)["all"] if erased else {
        "sha256": snap.manifest_sha256, "count": snap.member_count}
    return {
        "snapshot_id": str(snap.id),
        "name": snap.name,
        "dataset": {"id": str(ds.id), "name": ds.name, "format": snap.format},
        "manifest_sha256": snap.manifest_sha256,
        "manifest_algorithm": 'sha256(utf8("\\n".join(sorted(f"{content_sha256} {split}" for member))))',
        "content_sha256_algorithm": ('sha256(utf8(json.dumps(content, sort_keys=True, separators=(",", ":"), '
                                     'ensure_ascii=False)))'),
        "split_manifests": snap.split_manifests,
        # Over the same sorted lines as manifest_sha256; the root of the original freeze, erasures or not.
        "merkle_root": snap.merkle_root,
        "merkle_tree_size": snap.member_count,
        "merkle_algorithm": merkle.ALGORITHM,
        "merkle_proof": f"GET /v1/snapshots/{snap.id}/proof?example_id=<id>",
        "counts": {"members": snap.member_count, **snap.counts},
        "sources": snap.stats.get("sources", {}),
        "licenses": snap.stats.get("licenses", {}),
        "legal_bases": snap.stats.get("legal_bases", {}),
        "collected_at": snap.stats.get("collected_at", {}),
        "filter": snap.filter,
        "validation_fraction": snap.validation_fraction,
        "seed": snap.seed,
        "stratify_by": snap.stratify_by,
        "split_rule": ("validation if int(sha256(str(example_id) + seed)[:8], 16) < round(fraction * 2**32)"
                       if not snap.stratify_by else
                       "per stratum: the round(fraction * n) examples lowest by sha256(str(example_id) + seed)"),
        "created_by": snap.created_by,
        "created_at": snap.created_at.isoformat(),
        "contains_erased": bool(snap.contains_erased or erased),
        "erased_members": len(erased),
        "erased_example_ids": [str(e) for e in erased],
        # What an export of split=all contains today; equal to manifest_sha256 until a member is erased.
        "export_manifest_sha256": current["sha256"],
        "export_member_count": current["count"],
    }



def as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))

