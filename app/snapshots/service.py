"""Freezing, reading and diffing snapshots.

A freeze is two set-based statements over the dataset's examples: one counts what each exclusion
rule removes, one inserts the selected current revisions with their split (INSERT ... SELECT). The
manifest hash is then computed inside PostgreSQL (string_agg + sha256) over the stored members. On
PostgreSQL no Python runs per example; on SQLite the split hash and the manifest digest run in
Python, which is fine at the embedded mode's sizes.

The manifest formula is shared with the trainer (which cannot import this package):
    sha256("\\n".join(sorted(f"{content_sha256} {split}" for each member)).encode("utf-8")).hexdigest()
The same sorted lines are the leaves of an RFC 6962 Merkle tree (app/snapshots/merkle.py), whose root is
stored beside the manifest hash so one member's membership can be proven without the whole list.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import DateTime, Text, Uuid, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Actor
from app.core.db import get_engine, one_of
from app.core.errors import Conflict, NotFound, ValidationFailed
from app.core.ids import new_id
from app.datasets import service as datasets
from app.examples import privacy
from app.examples.service import decode_cursor, encode_cursor
from app.models.base import Base
from app.models.example import Example
from app.models.snapshot import Snapshot, SnapshotMember
from app.pipeline import stages
from app.snapshots import merkle
from app.snapshots.schemas import SnapshotCreate, SnapshotFilter

# Exclusion rules in the order they are tested; an example is counted under the first that removes it.
RULES = ("erased", "pii_pending", "contaminates_eval", "duplicate", "status", "source", "license", "tags", "collected_at",
         "min_approvals")
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


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _sqlite_functions(session: Session) -> None:
    raw = session.connection().connection.dbapi_connection
    raw.create_function("pedigree_h32", 2, lambda eid, seed: split_h32(eid, seed), deterministic=True)


def _table(name: str) -> bool:
    return name in Base.metadata.tables


# ---------------------------------------------------------------------------------------------------------
# Freezing


@dataclass
class _Query:
    sql: str
    params: dict[str, Any]
    binds: list[Any]


def _candidates(session: Session, dataset_id: uuid.UUID, f: SnapshotFilter, *, with_tags: bool = False,
                with_sha: bool = False, split: str | None = None) -> _Query:
    """SELECT example_id, revision_id, tags, rule over the dataset: rule is NULL for a selected example,
    otherwise the first exclusion rule that removes it."""
    pg = _is_pg(session)
    params: dict[str, Any] = {"ds": dataset_id}
    binds: list[Any] = [bindparam("ds", type_=Uuid())]
    joins: list[str] = []
    whens: list[str] = ["WHEN e.status = 'erased' THEN 'erased'"]
    # Not yet through the scrub: the current revision may hold raw text, whatever its status says.
    pending = ", ".join(f"'{name}'" for name in stages.pii_pending_stages())
    whens.append(f"WHEN e.stage IN ({pending}) THEN 'pii_pending'")

    if not f.include_contaminating:
        conds = []
        if "contaminates_eval" in Base.metadata.tables["examples"].c:
            conds.append("e.contaminates_eval")
        if _table("dedup_eval_hits"):
            # A curator's allow_eval_overlap decision lifts one hit; any other hit still excludes.
            allow = ""
            if _table("dedup_decisions"):
                allow = ("AND NOT EXISTS (SELECT 1 FROM dedup_decisions d WHERE d.example_id = h.example_id "
                         "AND d.other_example_id = h.eval_example_id AND d.decision = 'allow_eval_overlap')")
            joins.append("LEFT JOIN (SELECT DISTINCT h.example_id FROM dedup_eval_hits h "
                         f"WHERE h.dataset_id = :ds {allow}) ce ON ce.example_id = e.id")
            conds.append("ce.example_id IS NOT NULL")
        if conds:
            whens.append(f"WHEN {' OR '.join(conds)} THEN 'contaminates_eval'")

    statuses = list(f.statuses)
    if f.include_duplicates:
        statuses.append("duplicate")
    else:
        # The non-canonical side of a link is a duplicate even if someone approved it.
        joins.append("LEFT JOIN (SELECT DISTINCT example_id FROM duplicate_links WHERE dataset_id = :ds) dl "
                     "ON dl.example_id = e.id")
        whens.append("WHEN e.status = 'duplicate' OR dl.example_id IS NOT NULL THEN 'duplicate'")

    whens.append("WHEN e.status NOT IN :statuses OR e.current_revision_id IS NULL THEN 'status'")
    params["statuses"] = sorted(set(statuses))
    binds.append(bindparam("statuses", expanding=True))

    if f.sources is not None:
        whens.append("WHEN e.source NOT IN :sources THEN 'source'" if f.sources else "WHEN 1 = 1 THEN 'source'")
        if f.sources:
            params["sources"] = f.sources
            binds.append(bindparam("sources", expanding=True))
    if f.licenses is not None:
        if f.licenses:
            whens.append("WHEN e.license IS NULL OR e.license NOT IN :licenses THEN 'license'")
            params["licenses"] = f.licenses
            binds.append(bindparam("licenses", expanding=True))
        else:
            whens.append("WHEN 1 = 1 THEN 'license'")
    if f.tags:
        params["tags"] = sorted(set(f.tags))
        if pg:
            op = "?|" if f.tags_mode == "any" else "?&"
            whens.append(f"WHEN NOT (e.tags {op} CAST(:tags AS text[])) THEN 'tags'")
        else:
            binds.append(bindparam("tags", expanding=True))
            if f.tags_mode == "any":
                whens.append("WHEN NOT EXISTS (SELECT 1 FROM json_each(e.tags) WHERE value IN :tags) THEN 'tags'")
            else:
                params["ntags"] = len(params["tags"])
                whens.append("WHEN (SELECT count(DISTINCT value) FROM json_each(e.tags) WHERE value IN :tags) "
                             "< :ntags THEN 'tags'")
    if f.collected_after or f.collected_before:
        conds = ["e.collected_at IS NULL"]
        for name, value, op in (("after", f.collected_after, "<"), ("before", f.collected_before, ">=")):
            if value is not None:
                conds.append(f"e.collected_at {op} :collected_{name}")
                params[f"collected_{name}"] = _utc(value) if pg else _utc(value).replace(tzinfo=None)
                binds.append(bindparam(f"collected_{name}", type_=DateTime(timezone=True)))
        whens.append(f"WHEN {' OR '.join(conds)} THEN 'collected_at'")
    if f.min_approvals:
        if not _table("reviews"):
            raise ValidationFailed(
                "min_approvals needs the review workflow, which this deployment does not have",
                details=[{"field": "filter.min_approvals", "code": "unsupported",
                          "message": "no reviews table"}])
        # Distinct human reviewers who approved the revision that would be frozen: an edit (a new
        # revision) resets the count, exactly as the review policy does.
        joins.append("LEFT JOIN (SELECT revision_id, count(DISTINCT reviewer_key_id) AS n FROM reviews "
                     "WHERE dataset_id = :ds AND decision = 'approve' GROUP BY revision_id) ap "
                     "ON ap.revision_id = e.current_revision_id")
        whens.append("WHEN COALESCE(ap.n, 0) < :min_approvals THEN 'min_approvals'")
        params["min_approvals"] = f.min_approvals

    # Tags only when a stratified split needs them: they are the widest column carried along.
    tags = "e.tags AS tags, " if with_tags else ""
    if with_sha:
        joins.append("LEFT JOIN example_revisions r ON r.id = e.current_revision_id")
        tags += "r.content_sha256 AS content_sha256, "
    if split:
        tags += f"{split} AS split, "
    sql = (f"SELECT e.id AS example_id, e.current_revision_id AS revision_id, {tags}e.source AS source, "
           f"e.license AS license, e.legal_basis AS legal_basis, e.collected_at AS collected_at, "
           f"CASE {' '.join(whens)} ELSE NULL END AS rule "
           f"FROM examples e {' '.join(joins)} WHERE e.dataset_id = :ds")
    return _Query(sql, params, binds)


def _stored_filter(f: SnapshotFilter) -> dict[str, Any]:
    """The filter as kept on the snapshot (shown in its view, its datasheet and the audit event): tags are
    provenance identifiers, so they are kept in the pseudonymised form every non-admin reads them in
    (docs/pii.md). The filter is never re-applied, so nothing needs the values back."""
    out = f.model_dump(mode="json")
    if out.get("tags"):
        out["tags"] = [privacy.mask_tag(t) for t in out["tags"]]
    return out


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _h32_below(session: Session, id_col: str) -> str:
    """SQL: true when the example lands in validation under the unstratified rule."""
    if _is_pg(session):
        # bytea compares bytewise, so the first 4 digest bytes against the big-endian threshold is the
        # same test as int(hexdigest[:8], 16) < threshold, without hex-encoding a million digests.
        return f"substring(sha256(convert_to(CAST({id_col} AS text) || :seed, 'UTF8')) FROM 1 FOR 4) < :threshold_bytes"
    return f"pedigree_h32({id_col}, :seed) < :threshold"


def _split_sql(session: Session, *, stratify_by: str | None, src: str, extra: str = "") -> str:
    """SELECT example_id, revision_id, split, + the provenance columns, from the selected rows of `src`."""
    pg = _is_pg(session)
    cols = "c.example_id, c.revision_id, c.source, c.license, c.legal_basis, c.collected_at" + extra
    h32 = ("substring(sha256(convert_to(CAST(c.example_id AS text) || :seed, 'UTF8')) FROM 1 FOR 4)" if pg
           else "pedigree_h32(c.example_id, :seed)")
    if stratify_by is None:
        return (f"SELECT {cols}, CASE WHEN {_h32_below(session, 'c.example_id')} THEN 'validation' ELSE 'train' END "
                f"AS split FROM {src} c WHERE c.rule IS NULL")
    # Stratified: within each stratum the examples lowest in the split space go to validation, as many
    # as round(fraction * stratum size), so every stratum gets its share exactly.
    stratum = ("COALESCE((SELECT min(t) FROM jsonb_array_elements_text(c.tags) t WHERE left(t, :plen) = :prefix), '')"
               if pg else
               "COALESCE((SELECT min(value) FROM json_each(c.tags) WHERE substr(value, 1, :plen) = :prefix), '')")
    floor = "floor" if pg else ""
    inner = cols.replace("c.", "s.")
    return (f"SELECT {inner}, CASE WHEN "
            f"row_number() OVER (PARTITION BY s.stratum ORDER BY s.h32, s.example_id) <= "
            f"CAST({floor}(:fraction * count(*) OVER (PARTITION BY s.stratum) + 0.5) AS INTEGER) "
            f"THEN 'validation' ELSE 'train' END AS split "
            f"FROM (SELECT {cols}, {h32} AS h32, {stratum} AS stratum FROM {src} c WHERE c.rule IS NULL) s")


# Merkle tree on PostgreSQL, set-based: the leaf hashes of the sorted lines travel as one bytea
# (32 bytes per leaf), and each level of the tree is one step of a recursive CTE that hashes adjacent
# pairs of the level below, carrying an odd last node up unchanged. Pairing level by level and
# promoting the odd node yields exactly RFC 6962's tree (tests hold it against app/snapshots/merkle.py).
# No Python runs per member.

# Above this many members a PostgreSQL freeze leaves the root to a step after its commit (the API runs
# it as soon as the response is sent; any read before that computes it itself). The root statement
# costs ~2-3 s at 1M members on the shared 2-core machine, on top of a freeze whose target is 10 s
# (a whole 200k freeze, root included, took 2.5 s).
MERKLE_AT_FREEZE_MAX_MEMBERS = 250_000
PG_LEAVES_AGG = "string_agg(sha256('\\x00'::bytea || textsend(l)), ''::bytea)"


def _pg_next_level(t: str) -> str:
    return (f"s.v || CASE WHEN {t}.n % 2 = 1 THEN substring({t}.v FROM {t}.n * 32 - 31 FOR 32) ELSE ''::bytea END")


_PG_PAIRS = ("LATERAL (SELECT string_agg(sha256('\\x01'::bytea || substring(t.v FROM k * 64 + 1 FOR 64)), ''::bytea) "
             "AS v FROM generate_series(0, t.n / 2 - 1) k) s")


def _pg_tree_cte(src: str, col: str) -> str:
    """CTE `tree(n, v)`: one row per level, v the level's node hashes; the root is v where n = 1."""
    return (f"tree(n, v) AS (SELECT n, {col} FROM {src} UNION ALL "
            f"SELECT (t.n + 1) / 2, {_pg_next_level('t')} FROM tree t, {_PG_PAIRS} WHERE t.n > 1)")


