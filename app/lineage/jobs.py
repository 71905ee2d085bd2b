"""Lineage jobs that own their transactions: an erasure request, previewed or executed.

The selection reads in the request's session; the request row is written in a transaction of its own
and execution commits one batch of examples at a time (`erasure.erase_batch`), so a crash leaves a
`running` request that the same POST resumes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.auth import Actor
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.ids import new_id
from app.lineage import erasure
from app.models.base import utcnow
from app.models.lineage import ErasureRequest

log = logging.getLogger(__name__)


def create_erasure(session: Session, *, data: erasure.ErasureCreate, actor: Actor) -> tuple[dict[str, Any], int]:
    """Preview or execute. Returns (response, HTTP status): 201 for a new request that matched something,
    200 when nothing matched (an empty report is an answer, not an error); a replay of an executed
    request returns that request's response and status unchanged."""
    sel = data.selector
    sel_sha = sel.sha256()
    cfg = get_settings().erasure
    t0 = time.perf_counter()
    matched = erasure.select_examples(session, sel, actor)
    t_select = time.perf_counter()
    live = sorted((eid, ds) for eid, ds, status in matched if status != "erased")
    todo = [eid for eid, _ in live]
    already = len(matched) - len(todo)
    ws_of = erasure.dataset_workspaces(session, {ds for _, ds, _ in matched})

    if not data.dry_run:
        prior = session.scalar(select(ErasureRequest).where(
            ErasureRequest.selector_sha256 == sel_sha, ErasureRequest.dry_run.is_(False),
            ErasureRequest.status.in_(("completed", "running"))).order_by(ErasureRequest.created_at.desc()).limit(1))
        visible = erasure.visible_dataset_strs(session)
        if prior is not None and not erasure.may_see(session, prior, visible):
            prior = None  # another workspace's request with the same selector is not this one's replay
        if prior is not None and prior.status == "completed" and not todo:
            out = erasure.scoped(session, prior, erasure.response(prior, replayed=True, session=session), visible)
            return out, 201 if prior.report.get("examples") else 200
        if prior is not None and prior.status == "running":
            # A crashed or interrupted execution: finish it (what it already erased is no longer selected).
            return _execute(prior.id, erasure.plan_batches(live, ws_of, cfg.batch_size), actor, resumed=True,
                            needle=sel.raw_text_contains)

    erasure.check_breadth(session, [m for m in matched if m[2] != "erased"], data.confirm)
    t_breadth = time.perf_counter()
    imp = erasure.impact(session, todo, {ds for eid, ds, status in matched if status != "erased"})
    t_impact = time.perf_counter()
    per_ds = Counter(str(ds) for eid, ds, status in matched if status != "erased")
    ws_of.update(erasure.dataset_workspaces(session, {uuid.UUID(x["dataset_id"]) for x in imp["snapshots"]} - set(ws_of)))
    sections = erasure.workspace_sections(matched, ws_of, imp, cfg.batch_size)
    if data.dry_run:
        # What execution would redact, counted now (execution counts what it redacted, batch by batch).
        for w, sec in sections.items():
            sec["comments_redacted"] = erasure.count_comments(
                session, [eid for eid, ds in live if str(ws_of[ds]) == w])
    report = {"examples": len(todo), "example_ids": [str(e) for e in todo], "already_erased": already,
              "datasets": dict(per_ds), "snapshots": imp["snapshots"],
              "model_versions": [{k: m[k] for k in ("id", "name", "version", "run_id", "status", "erased_examples")}
                                 for m in imp["model_versions"]],
              "aliases": imp["aliases"], "warnings": erasure.warnings_for(imp["aliases"], data.dry_run),
              "batches": sum(sec["batches"] for sec in sections.values()),
              "workspaces": sections,
              # Where the time went: an operator sizing a large request wants to know.
              "timings_s": {"select": round(t_select - t0, 3), "breadth_check": round(t_breadth - t_select, 3),
                            "impact": round(t_impact - t_breadth, 3)}}
    if data.dry_run:
        report["comments_redacted"] = {k: sum(sec["comments_redacted"][k] for sec in sections.values())
                                       for k in erasure.REDACTED_TEXT}
    req_id = new_id()
    now = utcnow()
    status = "previewed" if data.dry_run else ("running" if todo else "completed")
    # One event per workspace the request is about, each saying only what it does (or would do) there; a
    # request that matched nothing is about the workspaces its selector searched, and who may see it
    # follows its events (erasure.may_see).
    if not sections:
        report["workspaces"] = {str(w): erasure.empty_section() for w in erasure.empty_scope(session, sel, actor)}
    parts = {w: erasure.section_payload(sec, imp["aliases"]) for w, sec in report["workspaces"].items()} \
        or {None: erasure.section_payload(erasure.empty_section(), [])}
    with session_scope() as s:
        s.add(ErasureRequest(id=req_id, selector=sel.redacted(), selector_sha256=sel_sha, reason=data.reason,
                             dry_run=data.dry_run, confirm=data.confirm, status=status, requested_by=actor.ref,
                             report=report, batches_done=0, created_at=now,
                             finished_at=None if status == "running" else now))
        for w, part in parts.items():
            audit.record(s, actor=actor.ref, action="erasure.previewed" if data.dry_run else "erasure.requested",
                         entity_type="erasure_request", entity_id=req_id,
                         workspace_id=None if w is None else uuid.UUID(w),
                         payload={"selector": sel.redacted(), "reason": data.reason, **part,
                                  "snapshots": len(part["snapshots"]), "model_versions": len(part["model_versions"])})
    if status != "running":
        with session_scope() as s:
            req = s.get(ErasureRequest, req_id)
            return erasure.response(req, session=s), 201 if todo else 200
    return _execute(req_id, erasure.plan_batches(live, ws_of, cfg.batch_size), actor, plan=imp["plan"],
                    needle=sel.raw_text_contains)


