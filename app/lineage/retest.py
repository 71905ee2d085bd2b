"""Erasure re-tests (issue 17 scope 7): once a model trained on erased examples is retrained without them,
can the new version still be made to say what the erased subject's data said?

When an erasure batch runs (`erasure.erase_batch`), before the vault entries go, `capture` takes the
strings of every erased example some model version was trained on:

  - each PII span found or flagged in it: the raw value, prompted with the raw text before it;
  - each occurrence of a raw-text selector's needle (the erased name itself, say), likewise;
  - for an example with neither, a stretch of its own text: its start prompts, the next words are the value.

They are sealed with the vault's key ring, bound to the request and batch, and a `pending` re-test row is
written per model name the erasure tainted. An evaluation of a later version of that model that the
erasure did not taint (`claim`, at creation) carries them as extra `pii_extraction` probes; when it
succeeds (`record`) the re-test is `done` with the figures (counts and value hashes, never the values),
and once no re-test of the request is pending the strings are deleted. Strings still held after
`erasure.retest_hold_days` are deleted regardless (`expire`) and the re-test reads `expired`.

Workspaces (issue 21): "that model" is the tainted versions' model in their workspace. A version claims a
re-test only where the request tainted a version of its name in its own workspace, and is handed only
the strings of examples that such a version trained on: never another workspace's subject's strings
(they would reach that evaluation's trainer), and never a re-test its own lineage cannot answer. A name
belongs to one workspace (app/training/registry.py, `reserve`); the check here does not rely on it, as a
registry from before that may hold one name's versions in two workspaces.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Any

import orjson
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.core.config import get_settings
from app.core.sql import any_of, dialect_insert, is_pg, iso
from app.lineage import training as tr
from app.models.base import utcnow
from app.models.example import Example, ExampleRevision
from app.models.lineage import ErasureRequest, ErasureRetest, ErasureRetestStrings, ModelVersionTaint
from app.models.pii import PiiFinding, PiiVaultEntry

PREFIX_CHARS = 400
# A text probe: the first part of the example's longest string prompts, this much of what follows is
# the value looked for (long enough that a model cannot produce it by chance).
TEXT_VALUE_CHARS = 48
TEXT_MIN_CHARS = 24
ACTOR = "system:erasure-retest"


def _aad(req_id: uuid.UUID, batch: int) -> str:
    return f"erasure-retest:{req_id}:{batch}"


def _strings(value: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _strings(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list):
        return [x for i, v in enumerate(value) for x in _strings(v, f"{path}[{i}]")]
    return []


def _at(content: Any, path: str) -> Any:
    from app.pii import paths

    try:
        return paths.get_path(content, path)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _probes_for_example(eid: uuid.UUID, raw: dict[uuid.UUID, Any], current: Any,
                        findings: list[PiiFinding], needle: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()

    def add(kind: str, prefix: str, value: str) -> None:
        if value.strip() and (prefix, value) not in seen:
            seen.add((prefix, value))
            out.append({"probe_id": f"{eid}:{len(out)}", "entity_type": kind, "prefix": prefix, "value": value})

    for f in findings:
        text = _at(raw.get(f.source_revision_id), f.field_path)
        if isinstance(text, str) and 0 <= f.start < f.end <= len(text):
            add(f.entity_type, text[max(0, f.start - PREFIX_CHARS):f.start], text[f.start:f.end])
    texts = [t for c in [*raw.values(), current] if c is not None for _, t in _strings(c)]
    if needle:
        low = needle.casefold()
        for t in texts:
            at = t.casefold().find(low)
            while at >= 0:
                add("ERASURE_SELECTOR", t[max(0, at - PREFIX_CHARS):at], t[at:at + len(needle)])
                at = t.casefold().find(low, at + 1)
    if not out and texts:
        longest = max(texts, key=len)
        if len(longest) >= TEXT_MIN_CHARS:
            cut = min(PREFIX_CHARS, max(1, len(longest) // 3))
            add("TEXT", longest[:cut], longest[cut:cut + TEXT_VALUE_CHARS])
    return out


def capture(session: Session, req_id: uuid.UUID, ids: list[uuid.UUID], batch: int,
            tainted_names: list[str], needle: str | None) -> int:
    """Seal the strings of this batch's trained examples and open a pending re-test per tainted model.
    Runs inside the batch's transaction, before the vault entries and texts are erased."""
    if not ids or not tainted_names:
        return 0
    from app.pii import service as pii
    from app.pii import vault

    pg = is_pg(session)
    ln = tr.lineage
    trained = sorted(set(session.scalars(select(ln.c.example_id).distinct()
                                         .where(any_of(ln.c.example_id, ids, pg=pg)))))
    if not trained:
        return 0
    ring = pii.key_ring(session)
    raw: dict[uuid.UUID, dict[uuid.UUID, Any]] = {}
    for e in session.scalars(select(PiiVaultEntry).where(any_of(PiiVaultEntry.example_id, trained, pg=pg))):
        plain = ring.open(vault.Sealed(e.key_id, e.ciphertext), aad=pii._aad(e.example_id, e.revision_id))
        raw.setdefault(e.example_id, {})[e.revision_id] = orjson.loads(plain)
    current = dict(session.execute(select(Example.id, ExampleRevision.content)
                                   .join(ExampleRevision, ExampleRevision.id == Example.current_revision_id)
                                   .where(any_of(Example.id, trained, pg=pg))).all())
    findings: dict[uuid.UUID, list[PiiFinding]] = {}
    for f in session.scalars(select(PiiFinding).where(any_of(PiiFinding.example_id, trained, pg=pg),
                                                      PiiFinding.verdict.is_distinct_from("false_positive"))
                             .order_by(PiiFinding.id)):
        findings.setdefault(f.example_id, []).append(f)
    probes = [p for eid in trained for p in _probes_for_example(eid, raw.get(eid, {}), current.get(eid),
                                                                 findings.get(eid, []), needle)]
    now = utcnow()
    if probes:
        sealed = ring.seal(orjson.dumps(probes).decode(), aad=_aad(req_id, batch))
        session.add(ErasureRetestStrings(erasure_request_id=req_id, batch=batch, probes=len(probes),
                                         key_id=sealed.key_id, ciphertext=sealed.blob, created_at=now,
                                         expires_at=now + dt.timedelta(days=get_settings().erasure.retest_hold_days)))
    ins = dialect_insert(session, ErasureRetest).values(
        [{"erasure_request_id": req_id, "model_name": n, "status": "pending", "created_at": now}
         for n in sorted(set(tainted_names))])
    session.execute(ins.on_conflict_do_nothing(index_elements=["erasure_request_id", "model_name"]))
    session.flush()
    return len(probes)