def _pg_sorted_lines(where: str) -> str:
    return (f"(SELECT (m.content_sha256 || ' ' || m.split) COLLATE \"C\" AS l FROM snapshot_members m "
            f"WHERE {where} ORDER BY 1) x")


def _pg_merkle_root(session: Session, source: str) -> str | None:
    """The root over the member rows of `source` ("FROM <table> m [WHERE ...]", only our own names and
    uuids inlined), in one statement.

    A statement of its own, not a part of the freeze statement: folded into that one (over the sort
    the manifest already does) it measured ~10 s slower at 1M members, against ~2 s on its own."""
    session.execute(text("SET LOCAL work_mem = '256MB'"))
    session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
    return session.execute(text(
        f"WITH RECURSIVE lv AS (SELECT count(*)::int AS n, {PG_LEAVES_AGG} AS leaves FROM "
        f"(SELECT (m.content_sha256 || ' ' || m.split) COLLATE \"C\" AS l {source} ORDER BY 1) x), "
        f"{_pg_tree_cte('lv', 'leaves')} SELECT encode(v, 'hex') FROM tree WHERE n = 1")).scalar()


def _sorted_lines_generic(session: Session, snapshot_id: uuid.UUID) -> Iterator[bytes]:
    result = session.execute(text(
        "SELECT m.content_sha256 || ' ' || m.split FROM snapshot_members m WHERE m.snapshot_id = :sid ORDER BY 1"
    ).bindparams(bindparam("sid", type_=Uuid())), {"sid": snapshot_id})
    for (line,) in result:
        yield line.encode()