def _execute(req_id: uuid.UUID, batches: list[tuple[uuid.UUID, list[uuid.UUID]]], actor: Actor, *,
             resumed: bool = False, plan: dict[str, Any] | None = None,
             needle: str | None = None) -> tuple[dict[str, Any], int]:
    with session_scope() as s:
        done0 = s.get(ErasureRequest, req_id).batches_done
    t0 = time.perf_counter()
    try:
        for n, (ws, ids) in enumerate(batches):
            with session_scope() as s:
                erasure.erase_batch(s, req_id, ids, done0 + n, actor, plan, needle, workspace_id=ws)
    except Exception as exc:
        log.exception("erasure request %s failed in a batch", req_id)
        with session_scope() as s:
            s.execute(update(ErasureRequest).where(ErasureRequest.id == req_id)
                      .values(error=f"{type(exc).__name__}: {exc}"))
        raise
    with session_scope() as s:
        req = s.get(ErasureRequest, req_id)
        report = dict(req.report)
        report["warnings"] = erasure.warnings_for(report.get("aliases", []), False)
        report["timings_s"] = {**report.get("timings_s", {}), "execute": round(time.perf_counter() - t0, 3)}
        req.report = report
        req.status = "completed"
        req.error = None
        req.finished_at = utcnow()
        names = {m["id"]: f"{m['name']}:{m['version']}" for m in report.get("model_versions", [])}
        sections = report.get("workspaces") or {}
        # Per workspace, as the request's first event; a request from before the split, as it was: one event.
        for w, part in ({w: erasure.section_payload(sec, report.get("aliases", [])) for w, sec in sections.items()}
                        or {None: None}).items():
            mine = part or {"examples": report.get("examples", 0), "snapshots": [x["id"] for x in report.get("snapshots", [])],
                            "model_versions": list(names), "aliases": report.get("aliases", [])}
            audit.record(s, actor=actor.ref, action="erasure.completed", entity_type="erasure_request",
                         entity_id=req_id, workspace_id=None if w is None else uuid.UUID(w),
                         payload={"examples": mine["examples"], "resumed": resumed, "snapshots": mine["snapshots"],
                                  "model_versions_tainted": [names[i] for i in mine["model_versions"] if i in names],
                                  "aliases": mine["aliases"]})
        for a in report.get("aliases", []):
            log.warning("erasure %s tainted %s v%s, still served by alias %s", req_id, a["name"], a["version"],
                        a["alias"])
        s.flush()
        return erasure.response(req, session=s), 201
