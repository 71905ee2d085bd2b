"""Storing validated lines set-based, a batch at a time.

One batch = one transaction: examples, their revision 0, exact-duplicate links, one audit event
listing every example id, and the pipeline's first stage enqueued after commit. Lines arrive here
already validated (`parsing`); `importer` decides the transactions and calls `store` in each.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
import uuid_utils
from sqlalchemy import insert, select, text, tuple_
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Actor
from app.core.db import json_dumps
from app.core.ids import new_id
from app.core.sql import dialect_insert, is_pg
from app.examples.parsing import Candidate, Defaults, LineError
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.example import DuplicateLink, Example, ExampleRevision, IngestBatch
from app.pipeline import service as pipeline
from app.pipeline import stages

MAX_STORED_ERRORS = 1000


@dataclass
class BatchOutcome:
    accepted: int = 0
    unchanged: int = 0
    exact_duplicates: int = 0
    errors: list[LineError] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)


def open_batch(session: Session, *, dataset: Dataset, actor: Actor, channel: str, atomic: bool,
               defaults: Defaults) -> IngestBatch:
    batch = IngestBatch(id=new_id(), dataset_id=dataset.id, created_by=actor.ref, channel=channel,
                        atomic=atomic, defaults=defaults.to_dict())
    session.add(batch)
    session.flush()
    return batch


@dataclass
class _Plan:
    out: BatchOutcome
    ex_rows: list[dict[str, Any]]
    rev_rows: list[dict[str, Any]]
    link_rows: list[dict[str, Any]]
    by_id: dict[str, tuple[Candidate, uuid.UUID | str | None]]


def store(session: Session, *, dataset: Dataset, batch_id: uuid.UUID, actor: Actor,
          candidates: list[Candidate], want_items: bool = False) -> BatchOutcome:
    """Store a batch of validated candidates set-based. Returns what happened to each line."""
    if not candidates:
        return BatchOutcome()
    # One order for every import: two batches that share refs then take the unique index's entries
    # in the same order and one waits for the other instead of each waiting on the other (the
    # deadlocks of concurrent imports). The sort is stable, so the first line of a ref still wins.
    candidates = sorted(candidates, key=ref_order)
    refs = list({(c.source, c.source_ref) for c in candidates if c.source_ref is not None})
    if is_pg(session):
        # Optimistic: new refs are the common case, so write first and look up only if the unique
        # index says a ref is already there (the COPY fails at once and the savepoint undoes it).
        # That saves a lookup round trip per batch on a fresh import.
        cur = session.connection().connection.dbapi_connection.cursor()
        plan = _plan(session, dataset, batch_id, actor, candidates, {}, want_items)
        if _try_copy(cur, plan):
            inserted = {r["id"] for r in plan.ex_rows}
        else:
            existing = _existing_refs(session, dataset.id, refs) if refs else {}
            plan = _plan(session, dataset, batch_id, actor, candidates, existing, want_items)
            inserted = _insert_pg(session, plan.ex_rows, plan.rev_rows, plan.link_rows) if plan.ex_rows else set()
        _maybe_analyze(session, len(inserted))
    else:
        existing = _existing_refs(session, dataset.id, refs) if refs else {}
        plan = _plan(session, dataset, batch_id, actor, candidates, existing, want_items)
        inserted = _insert_generic(session, plan.ex_rows, plan.rev_rows, plan.link_rows) if plan.ex_rows else set()
    out, by_id = plan.out, plan.by_id
    if not plan.ex_rows:
        return out
    first_stage = stages.next_stage(None)
    new_ok = [eid for eid in inserted if by_id[eid][1] is None]
    dup_ids = [eid for eid in inserted if by_id[eid][1] is not None]
    lost = [by_id[eid][0] for eid in by_id if eid not in inserted]
    for c in lost:  # lost a race with a concurrent import of the same ref: same example back
        out.unchanged += 1
    out.accepted = len(inserted)
    out.exact_duplicates = len(dup_ids)
    if want_items:
        for r in plan.ex_rows:
            if r["id"] in inserted:
                out.items.append({"line": by_id[r["id"]][0].line, "id": str(r["id"]), "status": r["status"],
                                  "revision_id": str(r["current_revision_id"]), "created": True})
        out.items.sort(key=lambda x: x["line"])
    new_ok.sort()
    audit.record(
        session, actor=actor.ref, action="examples.ingested", entity_type="ingest_batch", entity_id=batch_id,
        workspace_id=dataset.workspace_id,
        payload={"dataset_id": str(dataset.id), "examples": sorted(str(i) for i in inserted),
                 "exact_duplicates": len(dup_ids)},
    )
    pipeline.enqueue_stage(session, first_stage, new_ok)
    # Their twin is scrubbed through the whole pipeline; they only need their own scrub (and vault row).
    pipeline.enqueue_stage(session, stages.SCRUB_STAGE, sorted(dup_ids))
    return out


def ref_order(c: Candidate) -> tuple[str, str]:
    return (c.source, c.source_ref or "")


def _plan(session: Session, dataset: Dataset, batch_id: uuid.UUID, actor: Actor, candidates: list[Candidate],
          existing: dict[tuple[str, str], tuple[uuid.UUID, str, str]], want_items: bool) -> _Plan:
    """Decide what each candidate becomes, given the refs already stored (`existing`)."""
    out = BatchOutcome()
    # 1. Idempotency: a (source, source_ref) already stored returns the same example; the same
    #    ref with different content is a conflict, never a silent overwrite.
    fresh: list[Candidate] = []
    seen_refs: dict[tuple[str, str], Candidate] = {}
    for c in candidates:
        key = (c.source, c.source_ref) if c.source_ref is not None else None
        hit = existing.get(key) if key else None
        if hit:
            if hit[1] != c.sha:
                out.errors.append(LineError(c.line, "source_ref_conflict",
                                            "source_ref was already ingested with different content "
                                            f"(example {hit[0]}); send an edit instead", "provenance.source_ref"))
            else:
                out.unchanged += 1
                if want_items:
                    out.items.append({"line": c.line, "id": str(hit[0]), "status": hit[2], "created": False})
            continue
        if key:
            prev = seen_refs.get(key)
            if prev is not None:
                if prev.sha != c.sha:
                    out.errors.append(LineError(c.line, "source_ref_conflict",
                                                "source_ref appears earlier in this batch with different content",
                                                "provenance.source_ref"))
                else:
                    out.unchanged += 1
                continue
            seen_refs[key] = c
        fresh.append(c)
    plan = _Plan(out=out, ex_rows=[], rev_rows=[], link_rows=[], by_id={})
    if not fresh:
        return plan

    # 2. Exact duplicates: the earliest non-duplicate example with the same ingested content is
    #    canonical (compared on revision 0, so a later scrub or edit does not hide a re-sent original).
    canonical = _canonicals(session, dataset.id, list({c.sha for c in fresh}))

    now = utcnow()
    first_stage = stages.next_stage(None)
    # Ids as strings on the hot path: building a uuid.UUID costs more than the rest of the row's
    # bookkeeping (15% of the import's CPU); COPY takes text, and only the generic path needs objects.
    for c in fresh:
        eid, rid = str(uuid_utils.uuid7()), str(uuid_utils.uuid7())
        canon = canonical.get(c.sha)
        if canon is None:
            canonical[c.sha] = eid
        is_dup = canon is not None
        plan.ex_rows.append({
            "id": eid, "dataset_id": dataset.id, "status": "duplicate" if is_dup else "ingested",
            # Exact duplicates skip quality and dedup (their canonical twin is checked and reviewed once) but
            # not the scrub: their own ingest revision holds the same raw text.
            "stage": stages.SCRUB_STAGE if is_dup else first_stage, "current_revision_id": rid,
            "source": c.source, "source_ref": c.source_ref, "collected_at": c.collected_at,
            "license": c.license, "legal_basis": c.legal_basis, "ingest_batch_id": batch_id,
            "ingested_by": actor.ref, "metadata": c.metadata, "tags": c.tags,
            "created_at": now, "updated_at": now,
        })
        plan.rev_rows.append({"id": rid, "example_id": eid, "seq": 0, "content": c.content, "content_sha256": c.sha,
                              "parent_id": None, "reason": "ingest", "author": actor.ref, "created_at": now})
        plan.by_id[eid] = (c, canon)
        if is_dup:
            plan.link_rows.append({"id": str(uuid_utils.uuid7()), "dataset_id": dataset.id, "example_id": eid,
                                   "canonical_example_id": canon, "method": "exact", "similarity": 1.0,
                                   "created_by": "system:ingest", "created_at": now})
    return plan


def finish_batch(session: Session, batch: IngestBatch, *, accepted: int, rejected: int, unchanged: int,
                 exact_duplicates: int, errors: list[LineError], status: str = "completed",
                 lines_committed: int | None = None, workspace_id: uuid.UUID | None = None) -> None:
    """`workspace_id`: the batch's dataset's, where the caller holds the dataset (else the audit log
    resolves it from the batch at commit)."""
    if lines_committed is not None:
        batch.lines_committed = lines_committed
    batch.last_seen = utcnow()
    batch.accepted = accepted
    batch.rejected = rejected
    batch.unchanged = unchanged
    batch.exact_duplicates = exact_duplicates
    batch.errors = [e.to_dict() for e in errors[:MAX_STORED_ERRORS]]
    batch.status = status
    batch.finished_at = utcnow()
    audit.record(session, actor=batch.created_by, action="ingest_batch.finished", entity_type="ingest_batch",
                 entity_id=batch.id, workspace_id=workspace_id, payload={"accepted": accepted, "rejected": rejected, "unchanged": unchanged,
                                              "exact_duplicates": exact_duplicates, "status": status})


_UNIQUE_REF_INDEX = "uq_examples_dataset_id_source_source_ref"
_PROBE_PLAN_OK: set[uuid.UUID] = set()
# LATERAL for the same reason as in _canonicals: a probe of the unique index per ref.
_LOOKUP_SQL = (
    "SELECT m.id, t.source, t.source_ref, m.status, m.content_sha256 "
    "FROM unnest(CAST(:sources AS text[]), CAST(:refs AS text[])) AS t(source, source_ref) "
    "CROSS JOIN LATERAL (SELECT e.id, e.status, r.content_sha256 FROM examples e "
    "  JOIN example_revisions r ON r.example_id = e.id AND r.seq = 0 "
    "  WHERE e.dataset_id = :ds AND e.source = t.source AND e.source_ref = t.source_ref OFFSET 0) AS m"
)


def _existing_refs_hashed(session: Session, params: dict[str, Any]) -> dict[tuple[str, str], tuple[uuid.UUID, str, str]]:
    # No nested loop (and no JIT, which the disabled plans' cost would switch on: 1.6 s of compiling)
    # for the refs; the revisions are then a probe of their unique index by example id.
    jit = session.execute(text("SELECT current_setting('jit'), set_config('enable_nestloop', 'off', true), "
                               "set_config('jit', 'off', true)")).scalar()
    found = session.execute(text(
        "SELECT e.id, e.status, t.source, t.source_ref "
        "FROM unnest(CAST(:sources AS text[]), CAST(:refs AS text[])) AS t(source, source_ref) "
        "JOIN examples e ON e.dataset_id = :ds AND e.source = t.source AND e.source_ref = t.source_ref"), params).all()
    session.execute(text("SELECT set_config('enable_nestloop', 'on', true), set_config('jit', :jit, true)"),
                    {"jit": jit})
    if not found:
        return {}
    sha = dict(session.execute(text(
        "SELECT example_id, content_sha256 FROM example_revisions "
        "WHERE example_id = ANY(CAST(:ids AS uuid[])) AND seq = 0"), {"ids": [r.id for r in found]}).all())
    return {(r.source, r.source_ref): (r.id, sha[r.id], r.status) for r in found}


def _existing_refs(session: Session, dataset_id: uuid.UUID,
                   refs: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[uuid.UUID, str, str]]:
    out: dict[tuple[str, str], tuple[uuid.UUID, str, str]] = {}
    if is_pg(session):
        # Two array parameters instead of thousands of placeholders: the statement stays small and
        # the planner joins against unnest() with the (dataset_id, source, source_ref) index.
        params = {"sources": [a for a, _ in refs], "refs": [b for _, b in refs], "ds": dataset_id}
        if dataset_id not in _PROBE_PLAN_OK:
            # Until statistics show this dataset's rows, the planner believes it holds one and probes
            # each ref through (dataset_id, status, id), scanning the whole dataset per ref: 32 s for
            # one 2,000-ref lookup during 20 concurrent imports. Then a hash join (one pass over the
            # dataset per batch) is the safe plan; once the probe plan uses the unique index it stays.
            plan = session.execute(text("EXPLAIN " + _LOOKUP_SQL), params).scalars().all()
            if any(_UNIQUE_REF_INDEX in line for line in plan):
                _PROBE_PLAN_OK.add(dataset_id)
            else:
                return _existing_refs_hashed(session, params)
        rows = session.execute(text(_LOOKUP_SQL), params).all()
        for r in rows:
            out[(r.source, r.source_ref)] = (r.id, r.content_sha256, r.status)
        return out
    for i in range(0, len(refs), 500):
        rows = session.execute(
            select(Example.id, Example.source, Example.source_ref, Example.status, ExampleRevision.content_sha256)
            .join(ExampleRevision, (ExampleRevision.example_id == Example.id) & (ExampleRevision.seq == 0))
            .where(Example.dataset_id == dataset_id, tuple_(Example.source, Example.source_ref).in_(refs[i:i + 500]))
        )
        for r in rows:
            out[(r.source, r.source_ref)] = (r.id, r.content_sha256, r.status)
    return out


def _canonicals(session: Session, dataset_id: uuid.UUID, hashes: list[str]) -> dict[str, uuid.UUID]:
    """content hash -> earliest live example with that ingested content, for hashes already stored."""
    canonical: dict[str, uuid.UUID] = {}
    if is_pg(session):
        rows = session.execute(
            text(
                # The hash probe is fenced off (MATERIALIZED) so it always uses the content-hash
                # index. During a bulk import the statistics are stale (the planner believed a
                # 40k-row dataset held 15 rows) and a plain join scanned the whole dataset for
                # every batch, a cost that grew with the table.
                "WITH hits AS MATERIALIZED (SELECT r.content_sha256, r.example_id FROM example_revisions r "
                "  WHERE r.content_sha256 = ANY(CAST(:hashes AS text[])) AND r.seq = 0) "
                "SELECT hits.content_sha256, e.id FROM hits JOIN examples e ON e.id = hits.example_id "
                "WHERE e.dataset_id = :ds AND e.status NOT IN ('duplicate', 'erased') ORDER BY e.id"
            ),
            {"hashes": hashes, "ds": dataset_id},
        )
        for sha, eid in rows:
            canonical.setdefault(sha, eid)
        return canonical
    for i in range(0, len(hashes), 500):
        rows = session.execute(
            select(ExampleRevision.content_sha256, Example.id)
            .join(Example, (ExampleRevision.example_id == Example.id) & (ExampleRevision.seq == 0))
            .where(Example.dataset_id == dataset_id, ExampleRevision.content_sha256.in_(hashes[i:i + 500]),
                   Example.status.not_in(("duplicate", "erased")))
            .order_by(Example.id)
        )
        for sha, eid in rows:
            canonical.setdefault(sha, eid)
    return canonical


def _uuids(rows: list[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    return [{**r, **{k: uuid.UUID(str(r[k])) for k in keys if r[k] is not None}} for r in rows]


def _insert_generic(session: Session, ex_rows: list[dict[str, Any]], rev_rows: list[dict[str, Any]],
                    link_rows: list[dict[str, Any]]) -> set[str]:
    ex_table = Example.__table__
    stmt = dialect_insert(session, ex_table).on_conflict_do_nothing().returning(ex_table.c.id)
    rows = _uuids(ex_rows, "id", "current_revision_id")
    inserted = {str(r[0]) for r in session.execute(stmt, rows)} if rows else set()
    revs = _uuids([r for r in rev_rows if r["example_id"] in inserted], "id", "example_id")
    if revs:
        session.execute(insert(ExampleRevision.__table__), revs)
    links = _uuids([r for r in link_rows if r["example_id"] in inserted], "id", "example_id", "canonical_example_id")
    if links:
        session.execute(insert(DuplicateLink.__table__), links)
    return inserted


_STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS ingest_stage (
    id uuid, dataset_id uuid, status text, stage text, current_revision_id uuid, source text, source_ref text,
    collected_at timestamptz, license text, legal_basis text, ingest_batch_id uuid, ingested_by text,
    metadata jsonb, tags jsonb, created_at timestamptz, content jsonb, content_sha256 text,
    canonical uuid, link_id uuid
) ON COMMIT DELETE ROWS
"""