def ensure_merkle_root(session: Session, snap: Snapshot) -> str:
    """The snapshot's Merkle root. A freeze stores it (PostgreSQL: up to MERKLE_AT_FREEZE_MAX_MEMBERS);
    otherwise, and for snapshots frozen before the column existed, it is computed once, here, from the
    stored members (never deleted, erased ones included), so it is the root of the original freeze
    like the manifest hash, and recorded in the audit chain."""
    if snap.merkle_root:
        return snap.merkle_root
    if _is_pg(session):
        # Two first reads (or a read and the freeze's after-commit step) would both compute and both
        # audit: the row lock makes the second wait and find the stored root.
        session.refresh(snap, with_for_update=True)
        if snap.merkle_root:
            return snap.merkle_root
        root = _pg_merkle_root(session, f"FROM snapshot_members m WHERE m.snapshot_id = '{uuid.UUID(str(snap.id))}'")
    else:
        root = merkle.root_of(map(merkle.leaf_hash, _sorted_lines_generic(session, snap.id))).hex()
    snap.merkle_root = root
    session.flush()
    audit.record(session, actor="system", action="snapshot.merkle_root", entity_type="snapshot", entity_id=snap.id,
                 payload={"merkle_root": root, "tree_size": snap.member_count,
                          "manifest_sha256": snap.manifest_sha256})
    return root


def fill_merkle_root(snapshot_id: uuid.UUID) -> None:
    """The after-commit step of a large freeze: its own transaction; harmless if a read got there first."""
    from app.core.db import session_scope

    with session_scope() as s:
        ensure_merkle_root(s, get(s, snapshot_id))


def _member(session: Session, snap: Snapshot, *, example_id: str | None, revision_id: str | None) -> Any:
    if (example_id is None) == (revision_id is None):
        raise ValidationFailed("give exactly one of example_id and revision_id", details=[
            {"field": "example_id", "code": "required", "message": "example_id or revision_id"}])
    field, value = ("example_id", example_id) if example_id is not None else ("revision_id", revision_id)
    try:
        key = uuid.UUID(str(value))
    except ValueError:
        raise ValidationFailed(f"{field} is not a UUID", details=[
            {"field": field, "code": "invalid", "message": "a UUID"}]) from None
    row = next(iter(_members_of(session, snap, field, [key])), None)
    if row is None:
        raise NotFound(f"{field} {key} is not a member of snapshot {snap.id}", code="not_a_member",
                       details={"snapshot": str(snap.id), field: str(key)})
    return row