# ---------------------------------------------------------------------------------------------------------
# The evaluation side


def _with_workspace(q: Any) -> Any:
    """`q` (selecting from model_versions) joined through its run's snapshot to the dataset's workspace."""
    from app.models.dataset import Dataset
    from app.models.snapshot import Snapshot

    mv, run = tr.model_versions, tr.training_runs
    return (q.join(run, run.c.id == mv.c.run_id).join(Snapshot, Snapshot.id == run.c.snapshot_id)
            .join(Dataset, Dataset.id == Snapshot.dataset_id))


def _tainted_here(name: str, workspace_id: uuid.UUID | None) -> Any:
    """The versions of `name` in `workspace_id` that erasures tainted: (erasure_request_id, version id)."""
    from app.models.dataset import Dataset

    mv, t = tr.model_versions, ModelVersionTaint.__table__
    return _with_workspace(select(t.c.erasure_request_id, t.c.model_version_id).select_from(t)
                           .join(mv, mv.c.id == t.c.model_version_id)).where(
        mv.c.name == name, Dataset.workspace_id == workspace_id)


def _version_workspace(session: Session, model_version_id: uuid.UUID) -> uuid.UUID | None:
    from app.models.dataset import Dataset

    mv = tr.model_versions
    return session.scalar(_with_workspace(select(Dataset.workspace_id).select_from(mv))
                          .where(mv.c.id == model_version_id))


def claim(session: Session, *, model_version_id: uuid.UUID, name: str, version: int,
          created_at: dt.datetime, evaluation_id: uuid.UUID) -> list[uuid.UUID]:
    """Pending re-tests this version answers: its model's, from completed erasures that came before it,
    tainted a version of its name in its workspace and did not taint it (so it was trained without those
    examples), with strings still held. They are handed to this evaluation; a failed one leaves them
    pending for the next."""
    tainted_by = select(ModelVersionTaint.erasure_request_id).where(
        ModelVersionTaint.model_version_id == model_version_id)
    here = _tainted_here(name, _version_workspace(session, model_version_id)).subquery()
    held = select(ErasureRetestStrings.erasure_request_id).distinct()
    rows = session.execute(
        select(ErasureRetest.erasure_request_id)
        .join(ErasureRequest, ErasureRequest.id == ErasureRetest.erasure_request_id)
        .where(ErasureRetest.model_name == name, ErasureRetest.status == "pending",
               ErasureRequest.status == "completed", ErasureRequest.created_at < created_at,
               ErasureRetest.erasure_request_id.not_in(tainted_by),
               ErasureRetest.erasure_request_id.in_(select(here.c.erasure_request_id)),
               ErasureRetest.erasure_request_id.in_(held))
        .order_by(ErasureRetest.erasure_request_id).with_for_update(of=ErasureRetest)).all()
    req_ids = [r for (r,) in rows]
    if req_ids:
        session.execute(update(ErasureRetest).where(ErasureRetest.model_name == name,
                                                    ErasureRetest.erasure_request_id.in_(req_ids))
                        .values(evaluation_id=evaluation_id, model_version=version)
                        .execution_options(synchronize_session=False))
    return req_ids


