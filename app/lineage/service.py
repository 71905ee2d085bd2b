"""Lineage queries: from an example to every model it trained, from a model back to every example, and
reverse lookups by source, reviewer and license.

Everything here reads; nothing writes except the audit checkpoint (app/audit). The answers are built
from a handful of set-based queries per call (one per kind of fact), never one query per row, so an
example that trained 500 model versions costs the same number of round trips as one that trained one.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

from sqlalchemy import ColumnElement, and_, case, exists, func, or_, select, text, true
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Actor
from app.core.errors import NotFound, ValidationFailed
from app.core.pagination import decode_cursor, encode_cursor
from app.core.sql import any_of, is_pg, iso
from app.datasets import service as datasets
from app.examples import privacy
from app.examples import service as examples
from app.lineage import facets
from app.lineage import training as tr
from app.models.audit import AuditEvent
from app.models.example import Example, ExampleRevision
from app.models.lineage import ErasureRequest, ModelVersionTaint
from app.models.pii import PiiFinding
from app.models.review import PairwiseJudgment, Review
from app.models.snapshot import Snapshot, SnapshotMember

# Roles that may read revision content in a lineage answer (always the stored, scrubbed content: raw
# text stays in the vault behind the admin-only reveal). Trainer keys are machines that read exports,
# not people; they get hashes.
CONTENT_ROLES = ("admin", "curator", "reviewer", "auditor")
TOMBSTONE_KEY = "_erased"
AUDIT_EVENTS_LIMIT = 500



def _s(v: Any) -> str | None:
    return None if v is None else str(v)



def is_tombstone(content: Any) -> bool:
    return isinstance(content, dict) and TOMBSTONE_KEY in content


# ---------------------------------------------------------------------------------------------------------
# Model versions, shared by every lookup


def _views(session: Session, where: ColumnElement[bool], *, example_id: uuid.UUID | None = None,
           extra: dict[uuid.UUID, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One statement: the versions with their aliases and taints outer-joined (a handful of rows per
    version at most), and, for `example_id`, that example's lineage row (tokens, epochs). One round
    trip instead of one per kind of fact: on a busy database the round trips are the latency."""
    mv, a = tr.model_versions, tr.model_aliases
    t = ModelVersionTaint.__table__
    cols = [mv.c.id, mv.c.name, mv.c.version, mv.c.run_id, mv.c.status, mv.c.artifact_sha256, a.c.alias,
            t.c.erasure_request_id]
    src = mv.outerjoin(a, a.c.model_version_id == mv.c.id).outerjoin(t, t.c.model_version_id == mv.c.id)
    if example_id is not None:
        ln = tr.lineage
        cols += [ln.c.revision_id, ln.c.tokens, ln.c.epochs]
        src = src.join(ln, and_(ln.c.model_version_id == mv.c.id, ln.c.example_id == example_id))
    rows = session.execute(select(*cols).select_from(src).where(where)
                           .order_by(mv.c.name, mv.c.version, a.c.alias, t.c.created_at)).all()
    out: dict[uuid.UUID, dict[str, Any]] = {}
    for r in rows:
        item = out.get(r.id)
        if item is None:
            item = out[r.id] = {"id": str(r.id), "name": r.name, "version": r.version, "run_id": _s(r.run_id),
                                "status": r.status, "artifact_sha256": r.artifact_sha256, "aliases": [],
                                "tainted_by": []}
            if example_id is not None:
                item.update(revision_id=str(r.revision_id), tokens=r.tokens, epochs=r.epochs)
            item.update((extra or {}).get(r.id, {}))
        if r.alias is not None and r.alias not in item["aliases"]:
            item["aliases"].append(r.alias)
        tid = _s(r.erasure_request_id)
        if tid is not None and tid not in item["tainted_by"]:
            item["tainted_by"].append(tid)
    for item in out.values():
        if item["status"] == "tainted" and item["aliases"]:
            item["warning"] = (f"TAINTED model version {item['name']} v{item['version']} is still served by "
                               f"alias(es) {', '.join(item['aliases'])}: it was trained on erased data; retrain "
                               "and move the alias")
    return list(out.values())