_STAGE_INSERT = """
WITH ins AS (
    INSERT INTO examples (id, dataset_id, status, stage, current_revision_id, source, source_ref, collected_at,
                          license, legal_basis, ingest_batch_id, ingested_by, metadata, tags, created_at, updated_at)
    SELECT id, dataset_id, status, stage, current_revision_id, source, source_ref, collected_at, license,
           legal_basis, ingest_batch_id, ingested_by, metadata, tags, created_at, created_at
    FROM ingest_stage
    ON CONFLICT (dataset_id, source, source_ref) DO NOTHING
    RETURNING id
), revs AS (
    INSERT INTO example_revisions (id, example_id, seq, content, content_sha256, reason, author, created_at)
    SELECT s.current_revision_id, s.id, 0, s.content, s.content_sha256, 'ingest', s.ingested_by, s.created_at
    FROM ingest_stage s JOIN ins USING (id)
), links AS (
    INSERT INTO duplicate_links (id, dataset_id, example_id, canonical_example_id, method, similarity,
                                 created_by, created_at)
    SELECT s.link_id, s.dataset_id, s.id, s.canonical, 'exact', 1.0, 'system:ingest', s.created_at
    FROM ingest_stage s JOIN ins USING (id) WHERE s.canonical IS NOT NULL
)
SELECT id::text FROM ins
"""