def membership_proof(session: Session, snap: Snapshot, *, example_id: str | None = None,
                     revision_id: str | None = None) -> dict[str, Any]:
    """The member's leaf, its index in the sorted leaves, its RFC 6962 audit path and the root of the
    original freeze. Refused (409 member_erased) for a member erased since: a proof would hand out a
    fingerprint of erased content on demand; that it was a member stays in manifest.json."""
    ex_id, rev_id, split, sha, status = _member(session, snap, example_id=example_id, revision_id=revision_id)
    if status == "erased":
        raise Conflict(f"example {_uuid(ex_id)} was erased after the freeze; no membership proof is issued for "
                       "erased members", code="member_erased",
                       details={"snapshot": str(snap.id), "example_id": str(_uuid(ex_id))})
    root = ensure_merkle_root(session, snap)
    line = merkle.leaf_line(sha, split)
    sid = bindparam("sid", type_=Uuid())
    # Equal lines (the same content twice in one split) are equal leaves: the first one's index
    # proves the line is in the tree just as well.
    collate = ' COLLATE "C"' if _is_pg(session) else ""  # SQLite compares text bytewise already
    index = session.execute(text(
        f"SELECT count(*) FROM snapshot_members m WHERE m.snapshot_id = :sid "
        f"AND (m.content_sha256 || ' ' || m.split){collate} < :line").bindparams(sid),
        {"sid": snap.id, "line": line.decode()}).scalar()
    if _is_pg(session):
        session.execute(text("SET LOCAL work_mem = '256MB'"))
        session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
        rows = session.execute(text(
            f"WITH RECURSIVE lv AS (SELECT count(*)::int AS n, {PG_LEAVES_AGG} AS leaves FROM "
            f"{_pg_sorted_lines('m.snapshot_id = :sid')}), "
            f"t(lvl, n, i, v, sib) AS (SELECT 0, n, CAST(:idx AS integer), leaves, CAST(NULL AS bytea) FROM lv "
            f"  UNION ALL SELECT t.lvl + 1, (t.n + 1) / 2, t.i / 2, {_pg_next_level('t')}, "
            f"  CASE WHEN t.i % 2 = 1 THEN substring(t.v FROM (t.i - 1) * 32 + 1 FOR 32) "
            f"       WHEN t.i + 1 < t.n THEN substring(t.v FROM (t.i + 1) * 32 + 1 FOR 32) END "
            f"  FROM t, {_PG_PAIRS} WHERE t.n > 1) "
            f"SELECT lvl, n, sib, CASE WHEN lvl = 0 THEN substring(v FROM i * 32 + 1 FOR 32) END, "
            f"CASE WHEN n = 1 THEN v END FROM t ORDER BY lvl").bindparams(sid),
            {"sid": snap.id, "idx": index}).all()
        size = rows[0][1]
        leaf_h = bytes(rows[0][3])
        path = [bytes(r[2]) for r in rows if r[2] is not None]
        computed = bytes(rows[-1][4])
    else:
        # One streamed pass over the sorted lines: O(log n) hashes held, whatever the size.
        size = snap.member_count
        leaf_h, path, computed = merkle.audit_path(map(merkle.leaf_hash, _sorted_lines_generic(session, snap.id)),
                                                   index, size)
    if computed.hex() != root:
        # Stored members no longer hash to the recorded root: say so rather than serve a proof that
        # cannot verify.
        raise Conflict(f"snapshot {snap.id}: stored members do not match the recorded Merkle root",
                       code="merkle_mismatch", details={"recorded": root, "computed": computed.hex()})
    row = SimpleNamespace(example_id=ex_id, revision_id=rev_id, split=split, content_sha256=sha)
    return _proof_doc(snap, root, size, index, row, line, leaf_h, path)


# --- many proofs from one tree ---------------------------------------------------------------------------


class _PackedLevel:
    """One level of the tree as PostgreSQL returns it: the node hashes end to end in one bytea."""

    def __init__(self, blob: bytes) -> None:
        self._b = bytes(blob)

    def __len__(self) -> int:
        return len(self._b) // 32

    def __getitem__(self, k: int) -> bytes:
        return self._b[k * 32:(k + 1) * 32]


def _members_of(session: Session, snap: Snapshot, field: str, keys: list[uuid.UUID]) -> list[Any]:
    """Member rows (example, revision, split, content hash, the example's status now) by example or
    revision id."""
    M, E = SnapshotMember.__table__, Example.__table__
    pg = _is_pg(session)
    stmt = (select(M.c.example_id, M.c.revision_id, M.c.split, M.c.content_sha256, E.c.status)
            .join(E, E.c.id == M.c.example_id)
            .where(M.c.snapshot_id == snap.id, one_of(M.c[field], "keys", pg=pg)))
    step = len(keys) if pg else 500  # SQLite: bounded IN lists
    return [r for i in range(0, len(keys), max(step, 1)) for r in session.execute(stmt, {"keys": keys[i:i + step]})]


def membership_proofs(session: Session, snap: Snapshot, *, field: str, values: list[uuid.UUID]) -> dict[str, Any]:
    """Proofs for many members from one build of the tree: an auditor asking about a data subject's
    examples gets all of them for the cost of one proof (each single proof rebuilds the tree). Each
    proof has the single endpoint's shape, so each verifies on its own; members that are not in the
    snapshot, or were erased since the freeze, are listed under `refused` with the single endpoint's
    error code."""
    keys = list(dict.fromkeys(values))
    rows = {_uuid(getattr(r, field)): r for r in _members_of(session, snap, field, keys)}
    refused, live = [], []
    for k in keys:
        r = rows.get(k)
        if r is None:
            refused.append({field: str(k), "code": "not_a_member",
                            "message": f"{field} {k} is not a member of snapshot {snap.id}"})
        elif r.status == "erased":
            refused.append({field: str(k), "code": "member_erased",
                            "message": "erased after the freeze; no membership proof is issued for erased members"})
        else:
            live.append(r)
    root = ensure_merkle_root(session, snap)
    out: dict[str, Any] = {"snapshot_id": str(snap.id), "merkle_root": root, "manifest_sha256": snap.manifest_sha256,
                           "algorithm": merkle.ALGORITHM, "tree_size": snap.member_count, "proofs": [],
                           "refused": refused}
    if not live:
        return out
    wanted = {merkle.leaf_line(r.content_sha256, r.split) for r in live}
    sid = bindparam("sid", type_=Uuid())
    if _is_pg(session):
        session.execute(text("SET LOCAL work_mem = '256MB'"))
        session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
        levels: list[Any] = [_PackedLevel(v) for _, v in session.execute(text(
            f"WITH RECURSIVE lv AS (SELECT count(*)::int AS n, {PG_LEAVES_AGG} AS leaves FROM "
            f"{_pg_sorted_lines('m.snapshot_id = :sid')}), {_pg_tree_cte('lv', 'leaves')} "
            f"SELECT n, v FROM tree ORDER BY n DESC").bindparams(sid), {"sid": snap.id})]
        # Equal lines are equal leaves: the first one's index (rank) proves the line as well.
        first = {line.encode(): idx for line, idx in session.execute(text(
            "SELECT l, min(r) FROM (SELECT (m.content_sha256 || ' ' || m.split) COLLATE \"C\" AS l, "
            "rank() OVER (ORDER BY (m.content_sha256 || ' ' || m.split) COLLATE \"C\") - 1 AS r "
            "FROM snapshot_members m WHERE m.snapshot_id = :sid) x WHERE l = ANY(:lines) GROUP BY l")
            .bindparams(sid, bindparam("lines", type_=ARRAY(Text()))),
            {"sid": snap.id, "lines": sorted(w.decode() for w in wanted)})}
    else:
        lines = list(_sorted_lines_generic(session, snap.id))
        levels = merkle.tree_levels([merkle.leaf_hash(x) for x in lines])
        first = {}
        for i, x in enumerate(lines):
            if x in wanted and x not in first:
                first[x] = i
    size = len(levels[0])
    computed = levels[-1][0]
    if computed.hex() != root:
        raise Conflict(f"snapshot {snap.id}: stored members do not match the recorded Merkle root",
                       code="merkle_mismatch", details={"recorded": root, "computed": computed.hex()})
    for r in live:
        line = merkle.leaf_line(r.content_sha256, r.split)
        index = first[line]
        out["proofs"].append(_proof_doc(snap, root, size, index, r, line, levels[0][index],
                                        merkle.path_from_levels(levels, index)))
    out["tree_size"] = size
    return out