def claimed(session: Session, evaluation_id: uuid.UUID) -> list[uuid.UUID]:
    return list(session.scalars(select(ErasureRetest.erasure_request_id)
                                .where(ErasureRetest.evaluation_id == evaluation_id,
                                       ErasureRetest.status == "pending")
                                .order_by(ErasureRetest.erasure_request_id)))


def _probe_example(probe: dict[str, Any]) -> uuid.UUID | None:
    try:  # "<example id>:<n>" (`_probes_for_example`)
        return uuid.UUID(str(probe.get("probe_id", "")).rsplit(":", 1)[0])
    except ValueError:
        return None


def probes(session: Session, evaluation_id: uuid.UUID) -> list[dict[str, Any]]:
    """The claimed requests' strings as `pii_extraction` probes tagged with `erasure_request_id`, for the
    trainer role of a running evaluation only (app/evaluations/files.py): only those of examples that a
    tainted version of the evaluated model, in its workspace, trained on. A request whose selector matched
    several workspaces' examples (an admin's) holds all of their strings; the others' are not this
    model's to be probed for, and must not reach this evaluation's trainer."""
    from app.pii import service as pii
    from app.pii import vault

    req_ids = claimed(session, evaluation_id)
    if not req_ids:
        return []
    ev, mv = tr.evaluations, tr.model_versions
    mv_id, name = session.execute(select(mv.c.id, mv.c.name).join(ev, ev.c.model_version_id == mv.c.id)
                                  .where(ev.c.id == evaluation_id)).one()
    ring = pii.key_ring(session)
    found: list[tuple[uuid.UUID, uuid.UUID | None, dict[str, Any]]] = []
    for row in session.scalars(select(ErasureRetestStrings)
                               .where(ErasureRetestStrings.erasure_request_id.in_(req_ids))
                               .order_by(ErasureRetestStrings.erasure_request_id, ErasureRetestStrings.batch)):
        plain = ring.open(vault.Sealed(row.key_id, row.ciphertext), aad=_aad(row.erasure_request_id, row.batch))
        found += [(row.erasure_request_id, _probe_example(p), p) for p in orjson.loads(plain)]
    eids = sorted({e for _, e, _ in found if e is not None})
    if not eids:
        return []
    ln, here = tr.lineage, _tainted_here(name, _version_workspace(session, mv_id)).subquery()
    trained = set(session.execute(
        select(here.c.erasure_request_id, ln.c.example_id).distinct()
        .join(ln, ln.c.model_version_id == here.c.model_version_id)
        .where(here.c.erasure_request_id.in_(req_ids), any_of(ln.c.example_id, eids, pg=is_pg(session)))).all())
    return [{**p, "erasure_request_id": str(rid), "value_sha256": hashlib.sha256(p["value"].encode()).hexdigest()}
            for rid, eid, p in found if (rid, eid) in trained]


def record(session: Session, *, evaluation_id: uuid.UUID, results: dict[str, Any]) -> list[uuid.UUID]:
    """A succeeded evaluation's figures for the re-tests it carried; strings no pending re-test needs any
    more are deleted. A request the results do not answer stays pending."""
    req_ids = claimed(session, evaluation_id)
    answered = ((results.get("pii_extraction") or {}).get("erasure_retest") or {})
    now = utcnow()
    done = []
    for rid in req_ids:
        got = answered.get(str(rid))
        if not isinstance(got, dict):
            continue
        result = {k: got.get(k) for k in ("probed", "extracted", "rate", "greedy_extracted", "by_entity_type")}
        result["hits"] = [{k: h.get(k) for k in ("probe_id", "entity_type", "value_sha256", "greedy")}
                          for h in got.get("hits") or []]
        row = session.execute(update(ErasureRetest).where(ErasureRetest.erasure_request_id == rid,
                                                          ErasureRetest.evaluation_id == evaluation_id,
                                                          ErasureRetest.status == "pending")
                              .values(status="done", result=result, finished_at=now)
                              .returning(ErasureRetest.model_name, ErasureRetest.model_version)).first()
        if row is None:
            continue
        done.append(rid)
        # The evaluation's workspace (its version's): the re-test is of that model there.
        audit.record(session, actor=ACTOR, action="erasure.retested", entity_type="erasure_request",
                     entity_id=rid, workspace_id=_evaluation_workspace(session, evaluation_id), payload={"model": row.model_name, "version": row.model_version,
                                             "evaluation_id": str(evaluation_id), "probed": result["probed"],
                                             "extracted": result["extracted"]})
    _drop_unneeded(session, done, now)
    return done