def model_version_views(session: Session, mv_ids: list[uuid.UUID], *,
                        extra: dict[uuid.UUID, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """{"name", "version", "run_id", "status", "aliases", "tainted_by", "warning"} per version, ordered by
    name and version. A tainted version an alias still points at carries a loud `warning`."""
    if not mv_ids:
        return []
    col = tr.model_versions.c.id
    # = ANY(array) on PostgreSQL: a thousand versions are one parameter, not a thousand to render and bind.
    cond = any_of(col, mv_ids, pg=is_pg(session))
    return _views(session, cond, extra=extra)


def tainted_alias_warnings(mvs: list[dict[str, Any]]) -> list[str]:
    return [m["warning"] for m in mvs if m.get("warning")]


def get_model_version(session: Session, name: str, version: int) -> Any:
    mv = tr.model_versions
    row = session.execute(select(mv).where(mv.c.name == name, mv.c.version == version)).first()
    missing = NotFound(f"model {name!r} version {version} not found", details={"name": name, "version": version})
    if row is None:
        raise missing
    if datasets.visible_dataset_ids(session) is not None:  # the version's workspace: its run's dataset's
        run = tr.training_runs
        ds_id = session.scalar(select(Snapshot.dataset_id).join(run, run.c.snapshot_id == Snapshot.id)
                               .where(run.c.id == row.run_id))
        if ds_id is None:
            raise missing
        datasets.check_dataset_id(session, ds_id, missing)
    return row


# ---------------------------------------------------------------------------------------------------------
# Example lineage


def example_lineage(session: Session, *, example_id: str, actor: Actor, include_audit: bool = False,
                    include_content: bool = True) -> dict[str, Any]:
    ex = examples.get(session, example_id)
    show_content = include_content and actor.role in CONTENT_ROLES

    revs = list(session.scalars(select(ExampleRevision).where(ExampleRevision.example_id == ex.id)
                                .order_by(ExampleRevision.seq)))
    current = next((r for r in revs if r.id == ex.current_revision_id), None)
    quality = (current.quality if current else None) or {}
    # Only the current revision can be unscrubbed: every earlier one was replaced by a scrub or an edit.
    withheld = privacy.content_withheld(ex.stage, ex.status)
    revisions = []
    for r in revs:
        erased = is_tombstone(r.content)
        item = {"id": str(r.id), "seq": r.seq, "reason": r.reason, "author": r.author, "comment": r.comment,
                "content_sha256": r.content_sha256, "parent_id": _s(r.parent_id), "created_at": iso(r.created_at),
                "current": r.id == ex.current_revision_id, "erased": erased,
                # The raw text of a scrubbed revision lives in the vault; the row keeps a marker.
                "vaulted": isinstance(r.content, dict) and "_pii_vault" in r.content}
        if show_content:
            pending = withheld if r.id == ex.current_revision_id else None
            item["content"] = None if erased or item["vaulted"] or pending else r.content
            if pending:
                item["content_withheld"] = pending
        revisions.append(item)

    findings = [
        {"id": str(f.id), "revision_id": str(f.revision_id), "field_path": f.field_path,
         "entity_type": f.entity_type, "start": f.start, "end": f.end, "score": f.score,
         "recognizer": f.recognizer, "operator": f.operator, "verdict": f.verdict, "verdict_by": f.verdict_by,
         "verdict_at": iso(f.verdict_at)}
        for f in session.scalars(select(PiiFinding).where(PiiFinding.example_id == ex.id)
                                 .order_by(PiiFinding.created_at, PiiFinding.field_path, PiiFinding.start))
    ]
    reviews = [
        {"id": str(r.id), "revision_id": str(r.revision_id), "reviewer": r.reviewer, "decision": r.decision,
         "reason_code": r.reason_code, "comment": r.comment, "at": iso(r.created_at),
         "resolves_escalation": r.resolves_escalation}
        for r in session.scalars(select(Review).where(Review.example_id == ex.id).order_by(Review.created_at))
    ]
    snaps = [
        {"id": str(s.id), "name": s.name, "dataset_id": str(s.dataset_id), "manifest_sha256": s.manifest_sha256,
         "revision_id": str(m.revision_id), "split": m.split,
         "contains_erased": bool(s.contains_erased or ex.status == "erased"), "created_at": iso(s.created_at)}
        for m, s in session.execute(
            select(SnapshotMember, Snapshot).join(Snapshot, Snapshot.id == SnapshotMember.snapshot_id)
            .where(SnapshotMember.example_id == ex.id).order_by(Snapshot.created_at))
    ]

    runs: list[dict[str, Any]] = []
    mvs: list[dict[str, Any]] = []
    run = tr.training_runs
    mvs = model_versions_of_example(session, ex.id)
    run_ids = sorted({uuid.UUID(m["run_id"]) for m in mvs})
    if run_ids:
        runs = [{"id": str(r.id), "status": r.status, "snapshot_id": _s(r.snapshot_id), "base_model": r.base_model,
                 "method": r.method, "created_at": iso(r.created_at), "finished_at": iso(r.finished_at)}
                for r in session.execute(select(run).where(run.c.id.in_(run_ids)).order_by(run.c.created_at))]

    out: dict[str, Any] = {
        "example": {"id": str(ex.id), "dataset_id": str(ex.dataset_id), "status": ex.status,
                    "provenance": examples.provenance(ex, actor), "current_revision_id": _s(ex.current_revision_id),
                    "created_at": iso(ex.created_at), "updated_at": iso(ex.updated_at)},
        "revisions": revisions,
        "pii_findings": findings,
        "quality_flags": quality.get("flags", []),
        "quality": {k: v for k, v in quality.items() if k != "flags"} or None,
        "duplicates": examples.duplicates_of(session, ex.id),
        "reviews": reviews,
        "snapshots": snaps,
        "training_runs": runs,
        "model_versions": mvs,
        "warnings": tainted_alias_warnings(mvs),
        "erasure": erasure_state(session, ex),
        "content_visible": show_content,
    }
    if include_audit:
        ids = {str(ex.id), *(r["id"] for r in revisions), *(s["id"] for s in snaps), *(r["id"] for r in runs),
               *(m["id"] for m in mvs), *(r["id"] for r in reviews)}
        if ex.ingest_batch_id:
            ids.add(str(ex.ingest_batch_id))
        if out["erasure"]:
            ids.add(out["erasure"]["request_id"])
        out["audit_events"] = audit_events_for(session, sorted(ids))
    return out


def model_versions_of_example(session: Session, example_id: uuid.UUID) -> list[dict[str, Any]]:
    """Which model versions did this example train, with the tokens and epochs of each: one statement,
    driven by the (example_id, model_version_id) lineage index."""
    return _views(session, true(), example_id=example_id)


def erasure_state(session: Session, ex: Example) -> dict[str, Any] | None:
    if ex.status != "erased":
        return None
    tomb = session.scalar(select(ExampleRevision.content).where(ExampleRevision.example_id == ex.id)
                          .order_by(ExampleRevision.seq).limit(1))
    info = tomb.get(TOMBSTONE_KEY, {}) if is_tombstone(tomb) else {}
    req = session.get(ErasureRequest, uuid.UUID(info["request_id"])) if info.get("request_id") else None
    return {"erased": True, "request_id": info.get("request_id"), "erased_at": info.get("at"),
            "reason": req.reason if req else None, "requested_by": req.requested_by if req else None}


def audit_events_for(session: Session, entity_ids: list[str]) -> list[dict[str, Any]]:
    """The audit events about these entities, each re-hashed: `hash_ok` says the stored row still matches
    the hash the chain committed to, so an auditor can trust the events shown without a full verify."""
    if not entity_ids:
        return []
    rows = session.scalars(select(AuditEvent).where(AuditEvent.entity_id.in_(entity_ids))
                           .order_by(AuditEvent.seq).limit(AUDIT_EVENTS_LIMIT))
    out = []
    for e in rows:
        h = audit.event_hash(seq=e.seq, prev_hash=e.prev_hash, occurred_at=e.occurred_at, actor=e.actor,
                             action=e.action, entity_type=e.entity_type, entity_id=e.entity_id, payload=e.payload,
                             workspace_id=e.workspace_id)
        out.append({"seq": e.seq, "at": iso(e.occurred_at), "actor": e.actor, "action": e.action,
                    "entity_type": e.entity_type, "entity_id": e.entity_id, "payload": e.payload,
                    "hash": e.hash, "hash_ok": h == e.hash})
    return out


# ---------------------------------------------------------------------------------------------------------
# Model lineage


def _summary(session: Session, mv_id: uuid.UUID) -> dict[str, Any]:
    ln = tr.lineage
    base = select(ln.c.example_id, ln.c.revision_id, ln.c.tokens).where(ln.c.model_version_id == mv_id).subquery()
    totals = session.execute(select(func.count(), func.coalesce(func.sum(base.c.tokens), 0))).one()
    out: dict[str, Any] = {"examples": totals[0], "tokens": int(totals[1])}
    for key, col in (("by_source", Example.source), ("by_license", Example.license),
                     ("by_legal_basis", Example.legal_basis), ("by_status", Example.status)):
        rows = session.execute(select(col, func.count()).select_from(base)
                               .join(Example, Example.id == base.c.example_id).group_by(col))
        out[key] = {(k if k is not None else "unknown"): n for k, n in sorted(rows, key=lambda r: -r[1])}
    # Reviews of the revision that was trained: who vouched for exactly what the model saw.
    rows = session.execute(select(Review.reviewer, Review.decision, func.count()).select_from(base)
                           .join(Review, Review.revision_id == base.c.revision_id)
                           .group_by(Review.reviewer, Review.decision))
    by_reviewer: dict[str, dict[str, int]] = defaultdict(dict)
    for reviewer, decision, n in rows:
        by_reviewer[reviewer][decision] = n
    out["by_reviewer"] = dict(sorted(by_reviewer.items()))
    rows = session.execute(select(PiiFinding.operator, PiiFinding.entity_type, func.count()).select_from(base)
                           .join(PiiFinding, PiiFinding.revision_id == base.c.revision_id)
                           .group_by(PiiFinding.operator, PiiFinding.entity_type))
    by_op: dict[str, dict[str, int]] = defaultdict(dict)
    for op, et, n in rows:
        by_op[op][et] = n
    out["by_pii_operator"] = dict(sorted(by_op.items()))
    # Pairwise picks behind a preference model (issue 18): a swapped pair's picks are on its parent revision.
    rev = ExampleRevision.__table__
    judged = case((rev.c.reason == "pairwise_swap", rev.c.parent_id), else_=rev.c.id)
    rows = session.execute(select(PairwiseJudgment.reviewer, PairwiseJudgment.preferred, func.count())
                           .select_from(base).join(rev, rev.c.id == base.c.revision_id)
                           .join(PairwiseJudgment, PairwiseJudgment.revision_id == judged)
                           .group_by(PairwiseJudgment.reviewer, PairwiseJudgment.preferred)).all()
    if rows:
        by_cmp: dict[str, dict[str, int]] = defaultdict(dict)
        for reviewer, preferred, n in rows:
            by_cmp[reviewer][preferred] = n
        out["by_comparison"] = dict(sorted(by_cmp.items()))
    return out


def model_lineage(session: Session, *, name: str, version: int) -> dict[str, Any]:
    mvr = get_model_version(session, name, version)
    run = session.execute(select(tr.training_runs).where(tr.training_runs.c.id == mvr.run_id)).first()
    snap = session.get(Snapshot, run.snapshot_id) if run is not None and run.snapshot_id else None
    mv = model_version_views(session, [mvr.id])[0]
    return {
        "model_version": mv,
        "run": None if run is None else {
            "id": str(run.id), "status": run.status, "base_model": run.base_model, "method": run.method,
            "hyperparameters": run.hyperparameters, "created_by": run.created_by,
            "created_at": iso(run.created_at), "started_at": iso(run.started_at),
            "finished_at": iso(run.finished_at)},
        "snapshot": None if snap is None else {
            "id": str(snap.id), "name": snap.name, "dataset_id": str(snap.dataset_id),
            "manifest_sha256": snap.manifest_sha256, "member_count": snap.member_count,
            "contains_erased": snap.contains_erased},
        "summary": _summary(session, mvr.id),
        "warnings": tainted_alias_warnings([mv]),
        **evaluation_facts(session, mvr.id, run.id if run is not None else None, name, version),
    }


def evaluation_facts(session: Session, mv_id: uuid.UUID, run_id: uuid.UUID | None, name: str,
                     version: int) -> dict[str, Any]:
    """What a version's evaluations found (issue 17), its planted canaries (never their secrets) and the
    alias moves that overrode a failing gate. Results show for succeeded evaluations only."""
    ev = tr.evaluations.c
    evals = [{"id": str(r.id), "status": r.status, "suites": r.suites,
              "results": r.results if r.status == "succeeded" else {},
              "error_code": r.error_code, "finished_at": iso(r.finished_at)}
             for r in session.execute(select(tr.evaluations).where(ev.model_version_id == mv_id)
                                      .order_by(ev.id.desc()))]
    cn = tr.canaries.c
    planted = [] if run_id is None else [
        {"id": r.canary_id, "template": r.template, "repetitions": r.repetitions}
        for r in session.execute(select(cn.canary_id, cn.template, cn.repetitions).where(cn.run_id == run_id)
                                 .order_by(cn.canary_id))]
    h = tr.alias_history.c
    overrides = [{"alias": r.alias, "actor": r.actor, "at": iso(r.at), "reason": r.reason}
                 for r in session.execute(select(h.alias, h.actor, h.at, h.reason).where(
                     h.name == name, h.to_version == version, h.override.is_(True)).order_by(h.id))]
    return {"evaluations": evals, "canaries": planted, "gate_overrides": overrides}


def _reviewer_match(reviewer: str) -> ColumnElement[bool]:
    # A reviewer is recorded as "name#keyid"; asking by the bare name finds every key of that person.
    return or_(Review.reviewer == reviewer, Review.reviewer.like(f"{reviewer}#%"))


def _has_tag(session: Session, tag: str) -> ColumnElement[bool]:
    if is_pg(session):
        return Example.tags.op("?")(tag)
    return text("EXISTS (SELECT 1 FROM json_each(examples.tags) WHERE json_each.value = :tag)").bindparams(tag=tag)


def model_examples(session: Session, *, name: str, version: int, source: str | None = None,
                   license: str | None = None, reviewer: str | None = None, tag: str | None = None,
                   cursor: str | None = None, limit: int = 50,
                   actor: Actor | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Page of the examples a model version trained, in example-id order: a range scan of the lineage
    (model_version_id, example_id) index that probes each example by primary key and stops after `limit`
    matches, so page 1 costs about limit / selectivity probes whatever the version's size."""
    ln, mv = tr.lineage, tr.model_versions
    if datasets.visible_dataset_ids(session) is not None:
        get_model_version(session, name, version)  # another workspace's version: 404 before any row
    # The version's id as an InitPlan of the page query itself: one round trip; the 404 check runs only
    # when the page comes back empty.
    mv_id = select(mv.c.id).where(mv.c.name == name, mv.c.version == version).scalar_subquery()
    conds: list[ColumnElement[bool]] = []
    if source is not None:
        conds.append(Example.source == source)
    if license is not None:
        conds.append(Example.license == license)
    if tag is not None:
        conds.append(_has_tag(session, tag))
    cols = (Example.source, Example.source_ref, Example.license, Example.legal_basis, Example.status,
            Example.dataset_id)
    if is_pg(session):
        # A LATERAL probe fenced by OFFSET 0: left to itself the planner merge-joins the two id-ordered
        # indexes, and the examples side of a merge join starts at the table's first id, which is 100,000
        # rows of walking for a version trained on recent data (60 ms instead of 1).
        e = select(*cols).where(Example.id == ln.c.example_id, *conds).offset(0).lateral("e")
        q = (select(ln.c.example_id, ln.c.revision_id, ln.c.tokens, ln.c.epochs, *e.c)
             .select_from(ln.join(e, true())))
    else:
        q = (select(ln.c.example_id, ln.c.revision_id, ln.c.tokens, ln.c.epochs, *cols)
             .join(Example, Example.id == ln.c.example_id).where(*conds))
    q = q.where(ln.c.model_version_id == mv_id)
    if reviewer is not None:
        q = q.where(exists().where(Review.revision_id == ln.c.revision_id, _reviewer_match(reviewer)))
    if cursor:
        q = q.where(ln.c.example_id > decode_cursor(cursor))
    rows = session.execute(q.order_by(ln.c.example_id).limit(limit + 1)).all()
    if not rows:
        get_model_version(session, name, version)
    nxt = encode_cursor(rows[limit - 1].example_id) if len(rows) > limit else None
    items = [{"example_id": str(r.example_id), "revision_id": str(r.revision_id), "dataset_id": str(r.dataset_id),
              "source": r.source, "source_ref": privacy.source_ref_for(actor, r.source_ref), "license": r.license,
              "legal_basis": r.legal_basis,
              "status": r.status, "tokens": r.tokens, "epochs": r.epochs} for r in rows[:limit]]
    return items, nxt


# ---------------------------------------------------------------------------------------------------------
# Reverse lookups


def model_versions_trained_on(session: Session, example_filter: ColumnElement[bool]) -> list[dict[str, Any]]:
    """Model versions whose lineage holds at least one example matching `example_filter`, each with how
    many such examples it trained."""
    ln = tr.lineage
    rows = session.execute(
        select(ln.c.model_version_id, func.count()).join(Example, Example.id == ln.c.example_id)
        .where(example_filter).group_by(ln.c.model_version_id)
    ).all()
    extra = {mv_id: {"matching_examples": n} for mv_id, n in rows}
    return model_version_views(session, list(extra), extra=extra)


def model_versions_with(session: Session, facet: str, value: str | None) -> list[dict[str, Any]]:
    """Every model version trained on examples whose source / license / legal basis is `value`, with how
    many such examples each: from the per-version counts (app/lineage/facets.py), not the lineage rows."""
    counts = facets.versions_with(session, facet, value)
    return model_version_views(session, list(counts),
                               extra={k: {"matching_examples": n} for k, n in counts.items()})


def snapshots_containing(session: Session, example_filter: ColumnElement[bool]) -> list[dict[str, Any]]:
    rows = session.execute(
        select(SnapshotMember.snapshot_id, func.count()).join(Example, Example.id == SnapshotMember.example_id)
        .where(example_filter).group_by(SnapshotMember.snapshot_id)
    ).all()
    counts = dict(rows)
    if not counts:
        return []
    return [{"id": str(s.id), "name": s.name, "dataset_id": str(s.dataset_id), "manifest_sha256": s.manifest_sha256,
             "contains_erased": s.contains_erased, "matching_examples": counts[s.id]}
            for s in session.scalars(select(Snapshot).where(Snapshot.id.in_(list(counts)))
                                     .order_by(Snapshot.created_at))]


def _example_page(session: Session, cond: ColumnElement[bool], cursor: str | None, limit: int,
                  actor: Actor | None) -> tuple[list[dict[str, Any]], str | None]:
    q = select(Example.id, Example.dataset_id, Example.status, Example.source, Example.source_ref,
               Example.license).where(cond)
    if cursor:
        q = q.where(Example.id > decode_cursor(cursor))
    rows = session.execute(q.order_by(Example.id).limit(limit + 1)).all()
    nxt = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return [{"example_id": str(r.id), "dataset_id": str(r.dataset_id), "status": r.status, "source": r.source,
             "source_ref": privacy.source_ref_for(actor, r.source_ref), "license": r.license}
            for r in rows[:limit]], nxt


def _counts(session: Session, cond: ColumnElement[bool]) -> dict[str, Any]:
    by_status = dict(session.execute(select(Example.status, func.count()).where(cond).group_by(Example.status)).all())
    return {"examples": sum(by_status.values()), "by_status": by_status}


def _reverse(session: Session, kind: str, value: str, cond: ColumnElement[bool], cursor: str | None,
             limit: int, actor: Actor | None) -> dict[str, Any]:
    visible = datasets.visible_dataset_ids(session)
    if visible is not None:  # only the caller's workspaces' examples, and what they went into
        cond = cond & Example.dataset_id.in_(visible)
    items, nxt = _example_page(session, cond, cursor, limit, actor)
    # The facet table answers for the whole installation; scoped, the versions come from the examples.
    mvs = (model_versions_with(session, kind, value) if kind in facets.FACETS and visible is None
           else model_versions_trained_on(session, cond))
    return {kind: value, "counts": _counts(session, cond), "examples": {"items": items, "next_cursor": nxt},
            "snapshots": snapshots_containing(session, cond), "model_versions": mvs,
            "warnings": tainted_alias_warnings(mvs)}


def by_source(session: Session, *, source: str, cursor: str | None = None, limit: int = 50,
              actor: Actor | None = None) -> dict[str, Any]:
    return _reverse(session, "source", source, Example.source == source, cursor, limit, actor)


def by_license(session: Session, *, license: str, cursor: str | None = None, limit: int = 50,
               actor: Actor | None = None) -> dict[str, Any]:
    return _reverse(session, "license", license, Example.license == license, cursor, limit, actor)


def by_reviewer(session: Session, *, reviewer: str, decision: str | None = None, cursor: str | None = None,
                limit: int = 50, actor: Actor | None = None) -> dict[str, Any]:
    rv = select(Review.example_id).where(_reviewer_match(reviewer))
    if decision:
        rv = rv.where(Review.decision == decision)
    cond = Example.id.in_(rv)
    out = _reverse(session, "reviewer", reviewer, cond, cursor, limit, actor)
    dq = select(Review.decision, func.count()).where(_reviewer_match(reviewer))
    if (visible := datasets.visible_dataset_ids(session)) is not None:
        dq = dq.where(Review.example_id.in_(select(Example.id).where(Example.dataset_id.in_(visible))))
    decisions = session.execute(dq.group_by(Review.decision)).all()
    out["decisions"] = dict(decisions)
    return out


def models_for_example_ids(session: Session, example_ids: list[uuid.UUID]) -> list[dict[str, Any]]:
    if not example_ids:
        return []
    return model_versions_trained_on(session, Example.id.in_(example_ids))


def require_limit(limit: int) -> int:
    if not 1 <= limit <= 1000:
        raise ValidationFailed("limit must be between 1 and 1000",
                               details=[{"field": "limit", "code": "range", "message": "1..1000"}])
    return limit