def _proof_doc(snap: Snapshot, root: str, size: int, index: int, row: Any, line: bytes, leaf_h: bytes,
               path: list[bytes]) -> dict[str, Any]:
    return {
        "snapshot_id": str(snap.id),
        "merkle_root": root,
        "manifest_sha256": snap.manifest_sha256,
        "algorithm": merkle.ALGORITHM,
        "tree_size": size,
        "leaf_index": index,
        "leaf": {"example_id": str(_uuid(row.example_id)), "revision_id": str(_uuid(row.revision_id)),
                 "split": row.split, "content_sha256": row.content_sha256, "line": line.decode()},
        "leaf_hash": leaf_h.hex(),
        "audit_path": [h.hex() for h in path],
    }


@dataclass
class _Frozen:
    excluded: dict[str, int]
    selected: int
    manifests: dict[str, dict[str, Any]]
    stats_rows: list[Any]


def _empty(ds_name: str, excluded: dict[str, int], selected: int) -> None:
    if selected == 0:
        considered = sum(excluded.values())
        raise ValidationFailed(
            f"the filter selects no example of dataset {ds_name!r} ({considered} considered)",
            code="empty_selection",
            details={"field": "filter", "considered": considered, "excluded": excluded},
        )


def _freeze_pg(session: Session, sid: uuid.UUID, ds_name: str, cand: _Query, params: dict[str, Any],
               stratify: str | None) -> _Frozen:
    """One statement selects, splits, inserts into a fresh partition and aggregates counts, provenance
    stats and the three manifests; then the partition gets its indexes (built in bulk) and is attached."""
    part = f"snapshot_parts.m_{sid.hex}"
    # The uuid is ours (new_id), never user input, so inlining it in DDL is safe.
    session.execute(text(f"CREATE TABLE {part} (LIKE snapshot_members INCLUDING DEFAULTS, "
                         f"CONSTRAINT ck_m_{sid.hex} CHECK (snapshot_id = '{sid}'))"))
    agg = ("encode(sha256(textsend(COALESCE(string_agg(l, E'\\n') {f}, ''))), 'hex')")
    manifests = ", ".join(agg.format(f=flt) for flt in (
        "", "FILTER (WHERE split = 'train')", "FILTER (WHERE split = 'validation')"))
    if stratify is None:
        # The split is computed inside the one materialised scan (for excluded rows too: cheaper than
        # a second materialisation of the selected ones), and `sel` is a plain filter over it.
        sel = "sel AS NOT MATERIALIZED (SELECT * FROM cand WHERE rule IS NULL)"
    else:
        sel = (f"sel AS MATERIALIZED ({_split_sql(session, stratify_by=stratify, src='cand', extra=', c.content_sha256')})")
    rows = session.execute(text(
        f"WITH cand AS MATERIALIZED ({cand.sql}), {sel}, "
        f"ins AS (INSERT INTO {part} (snapshot_id, example_id, revision_id, split, content_sha256) "
        f"  SELECT :sid, example_id, revision_id, split, content_sha256 FROM sel) "
        f"SELECT 'rule', rule, NULL, NULL, NULL, count(*), NULL, NULL FROM cand WHERE rule IS NOT NULL GROUP BY rule "
        f"UNION ALL SELECT 'stats', split, source, license, legal_basis, count(*), min(collected_at), max(collected_at) "
        f"  FROM sel GROUP BY split, source, license, legal_basis "
        # COLLATE "C": byte order, which is what Python's sorted() gives for these ASCII lines.
        f"UNION ALL SELECT 'manifest', {manifests}, NULL, count(*), NULL, NULL FROM "
        f"  (SELECT (content_sha256 || ' ' || split) COLLATE \"C\" AS l, split FROM sel ORDER BY 1) m"
    ).bindparams(*cand.binds, bindparam("sid", type_=Uuid())), params).all()
    excluded = dict.fromkeys(RULES, 0)
    stats_rows, manifest_row = [], None
    for kind, a, b, c, d, n, mn, mx in rows:
        if kind == "rule":
            excluded[a] = n
        elif kind == "stats":
            stats_rows.append((b, c, d, a, n, mn, mx))
        else:
            manifest_row = (a, b, c, n)
    selected = manifest_row[3] if manifest_row else 0
    _empty(ds_name, excluded, selected)
    counts = {"train": 0, "validation": 0}
    for r in stats_rows:
        counts[r[3]] += r[4]
    manifests = {"all": {"sha256": manifest_row[0], "count": selected},
                 "train": {"sha256": manifest_row[1], "count": counts["train"]},
                 "validation": {"sha256": manifest_row[2], "count": counts["validation"]},
                 "merkle_root": (_pg_merkle_root(session, f"FROM {part} m")
                                 if selected <= MERKLE_AT_FREEZE_MAX_MEMBERS else None)}
    session.execute(text(f"ALTER TABLE {part} ADD CONSTRAINT pk_m_{sid.hex} PRIMARY KEY (snapshot_id, example_id)"))
    session.execute(text(f"CREATE INDEX ix_m_{sid.hex} ON {part} (example_id)"))
    # The CHECK constraint lets ATTACH skip its validation scan; the statistics let the planner
    # stream exports by index at once instead of after autovacuum's first visit.
    session.execute(text(f"ALTER TABLE snapshot_members ATTACH PARTITION {part} FOR VALUES IN ('{sid}')"))
    session.execute(text(f"ANALYZE {part}"))
    return _Frozen(excluded, selected, manifests, stats_rows)