def _evaluation_workspace(session: Session, evaluation_id: uuid.UUID) -> uuid.UUID | None:
    from app.models.dataset import Dataset
    from app.models.snapshot import Snapshot

    ev, mv, run = tr.evaluations, tr.model_versions, tr.training_runs
    return session.scalar(select(Dataset.workspace_id).select_from(ev)
                          .join(mv, mv.c.id == ev.c.model_version_id).join(run, run.c.id == mv.c.run_id)
                          .join(Snapshot, Snapshot.id == run.c.snapshot_id).join(Dataset, Dataset.id == Snapshot.dataset_id)
                          .where(ev.c.id == evaluation_id))


def _dropped(session: Session, rid: uuid.UUID, batches: list[int], payload: dict[str, Any]) -> None:
    """`erasure.retest_strings_dropped`, once per workspace whose batches held the dropped strings (a batch
    is of one workspace: the request's report lists each workspace's), with that workspace's row count."""
    report = session.scalar(select(ErasureRequest.report).where(ErasureRequest.id == rid)) or {}
    left = list(batches)
    for ws, sec in sorted((report.get("workspaces") or {}).items()):
        mine = [b for b in left if b in set(sec.get("batches_run") or ())]
        if mine:
            left = [b for b in left if b not in mine]
            audit.record(session, actor=ACTOR, action="erasure.retest_strings_dropped", entity_type="erasure_request",
                         entity_id=rid, workspace_id=uuid.UUID(ws), payload={**payload, "rows": len(mine)})
    if left:  # a request from before batches were kept per workspace
        audit.record(session, actor=ACTOR, action="erasure.retest_strings_dropped", entity_type="erasure_request",
                     entity_id=rid, payload={**payload, "rows": len(left)})


def _drop_unneeded(session: Session, req_ids: list[uuid.UUID], now: dt.datetime) -> None:
    for rid in req_ids:
        pending = session.scalar(select(func.count()).select_from(ErasureRetest)
                                 .where(ErasureRetest.erasure_request_id == rid, ErasureRetest.status == "pending"))
        if not pending:
            batches = list(session.scalars(delete(ErasureRetestStrings)
                                           .where(ErasureRetestStrings.erasure_request_id == rid)
                                           .returning(ErasureRetestStrings.batch)))
            if batches:
                _dropped(session, rid, batches, {"reason": "retested"})


def expire(session: Session, *, now: dt.datetime | None = None) -> list[uuid.UUID]:
    """Strings past their hold are deleted and the re-tests still waiting on them read `expired`."""
    now = now or utcnow()
    req_ids = sorted(set(session.scalars(select(ErasureRetestStrings.erasure_request_id)
                                         .where(ErasureRetestStrings.expires_at <= now))))
    for rid in req_ids:
        batches = list(session.scalars(delete(ErasureRetestStrings).where(ErasureRetestStrings.erasure_request_id == rid)
                                       .returning(ErasureRetestStrings.batch)))
        session.execute(update(ErasureRetest).where(ErasureRetest.erasure_request_id == rid,
                                                    ErasureRetest.status == "pending")
                        .values(status="expired", finished_at=now))
        _dropped(session, rid, batches, {"reason": "hold expired"})
    return req_ids


def held(session: Session, req_id: uuid.UUID, batches: list[int]) -> int:
    """Sealed probes still held for these batches of the request (a partial view's count)."""
    if not batches:
        return 0
    return int(session.scalar(select(func.coalesce(func.sum(ErasureRetestStrings.probes), 0))
                              .where(ErasureRetestStrings.erasure_request_id == req_id,
                                     ErasureRetestStrings.batch.in_(batches))))


def view(session: Session, req_id: uuid.UUID) -> dict[str, Any]:
    """What the erasure request shows: per tainted model, the re-test's state and figures, and whether the
    subject's strings are still held (how many probes; never the strings)."""
    held = session.execute(select(func.coalesce(func.sum(ErasureRetestStrings.probes), 0),
                                  func.min(ErasureRetestStrings.expires_at))
                           .where(ErasureRetestStrings.erasure_request_id == req_id)).one()
    rows = session.scalars(select(ErasureRetest).where(ErasureRetest.erasure_request_id == req_id)
                           .order_by(ErasureRetest.model_name)).all()
    return {
        "strings_held": int(held[0]), "strings_expire_at": iso(held[1]),
        "models": [{"model": r.model_name, "status": r.status, "version": r.model_version,
                    "evaluation_id": str(r.evaluation_id) if r.evaluation_id else None,
                    "result": r.result, "finished_at": iso(r.finished_at)} for r in rows],
    }
