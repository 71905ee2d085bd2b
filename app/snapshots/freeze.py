"""Freezing a snapshot.

A freeze is two set-based statements over the dataset's examples: one counts what each exclusion
rule removes, one inserts the selected current revisions with their split (INSERT ... SELECT). The
manifest hash is then computed inside PostgreSQL (string_agg + sha256) over the stored members. On
PostgreSQL no Python runs per example; on SQLite the split hash and the manifest digest run in
Python, which is fine at the embedded mode's sizes.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import DateTime, Select, Uuid, bindparam, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Actor
from app.core.errors import Conflict, ValidationFailed
from app.core.ids import new_id
from app.core.sql import aware, is_pg
from app.datasets import service as datasets
from app.datasets.policies import GovernancePolicy
from app.dedup import queries as dedup_queries
from app.examples import privacy
from app.models.base import utcnow
from app.models.snapshot import Snapshot
from app.models.validation import Revalidation
from app.pipeline import stages
from app.review import queries as review_queries
from app.snapshots.proofs import pg_merkle_root
from app.snapshots.repository import SPLIT_SPACE, manifest_hashes, split_h32, validation_threshold
from app.snapshots.schemas import SnapshotCreate, SnapshotFilter

# Exclusion rules in the order they are tested; an example is counted under the first that removes it.
RULES = ("erased", "pii_pending", "contaminates_eval", "duplicate", "status", "pair_unusable", "source", "license", "tags",
         "collected_at", "min_approvals", "stale")

# Above this many members a PostgreSQL freeze leaves the root to a step after its commit (the API runs
# it as soon as the response is sent; any read before that computes it itself). The root statement
# costs ~2-3 s at 1M members on the shared 2-core machine, on top of a freeze whose target is 10 s
# (a whole 200k freeze, root included, took 2.5 s).
MERKLE_AT_FREEZE_MAX_MEMBERS = 250_000


def _sqlite_functions(session: Session) -> None:
    raw = session.connection().connection.dbapi_connection
    raw.create_function("pedigree_h32", 2, lambda eid, seed: split_h32(eid, seed), deterministic=True)


def _inline(session: Session, stmt: Select) -> str:
    """Another domain's select as SQL text for the candidates statement (text, built per dialect), its
    values inline: they are ours (a dataset id, constant strings), never the caller's."""
    return str(stmt.compile(dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True}))


@dataclass
class _Query:
    sql: str
    params: dict[str, Any]
    binds: list[Any]


_REVALIDATED = ("pii_engine", "spacy_model", "recognizers")


def _revalidating(session: Session, dataset_id: uuid.UUID) -> dict[str, Any] | None:
    """{record column: target value} of the dataset's running revalidation, for the PII versions it fired
    on; None when none is running (or it has not started, so its target is not known yet)."""
    rv = session.execute(select(Revalidation.target, Revalidation.triggers).where(
        Revalidation.dataset_id == dataset_id, Revalidation.status == "running", Revalidation.phase == "pii")
        .order_by(Revalidation.created_at.desc()).limit(1)).first()
    if rv is None or not rv.target:
        return None
    return {k: rv.target[k] for k in _REVALIDATED if k in (rv.triggers or []) and rv.target.get(k)} or None