def _freeze_generic(session: Session, sid: uuid.UUID, ds_name: str, cand: _Query, params: dict[str, Any],
                    stratify: str | None) -> _Frozen:
    """SQLite: the same rules in a few statements; the split hash and the manifest digest run in Python."""
    _sqlite_functions(session)
    rows = session.execute(
        text(f"WITH cand AS ({cand.sql}) SELECT rule, count(*) FROM cand GROUP BY rule").bindparams(*cand.binds),
        cand.params,
    ).all()
    by_rule = {r[0]: r[1] for r in rows}
    selected = by_rule.pop(None, 0)
    excluded = {rule: by_rule.get(rule, 0) for rule in RULES}
    _empty(ds_name, excluded, selected)
    session.execute(text(
        f"WITH cand AS ({cand.sql}) INSERT INTO snapshot_members (snapshot_id, example_id, revision_id, split, "
        f"content_sha256) SELECT :sid, x.example_id, x.revision_id, x.split, r.content_sha256 "
        f"FROM ({_split_sql(session, stratify_by=stratify, src='cand')}) x "
        f"JOIN example_revisions r ON r.id = x.revision_id"
    ).bindparams(*cand.binds, bindparam("sid", type_=Uuid())), params)
    manifests = _manifests(session, sid, with_merkle=True)
    stats_rows = session.execute(text(
        "SELECT e.source, e.license, e.legal_basis, m.split, count(*), min(e.collected_at), max(e.collected_at) "
        "FROM snapshot_members m JOIN examples e ON e.id = m.example_id WHERE m.snapshot_id = :sid "
        "GROUP BY e.source, e.license, e.legal_basis, m.split").bindparams(bindparam("sid", type_=Uuid())),
        {"sid": sid}).all()
    return _Frozen(excluded, selected, manifests, stats_rows)


def create(session: Session, *, data: SnapshotCreate, actor: Actor) -> Snapshot:
    ds = datasets.get(session, data.dataset_id)
    f = data.filter
    pg = _is_pg(session)
    if session.scalar(select(Snapshot.id).where(Snapshot.dataset_id == ds.id, Snapshot.name == data.name)):
        raise Conflict(f"dataset {ds.name!r} already has a snapshot named {data.name!r}", code="name_taken",
                       details={"field": "name"})
    if pg:
        # The manifest sorts every member line and the joins hash a million ids: give them memory
        # so they stay in RAM (the default 4 MB spills to disk and turns seconds into tens).
        session.execute(text("SET LOCAL work_mem = '256MB'"))
        # The manifest aggregates feed on a sorted subquery (one sort for the three hashes instead of
        # three); a serial plan is what guarantees the aggregate sees that order.
        session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))

    sid = new_id()
    seed = str(data.seed)
    stratify = data.stratify_by.rstrip(":") if data.stratify_by else None
    cand = _candidates(session, ds.id, f, with_tags=stratify is not None, with_sha=pg,
                       split=_h32_below(session, "e.id").join(("CASE WHEN ", " THEN 'validation' ELSE 'train' END"))
                       if pg and stratify is None else None)
    threshold = validation_threshold(data.validation_fraction)
    params = {**cand.params, "sid": sid, "seed": seed, "threshold": threshold,
              "threshold_bytes": threshold.to_bytes(5, "big")[1:] if threshold < SPLIT_SPACE else b"\xff" * 5,
              "fraction": data.validation_fraction}
    if stratify:
        params.update(prefix=f"{stratify}:", plen=len(stratify) + 1)
    frozen = (_freeze_pg if pg else _freeze_generic)(session, sid, ds.name, cand, params, stratify)

    snap = Snapshot(id=sid, dataset_id=ds.id, name=data.name, format=ds.format,
                    manifest_sha256=frozen.manifests["all"]["sha256"], merkle_root=frozen.manifests["merkle_root"],
                    split_manifests={k: frozen.manifests[k]["sha256"] for k in ("train", "validation")},
                    filter=_stored_filter(f), validation_fraction=data.validation_fraction, seed=seed,
                    stratify_by=stratify, member_count=frozen.selected,
                    counts={"train": frozen.manifests["train"]["count"],
                            "validation": frozen.manifests["validation"]["count"],
                            "excluded": frozen.excluded, "considered": frozen.selected + sum(frozen.excluded.values())},
                    stats=_stats(frozen.stats_rows), created_by=actor.ref)
    session.add(snap)
    # Read before the insert: after a failed flush `ds` is expired, and loading `ds.name` for the
    # message raised PendingRollbackError (a 500) instead of the 409.
    ds_name = ds.name
    try:
        # A savepoint, so the session stays usable for the lineage hook's FAIL event.
        with session.begin_nested():
            session.flush()
    except IntegrityError:  # a concurrent freeze took the name
        raise Conflict(f"dataset {ds_name!r} already has a snapshot named {data.name!r}",
                       code="name_taken", details={"field": "name"}) from None
    audit.record(session, actor=actor.ref, action="snapshot.created", entity_type="snapshot", entity_id=snap.id,
                 payload={"dataset_id": str(ds.id), "name": snap.name, "manifest_sha256": snap.manifest_sha256,
                          "merkle_root": snap.merkle_root, "counts": snap.counts, "filter": snap.filter,
                          "validation_fraction": snap.validation_fraction, "seed": seed,
                          "stratify_by": stratify})
    return snap