def _insert_pg(session: Session, ex_rows: list[dict[str, Any]], rev_rows: list[dict[str, Any]],
               link_rows: list[dict[str, Any]]) -> set[str]:
    """Write a batch with COPY. Multi-row VALUES with thousands of placeholders spends more time
    building and parsing SQL than PostgreSQL spends storing the rows; COPY does not.

    Idempotency was checked before we got here, so the batch normally goes straight into the tables.
    Only a concurrent import of the same source refs can still collide; then the savepoint is rolled
    back and the batch goes through a staging table and `INSERT … ON CONFLICT DO NOTHING`, which
    keeps whichever import won."""
    cur = session.connection().connection.dbapi_connection.cursor()
    if _try_copy(cur, _Plan(out=BatchOutcome(), ex_rows=ex_rows, rev_rows=rev_rows, link_rows=link_rows, by_id={})):
        return {r["id"] for r in ex_rows}
    return _insert_pg_staged(cur, ex_rows, rev_rows, link_rows)


# How long a direct COPY may wait for a lock. A ref that a concurrent import is inserting right now
# makes the COPY wait for that import's whole transaction and then fail anyway (the measured cost:
# 20 overlapping imports ran at 0.15x of one); failing at once sends the batch to the ON CONFLICT path,
# which waits only where it must and never redoes the batch.
_COPY_LOCK_TIMEOUT = "50ms"