def _candidates(session: Session, dataset_id: uuid.UUID, f: SnapshotFilter, *, with_tags: bool = False,
                with_sha: bool = False, split: str | None = None, pairs: bool = False,
                stale_before: dt.datetime | None = None, revalidating: dict[str, Any] | None = None) -> _Query:
    """SELECT example_id, revision_id, tags, rule over the dataset: rule is NULL for a selected example,
    otherwise the first exclusion rule that removes it."""
    pg = is_pg(session)
    params: dict[str, Any] = {"ds": dataset_id}
    binds: list[Any] = [bindparam("ds", type_=Uuid())]
    joins: list[str] = []
    whens: list[str] = ["WHEN e.status = 'erased' THEN 'erased'"]
    # Not yet through the scrub: the current revision may hold raw text, whatever its status says.
    pending = ", ".join(f"'{name}'" for name in stages.pii_pending_stages())
    whens.append(f"WHEN e.stage IN ({pending}) THEN 'pii_pending'")

    if not f.include_contaminating:
        joins.append(f"LEFT JOIN ({_inline(session, dedup_queries.contaminating(dataset_id))}) ce "
                     "ON ce.example_id = e.id")
        whens.append("WHEN ce.example_id IS NOT NULL THEN 'contaminates_eval'")

    statuses = list(f.statuses)
    if f.include_duplicates:
        statuses.append("duplicate")
    else:
        # The non-canonical side of a link is a duplicate even if someone approved it.
        joins.append(f"LEFT JOIN ({_inline(session, dedup_queries.linked_duplicates(dataset_id))}) dl "
                     "ON dl.example_id = e.id")
        whens.append("WHEN e.status = 'duplicate' OR dl.example_id IS NOT NULL THEN 'duplicate'")

    whens.append("WHEN e.status NOT IN :statuses OR e.current_revision_id IS NULL THEN 'status'")
    params["statuses"] = sorted(set(statuses))
    binds.append(bindparam("statuses", expanding=True))

    if pairs and not f.include_unusable_pairs:
        # A preference pair DPO cannot learn from: the answers are the same text (also once PII scrubbing
        # made them so), or the reviewers' settled verdict on this revision is a tie or both bad.
        same = ("pr.content->>'chosen' = pr.content->>'rejected'" if pg else
                "json_extract(pr.content, '$.chosen') = json_extract(pr.content, '$.rejected')")
        joins.append("LEFT JOIN example_revisions pr ON pr.id = e.current_revision_id")
        joins.append("LEFT JOIN pairwise_verdicts pv ON pv.example_id = e.id "
                     "AND pv.current_revision_id = e.current_revision_id")
        whens.append(f"WHEN {same} OR pv.verdict IN ('tie', 'both_bad') THEN 'pair_unusable'")

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
                params[f"collected_{name}"] = aware(value) if pg else aware(value).replace(tzinfo=None)
                binds.append(bindparam(f"collected_{name}", type_=DateTime(timezone=True)))
        whens.append(f"WHEN {' OR '.join(conds)} THEN 'collected_at'")
    if f.min_approvals:
        # Counted on the revision that would be frozen.
        joins.append(f"LEFT JOIN ({_inline(session, review_queries.approvals_by_revision(dataset_id))}) ap "
                     "ON ap.revision_id = e.current_revision_id")
        whens.append("WHEN COALESCE(ap.n, 0) < :min_approvals THEN 'min_approvals'")
        params["min_approvals"] = f.min_approvals
    stale: list[str] = []
    if stale_before is not None:
        # The dataset's governance policy: a validation older than revalidate_after_days (or none at all)
        # is stale; such an example waits for revalidation instead of going into a snapshot.
        stale.append("e.last_validated_at IS NULL OR e.last_validated_at < :stale_before")
        params["stale_before"] = stale_before if pg else stale_before.replace(tzinfo=None)
        binds.append(bindparam("stale_before", type_=DateTime(timezone=True)))
    if revalidating:
        # A revalidation of the dataset is under way (an engine, model or recognizer change): an example
        # whose record still differs from its target waits for it too (docs/governance.md).
        joins.append("LEFT JOIN example_validations xv ON xv.example_id = e.id")
        for i, (col, value) in enumerate(sorted(revalidating.items())):
            stale.append(f"xv.{col} IS NULL OR xv.{col} <> :rv_{i}")
            params[f"rv_{i}"] = value
    if stale:
        whens.append(f"WHEN {' OR '.join(f'({c})' for c in stale)} THEN 'stale'")

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


def _h32_below(session: Session, id_col: str) -> str:
    """SQL: true when the example lands in validation under the unstratified rule."""
    if is_pg(session):
        # bytea compares bytewise, so the first 4 digest bytes against the big-endian threshold is the
        # same test as int(hexdigest[:8], 16) < threshold, without hex-encoding a million digests.
        return f"substring(sha256(convert_to(CAST({id_col} AS text) || :seed, 'UTF8')) FROM 1 FOR 4) < :threshold_bytes"
    return f"pedigree_h32({id_col}, :seed) < :threshold"


def _split_sql(session: Session, *, stratify_by: str | None, src: str, extra: str = "") -> str:
    """SELECT example_id, revision_id, split, + the provenance columns, from the selected rows of `src`."""
    pg = is_pg(session)
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
                 "merkle_root": (pg_merkle_root(session, f"FROM {part} m")
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
    manifests = manifest_hashes(session, sid, with_merkle=True)
    stats_rows = session.execute(text(
        "SELECT e.source, e.license, e.legal_basis, m.split, count(*), min(e.collected_at), max(e.collected_at) "
        "FROM snapshot_members m JOIN examples e ON e.id = m.example_id WHERE m.snapshot_id = :sid "
        "GROUP BY e.source, e.license, e.legal_basis, m.split").bindparams(bindparam("sid", type_=Uuid())),
        {"sid": sid}).all()
    return _Frozen(excluded, selected, manifests, stats_rows)


def create(session: Session, *, data: SnapshotCreate, actor: Actor) -> Snapshot:
    ds = datasets.get(session, data.dataset_id)
    f = data.filter
    pg = is_pg(session)
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
    days = GovernancePolicy.effective(ds.governance_policy).revalidate_after_days
    stale_before = utcnow() - dt.timedelta(days=days) if days else None
    cand = _candidates(session, ds.id, f, with_tags=stratify is not None, with_sha=pg, pairs=ds.format == "preference",
                       stale_before=stale_before, revalidating=_revalidating(session, ds.id),
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