def _manifests(session: Session, snapshot_id: uuid.UUID, *, omit: list[uuid.UUID] | None = None,
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
    if _is_pg(session):
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


def _stats(rows: list[Any]) -> dict[str, Any]:
    """rows: (source, license, legal_basis, split, n, min collected_at, max collected_at)."""
    sources: dict[str, int] = {}
    licenses: dict[str, int] = {}
    bases: dict[str, int] = {}
    by_split: dict[str, dict[str, int]] = {}
    lo = hi = None
    for source, lic, basis, split, n, mn, mx in rows:
        sources[source] = sources.get(source, 0) + n
        lic_key = lic if lic is not None else "unknown"
        licenses[lic_key] = licenses.get(lic_key, 0) + n
        basis_key = basis if basis is not None else "unknown"
        bases[basis_key] = bases.get(basis_key, 0) + n
        by_split.setdefault(split, {})
        by_split[split][source] = by_split[split].get(source, 0) + n
        mn, mx = _as_dt(mn), _as_dt(mx)
        if mn is not None and (lo is None or mn < lo):
            lo = mn
        if mx is not None and (hi is None or mx > hi):
            hi = mx
    return {
        "sources": dict(sorted(sources.items())),
        "licenses": dict(sorted(licenses.items())),
        "legal_bases": dict(sorted(bases.items())),
        "sources_by_split": {k: dict(sorted(v.items())) for k, v in sorted(by_split.items())},
        "collected_at": {"min": lo.isoformat() if lo else None, "max": hi.isoformat() if hi else None},
    }


def _as_dt(value: Any) -> dt.datetime | None:
    # SQLite hands aggregate datetimes back as text.
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


# ---------------------------------------------------------------------------------------------------------
# Reading


def get(session: Session, snapshot_id: str | uuid.UUID) -> Snapshot:
    try:
        snap = session.get(Snapshot, uuid.UUID(str(snapshot_id)))
    except ValueError:
        snap = None
    if snap is None:
        raise NotFound(f"snapshot {snapshot_id} not found", details={"snapshot": str(snapshot_id)})
    return snap


def list_page(session: Session, *, dataset_ref: str | None, cursor: str | None,
              limit: int) -> tuple[list[Snapshot], str | None]:
    q = select(Snapshot)
    if dataset_ref:
        q = q.where(Snapshot.dataset_id == datasets.get(session, dataset_ref).id)
    if cursor:
        q = q.where(Snapshot.id > decode_cursor(cursor))
    rows = list(session.scalars(q.order_by(Snapshot.id).limit(limit + 1)))
    nxt = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], nxt


def erased_members(session: Session, snap: Snapshot) -> list[uuid.UUID]:
    """Members whose example was erased after the freeze. Driven from the (dataset, status) index, so
    it costs the number of erased examples in the dataset, not the snapshot's size."""
    rows = session.execute(text(
        "SELECT e.id FROM examples e JOIN snapshot_members m ON m.snapshot_id = :sid AND m.example_id = e.id "
        "WHERE e.dataset_id = :ds AND e.status = 'erased'").bindparams(
        bindparam("sid", type_=Uuid()), bindparam("ds", type_=Uuid())), {"sid": snap.id, "ds": snap.dataset_id})
    return sorted(uuid.UUID(str(r[0])) for r in rows)


@dataclass
class ExportPlan:
    """What one export will contain, known before the first byte is sent (it goes in the headers)."""

    snapshot_id: uuid.UUID
    name: str
    dataset_format: str
    split: str
    manifest_sha256: str  # the original freeze, on record forever
    export_manifest_sha256: str  # exactly the members in this export
    count: int
    omitted_erased: list[uuid.UUID]


def plan_export(session: Session, snap: Snapshot, *, split: str) -> ExportPlan:
    erased = erased_members(session, snap)
    if erased:
        hashes = _manifests(session, snap.id, omit=erased)
        key = "all" if split == "all" else split
        export_sha, count = hashes[key]["sha256"], hashes[key]["count"]
    elif split == "all":
        export_sha, count = snap.manifest_sha256, snap.member_count
    else:
        export_sha, count = snap.split_manifests[split], snap.counts[split]
    return ExportPlan(snapshot_id=snap.id, name=snap.name, dataset_format=snap.format, split=split,
                      manifest_sha256=snap.manifest_sha256, export_manifest_sha256=export_sha, count=count,
                      omitted_erased=erased)


def _pedigree_line_sql(plan: ExportPlan) -> str:
    """One pedigree JSONL line per member, built by PostgreSQL. Everything inlined is ours (uuids,
    a validated split and format): COPY takes no bind parameters."""
    cond = _member_cond(plan)
    return (
        "SELECT '{\"revision_id\":\"' || m.revision_id || '\",\"example_id\":\"' || m.example_id || "
        "'\",\"split\":\"' || m.split || "
        f"'\",\"format\":\"{plan.dataset_format}\",\"content\":' || r.content::text || "
        "',\"content_sha256\":\"' || m.content_sha256 || '\"}' "
        f"FROM snapshot_members m JOIN example_revisions r ON r.id = m.revision_id WHERE {cond} "
        "ORDER BY m.example_id"
    )


def _member_cond(plan: ExportPlan) -> str:
    for value in (plan.dataset_format, plan.split):
        if not value.isalpha():
            raise ValueError(value)
    cond = f"m.snapshot_id = '{uuid.UUID(str(plan.snapshot_id))}'"
    if plan.split != "all":
        cond += f" AND m.split = '{plan.split}'"
    if plan.omitted_erased:
        cond += " AND m.example_id NOT IN (" + ", ".join(f"'{uuid.UUID(str(u))}'" for u in plan.omitted_erased) + ")"
    return cond


def _copy_blocks(copy_sql: str, block_rows: int, unescape: bool) -> Iterator[bytes]:
    engine = get_engine()
    with engine.connect() as conn:
        # A walk of the partition's primary key joined to revisions by key, in order: no sort, no
        # hash of a million revisions, first bytes out at once.
        for setting in ("enable_hashjoin = off", "enable_mergejoin = off", "enable_sort = off",
                        "max_parallel_workers_per_gather = 0", "jit = off"):
            conn.exec_driver_sql(f"SET LOCAL {setting}")
        raw = conn.connection.driver_connection
        with raw.cursor() as cur, cur.copy(copy_sql) as cp:
            buf: list[Any] = []
            for row in cp:
                buf.append(row)
                if len(buf) >= block_rows:
                    block = b"".join(buf)
                    # COPY's text format doubles every backslash; JSON text has no other byte it escapes.
                    yield block.replace(b"\\\\", b"\\") if unescape else block
                    buf = []
            if buf:
                block = b"".join(buf)
                yield block.replace(b"\\\\", b"\\") if unescape else block
        conn.rollback()