def _try_copy(cur: Any, plan: _Plan) -> bool:
    """COPY the plan's rows straight into the tables under a savepoint; False (and nothing written)
    if a ref is already stored or being stored by a concurrent transaction."""
    cur.execute("SAVEPOINT ingest_copy")
    prev = cur.execute("SELECT current_setting('lock_timeout'), set_config('lock_timeout', %s, true)",
                       (_COPY_LOCK_TIMEOUT,)).fetchone()[0]
    try:
        _copy_direct(cur, plan.ex_rows, plan.rev_rows, plan.link_rows)
    except (psycopg.errors.UniqueViolation, psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
        # QueryCanceled too: when the lock is granted just as lock_timeout fires, PostgreSQL has already
        # cleared the timeout's indicator and reports the cancel as "due to user request" (seen under
        # load with 20 overlapping imports: 4 of 20 requests failed with a 500). Whatever cancelled the
        # COPY, the savepoint undoes it and the staged path stores the batch correctly.
        cur.execute("ROLLBACK TO SAVEPOINT ingest_copy")  # also restores lock_timeout
        return False
    cur.execute("RELEASE SAVEPOINT ingest_copy")
    cur.execute("SELECT set_config('lock_timeout', %s, true)", (prev,))
    return True


def _copy_direct(cur: Any, ex_rows: list[dict[str, Any]], rev_rows: list[dict[str, Any]],
                 link_rows: list[dict[str, Any]]) -> None:
    with cur.copy("COPY examples (id, dataset_id, status, stage, current_revision_id, source, source_ref, "
                  "collected_at, license, legal_basis, ingest_batch_id, ingested_by, metadata, tags, created_at, "
                  "updated_at) FROM STDIN") as cp:
        for r in ex_rows:
            cp.write_row((r["id"], r["dataset_id"], r["status"], r["stage"], r["current_revision_id"], r["source"],
                          r["source_ref"], r["collected_at"], r["license"], r["legal_basis"], r["ingest_batch_id"],
                          r["ingested_by"], json_dumps(r["metadata"]), json_dumps(r["tags"]), r["created_at"],
                          r["created_at"]))
    with cur.copy("COPY example_revisions (id, example_id, seq, content, content_sha256, reason, author, "
                  "created_at) FROM STDIN") as cp:
        for r in rev_rows:
            cp.write_row((r["id"], r["example_id"], 0, json_dumps(r["content"]), r["content_sha256"], "ingest",
                          r["author"], r["created_at"]))
    if link_rows:
        with cur.copy("COPY duplicate_links (id, dataset_id, example_id, canonical_example_id, method, similarity, "
                      "created_by, created_at) FROM STDIN") as cp:
            for r in link_rows:
                cp.write_row((r["id"], r["dataset_id"], r["example_id"], r["canonical_example_id"], "exact", 1.0,
                              "system:ingest", r["created_at"]))


def _insert_pg_staged(cur: Any, ex_rows: list[dict[str, Any]], rev_rows: list[dict[str, Any]],
                      link_rows: list[dict[str, Any]]) -> set[str]:
    links = {r["example_id"]: r for r in link_rows}
    revs = {r["example_id"]: r for r in rev_rows}
    cur.execute(_STAGE_DDL)
    with cur.copy("COPY ingest_stage FROM STDIN") as cp:
        for r in ex_rows:
            rev = revs[r["id"]]
            link = links.get(r["id"])
            cp.write_row((
                r["id"], r["dataset_id"], r["status"], r["stage"], r["current_revision_id"], r["source"],
                r["source_ref"], r["collected_at"], r["license"], r["legal_basis"], r["ingest_batch_id"],
                r["ingested_by"], json_dumps(r["metadata"]), json_dumps(r["tags"]), r["created_at"],
                json_dumps(rev["content"]), rev["content_sha256"],
                link["canonical_example_id"] if link else None, link["id"] if link else None,
            ))
    cur.execute(_STAGE_INSERT)
    return {row[0] for row in cur.fetchall()}


_analyze_lock = threading.Lock()
_analyze_state = {"since": 0, "reltuples": 0.0}


def _maybe_analyze(session: Session, n: int) -> None:
    """Refresh planner statistics during bulk loads. Autovacuum analyzes only after the fact, and a
    planner that still thinks a dataset holds 15 rows picks plans that scan it whole for every
    batch. Geometric thresholds keep the cost logarithmic in the number of rows loaded."""
    with _analyze_lock:
        _analyze_state["since"] += n
        if _analyze_state["since"] < max(5000.0, 0.5 * _analyze_state["reltuples"]):
            return
        _analyze_state["since"] = 0
    # SKIP_LOCKED: a concurrent import already analysing (its lock is held to its commit) is enough;
    # waiting for it queued every importer behind one another.
    session.execute(text("ANALYZE (SKIP_LOCKED) examples"))
    session.execute(text("ANALYZE (SKIP_LOCKED) example_revisions"))
    reltuples = session.scalar(text("SELECT reltuples FROM pg_class WHERE relname = 'examples'")) or 0.0
    with _analyze_lock:
        _analyze_state["reltuples"] = float(reltuples)