def iter_csv_blocks(plan: ExportPlan, fields: tuple[str, ...], *, block_rows: int = 20_000) -> Iterator[bytes]:
    """PostgreSQL: CSV rows of the given top-level content fields, then split, revision_id, example_id,
    content_sha256. For flat formats this feeds Parquet faster than JSON lines do: `->>` extracts a
    field without printing the whole document, and CSV parses faster than JSON."""
    for f in fields:
        if not f.isalpha():
            raise ValueError(f)
    if get_engine().dialect.name != "postgresql":
        # SQLite's json_extract re-parses the document per field: its pedigree lines through
        # pyarrow's JSON reader measured faster.
        raise ValueError("CSV export blocks need PostgreSQL")
    cols = ", ".join(f"r.content->>'{f}'" for f in fields)
    sql = (f"COPY (SELECT {cols}, m.split, m.revision_id, m.example_id, m.content_sha256 "
           f"FROM snapshot_members m JOIN example_revisions r ON r.id = m.revision_id WHERE {_member_cond(plan)} "
           f"ORDER BY m.example_id) TO STDOUT WITH (FORMAT csv)")
    yield from _copy_blocks(sql, block_rows, unescape=False)


def iter_pedigree_blocks(plan: ExportPlan, *, block_rows: int = 5000) -> Iterator[bytes]:
    """Blocks of complete `pedigree` JSONL lines in example-id order, on a connection of their own (the
    request's session is gone by the time a streamed body is sent). Memory: one block.

    PostgreSQL builds every line itself and streams them with COPY, so the database and this process
    work in parallel and Python does nothing per row. The content is the stored JSONB as PostgreSQL
    prints it: the same JSON value (it hashes the same once parsed), not the same bytes. SQLite hands
    over column blocks (below) that Arrow joins into lines."""
    engine = get_engine()
    if engine.dialect.name != "postgresql":
        from app.snapshots import export

        for block in iter_column_blocks(plan, block_rows=block_rows):
            yield export.pedigree_lines(plan.dataset_format, block)
        return
    yield from _copy_blocks(f"COPY ({_pedigree_line_sql(plan)}) TO STDOUT", block_rows, unescape=True)


@dataclass
class ColumnBlock:
    """Up to block_rows members, one bytes value per column: SQLite concatenates each column of the
    block itself (group_concat), so Python handles a few strings per block and never a row."""

    count: int
    content: bytes  # the stored JSON documents, "\n"-separated (JSON text holds no raw newline)
    revision_ids: bytes  # 32 hex digits each (how SQLite stores UUIDs)
    example_ids: bytes
    splits: bytes  # b"t" or b"v" each
    content_sha256: bytes  # 64 hex digits each


def iter_column_blocks(plan: ExportPlan, *, block_rows: int = 10_000) -> Iterator[ColumnBlock]:
    """SQLite: the export's members as column blocks, in example-id order.

    Profiled on 100k members, the old path (SQLite building each JSON line, UUIDs hyphenated with
    substr, SQLAlchemy rows joined in Python) spent over half its time in SQLite's string building
    (the ten substr and || per UUID pair cost more than the whole join) and in per-row Row objects.
    Here each block is one keyset query on the partition's primary key returning six values; the
    lines or Arrow columns are built vectorised (export.pedigree_lines, export.table_from_columns).
    All blocks are read in one read transaction, so they see one state of the database."""
    engine = get_engine()
    if engine.dialect.name == "postgresql":
        raise ValueError("column blocks are the SQLite export path")
    for value in (plan.dataset_format, plan.split):
        if not value.isalpha():
            raise ValueError(value)
    cond = ""
    args: list[Any] = []
    if plan.split != "all":
        cond += " AND m.split = ?"
        args.append(plan.split)
    if plan.omitted_erased:
        # One JSON parameter instead of one per id: no limit on the number of erased members.
        cond += " AND m.example_id NOT IN (SELECT value FROM json_each(?))"
        args.append(json.dumps([uuid.UUID(str(u)).hex for u in plan.omitted_erased]))
    sql = ("SELECT count(*), max(eid), group_concat(c, char(10)), group_concat(rid, ''), group_concat(eid, ''), "
           "group_concat(sp, ''), group_concat(sha, '') FROM ("
           "SELECT r.content AS c, m.revision_id AS rid, m.example_id AS eid, substr(m.split, 1, 1) AS sp, "
           "m.content_sha256 AS sha FROM snapshot_members m JOIN example_revisions r ON r.id = m.revision_id "
           f"WHERE m.snapshot_id = ? AND m.example_id > ?{cond} ORDER BY m.example_id LIMIT ?)")
    sid = uuid.UUID(str(plan.snapshot_id)).hex
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        raw.execute("BEGIN")
        try:
            after = ""
            while True:
                n, last, content, rids, eids, splits, shas = raw.execute(sql, (sid, after, *args, block_rows)).fetchone()
                if not n:
                    break
                yield ColumnBlock(n, content.encode(), rids.encode("ascii"), eids.encode("ascii"),
                                  splits.encode("ascii"), shas.encode("ascii"))
                if n < block_rows:
                    break
                after = last
        finally:
            raw.execute("ROLLBACK")


def manifest_document(session: Session, snap: Snapshot) -> dict[str, Any]:
    """manifest.json: everything needed to check an export and to cite the snapshot."""
    ds = datasets.get(session, snap.dataset_id)
    erased = erased_members(session, snap)
    current = _manifests(session, snap.id, omit=erased)["all"] if erased else {
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


# ---------------------------------------------------------------------------------------------------------
# Diff

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
    items = []
    for ex, ra, rb, sa, sb, k in rows[:limit]:
        items.append({"change": k, "example_id": str(_uuid(ex)), "revision_a": _opt(ra), "revision_b": _opt(rb),
                      "split_a": sa, "split_b": sb})
    nxt = encode_cursor(_uuid(rows[limit - 1][0])) if len(rows) > limit else None
    return {
        "a": {"id": str(a.id), "name": a.name, "manifest_sha256": a.manifest_sha256, "members": a.member_count},
        "b": {"id": str(b.id), "name": b.name, "manifest_sha256": b.manifest_sha256, "members": b.member_count},
        "same_manifest": a.manifest_sha256 == b.manifest_sha256,
        "counts": counts,
        "items": items,
        "next_cursor": nxt,
    }


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _opt(value: Any) -> str | None:
    return None if value is None else str(_uuid(value))
