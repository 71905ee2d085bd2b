"""Re-scrub: bring a dataset's scrubbed examples in line with its PII policy after the policy changed (a value
allowed from the report, a new allow list, entities or operators, another profile).

Each example is scrubbed again from its raw text in the vault with the policy as it is now. Where the output
equals the current revision nothing is written but the scrub's policy hash (and, for findings made before
value tokens existed, their tokens); where it differs, a new `pii_scrub` revision with its findings becomes
current and the example goes through dedup again and back to review: an approval was given to the old
content, and approvals count per revision. Idempotent: an example whose scrub already carries the policy's
hash is not a candidate, so a redelivered task (acks late) or a second request redoes nothing.

Examples a reviewer changed after their scrub (an edit, a missed span added) are left as they are and
counted (`skipped_reviewed`): re-scrubbing their raw text would undo the reviewer's work. Their findings
can still be judged one by one. False positives a reviewer marked stay restored: their values count as
allowed for that example.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import and_, exists, func, insert, select, update
from sqlalchemy.orm import Session, aliased

from app.audit import service as audit
from app.core import jobs
from app.core.auth import Actor
from app.core.ids import new_id
from app.core.sql import any_of, is_pg
from app.examples import formats, validation
from app.models.base import utcnow
from app.models.dataset import Dataset
from app.models.example import Example, ExampleRevision
from app.models.pii import PiiFinding, PiiScrub
from app.pii import fingerprint, nlp, tokens
from app.pii import service as pii
from app.pipeline import service as pipeline
from app.pipeline import stages

log = logging.getLogger(__name__)

RESCRUB_TASK = "pedigree.pii.rescrub"
BATCH = 200
# Statuses whose content may be re-scrubbed; the others (erased, rejected) keep theirs.
RESCRUBBABLE = ("scrubbed", "pending_review", "changes_requested", "approved", "duplicate")


def _latest_scrub():
    later = aliased(PiiScrub)
    return ~exists().where(later.example_id == PiiScrub.example_id, later.created_at > PiiScrub.created_at)


def candidates(dataset_id: uuid.UUID, policy_sha: str, value_tokens: list[str] | None = None):
    """Examples whose latest scrub was made under another policy (and, given tokens, whose current revision
    has a finding with one of them), settled or waiting for dedup: a select of example ids."""
    q = (select(Example.id)
         .join(PiiScrub, PiiScrub.example_id == Example.id)
         .where(Example.dataset_id == dataset_id, Example.status.in_(RESCRUBBABLE),
                Example.stage.is_(None) | (Example.stage == stages.next_stage("pii")),
                PiiScrub.policy_sha256 != policy_sha, _latest_scrub()))
    if value_tokens:
        q = q.where(exists().where(PiiFinding.revision_id == Example.current_revision_id,
                                   PiiFinding.value_token.in_(value_tokens)))
    return q


def request(session: Session, ds: Dataset, *, actor: Actor, reason: str, value_tokens: list[str] | None = None
            ) -> dict[str, Any]:
    """Queue a re-scrub of the dataset under its current policy (sent after commit, queue "pii"). A policy
    that turns scrubbing off queues nothing: it applies to new examples, and undoing past scrubs would put
    raw text in front of every reader."""
    policy = pii.policy_of(ds)
    sha = pii.policy_sha(policy)
    if not policy.enabled:
        return {"queued": False, "candidates": 0, "policy_sha256": sha}
    n = session.scalar(select(func.count()).select_from(candidates(ds.id, sha, value_tokens).subquery())) or 0
    audit.record(session, actor=actor.ref, action="pii.rescrub_requested", entity_type="dataset", entity_id=ds.id,
                 payload={"reason": reason, "policy_sha256": sha, "candidates": n, "tokens": value_tokens or []})
    if n:
        jobs.enqueue(session, RESCRUB_TASK, str(ds.id), value_tokens or None, queue="pii")
    return {"queued": bool(n), "candidates": n, "policy_sha256": sha}


def _lock(session: Session, ids: list[uuid.UUID]) -> list[Any]:
    q = (select(Example.id, Example.status, Example.stage, Example.current_revision_id)
         .where(any_of(Example.id, ids, pg=is_pg(session))).order_by(Example.id))
    if is_pg(session):
        return session.execute(q.with_for_update()).all()
    # SQLite: take the write lock first, so nothing changes between this read and the writes.
    session.execute(update(Example).where(Example.id == ids[0]).values(updated_at=Example.updated_at))
    return session.execute(q).all()


def rescrub_batch(session: Session, ds: Dataset, ids: list[uuid.UUID], *, reason: str, force: bool = False,
                  revalidation_id: uuid.UUID | None = None) -> dict[str, Any]:
    """Re-scrub these examples of `ds` (candidates, locked here) in the caller's transaction. `force`: also
    those already scrubbed under the current policy (a revalidation after an engine, model or recognizer
    change). Unchanged outputs are stamped validated now (app/examples/validation.py); changed ones go back
    through the pipeline, whose last stage records them."""
    policy = pii.policy_of(ds)
    sha = pii.policy_sha(policy)
    if not policy.enabled:  # turned off after the task was queued: past scrubs stay (see request)
        return {"dataset_id": str(ds.id), "reason": reason, "policy_sha256": sha, "examples": 0, "changed": [],
                "unchanged": 0, "approvals_reset": [], "skipped_reviewed": []}
    rows = _lock(session, ids)
    now = utcnow()
    changed: list[list[str]] = []
    back_to_review: list[str] = []
    skipped: list[str] = []
    unchanged = 0
    redo_dedup: list[uuid.UUID] = []
    # Checked again under the policy and engine as they are now and found unchanged: validated now (issue
    # 19). Changed ones go back through the pipeline, which records them when it finishes; a changed exact
    # duplicate stays out of the pipeline and is recorded here.
    revalidated: list[uuid.UUID] = []
    nlp.load()
    from app.pii.scrub import ScrubInput, scrub_examples

    eng, hk, tk = pii.engine(), pii.hash_key(), tokens.token_key()
    versions = fingerprint.register(session, eng)
    work: list[dict[str, Any]] = []
    for r in rows:
        if r.status not in RESCRUBBABLE or r.stage not in (None, stages.next_stage("pii")):
            continue
        scrub = session.scalar(select(PiiScrub).where(PiiScrub.example_id == r.id)
                               .order_by(PiiScrub.created_at.desc()).limit(1))
        if scrub is None or (scrub.policy_sha256 == sha and not force):
            continue
        current = session.get(ExampleRevision, r.current_revision_id)
        findings = pii.findings_for(session, current.id)
        if current.id != scrub.result_revision_id and (
                current.reason != "pii_verdict" or any(f.verdict == "added" for f in findings)):
            skipped.append(str(r.id))
            continue
        source = session.get(ExampleRevision, scrub.source_revision_id)
        raw = pii.raw_content(session, r.id, source.id)
        vaulted = raw is not None
        if raw is None:
            raw = source.content  # nothing was found in it before, so it was never vaulted: it is the raw text
        if pii.VAULT_MARKER in raw:  # pragma: no cover - a marker without its vault row (erased under us)
            skipped.append(str(r.id))
            continue
        run_policy = policy
        restored = set(session.scalars(select(PiiFinding.value_token).where(
            PiiFinding.example_id == r.id, PiiFinding.verdict == "false_positive", PiiFinding.value_token.is_not(None))))
        if restored:
            run_policy = policy.model_copy(update={"allow_tokens": sorted(set(policy.allow_tokens) | restored)})
        work.append({"r": r, "scrub": scrub, "current": current, "findings": findings, "source": source, "raw": raw,
                     "vaulted": vaulted, "policy": run_policy})
    # One engine call per policy (nearly always one): spaCy's pipe over the whole batch, not one text at a time.
    groups: dict[str, list[dict[str, Any]]] = {}
    for w in work:
        groups.setdefault(w["policy"].model_dump_json(), []).append(w)
    for group in groups.values():
        items = [ScrubInput(w["raw"], key=f"{ds.id}:{w['scrub'].source_sha256}",
                            fields=formats.text_fields(ds.format, w["raw"])) for w in group]
        for w, res in zip(group, scrub_examples(eng, items, group[0]["policy"], hash_key=hk, token_key=tk),
                          strict=True):
            w["res"] = res
    for w in work:
        r, scrub, current, findings, source, raw, res = (w["r"], w["scrub"], w["current"], w["findings"],
                                                         w["source"], w["raw"], w["res"])
        out = res.content if res.findings else raw
        out_sha = formats.content_sha256(out)
        scrub.policy_sha256 = sha
        scrub.engine, scrub.model, scrub.recognizers = (versions["pii_engine"], versions["spacy_model"],
                                                        versions["recognizers"])
        if out_sha == current.content_sha256:
            unchanged += 1
            revalidated.append(r.id)
            _backfill_tokens(findings, res.findings)
            continue
        rid = new_id()
        seq = session.scalar(select(func.max(ExampleRevision.seq)).where(ExampleRevision.example_id == r.id)) or 0
        session.execute(insert(ExampleRevision), [{
            "id": rid, "example_id": r.id, "seq": seq + 1, "content": out, "content_sha256": out_sha,
            "parent_id": current.id, "reason": "pii_scrub", "author": pii.ACTOR,
            "comment": f"re-scrubbed: {reason}", "created_at": now}])
        if res.findings and not w["vaulted"]:
            vault_rows, markers = pii.seal_rows(pii.key_ring(session), [(r.id, source.id, raw)])
            pii.write_vault(session, vault_rows, markers)
        if res.findings:
            session.execute(insert(PiiFinding), _keep_confirmed(
                [pii.finding_row(f, r.id, ds.id, rid, source.id, now) for f in res.findings], findings))
        scrub.result_revision_id, scrub.findings, scrub.flags = rid, len(res.findings), res.flags
        changed.append([str(r.id), str(current.id), str(rid)])
        if r.status == "duplicate":
            # It stays its canonical's duplicate: the twin it copies is re-scrubbed from the same raw text
            # to the same output, and a near duplicate's link is re-settled by the next dedup rebuild.
            session.execute(update(Example).where(Example.id == r.id).values(current_revision_id=rid,
                                                                             updated_at=now))
            revalidated.append(r.id)
            continue
        nxt = stages.next_stage("pii")
        session.execute(update(Example).where(Example.id == r.id).values(
            current_revision_id=rid, status="scrubbed" if nxt else "pending_review", stage=nxt, updated_at=now))
        if r.status == "approved":
            back_to_review.append(str(r.id))
        redo_dedup.append(r.id)
    session.flush()
    validation.stamp(session, revalidated, now=now, via="revalidation" if revalidation_id else "rescrub",
                     versions=versions, pii_policy_sha256=sha, revalidation_id=revalidation_id)
    if redo_dedup and stages.next_stage("pii"):
        pipeline.enqueue_stage(session, stages.next_stage("pii"), redo_dedup)
    result = {"dataset_id": str(ds.id), "reason": reason, "policy_sha256": sha, "examples": len(rows),
              "changed": changed, "unchanged": unchanged, "approvals_reset": back_to_review,
              "skipped_reviewed": skipped}
    audit.record(session, actor=pii.ACTOR, action="pii.rescrubbed", entity_type="example_batch", payload=result,
                 workspace_id=ds.workspace_id)
    return result


# Recognizers whose analyze reads no NLP artifacts: run alone, without spaCy, they find what they find inside
# the engine. A Presidio PatternRecognizer that keeps its analyze is one; these of ours were checked to be.
_NO_NLP = frozenset({"PaymentCardRecognizer", "LoosePhoneRecognizer", "CaseInsensitiveIbanRecognizer",
                     "SecretRecognizer"})


def prefilterable(rec: Any) -> bool:
    from presidio_analyzer import PatternRecognizer

    if type(rec).__name__ in _NO_NLP:
        return True
    return isinstance(rec, PatternRecognizer) and type(rec).analyze is PatternRecognizer.analyze


def prefilter(session: Session, ds: Dataset, ids: list[uuid.UUID], names: set[str]) -> tuple[list, list]:
    """Split `ids` into those a recognizer change could affect and those it cannot, without the model.

    Only the named recognizers changed (added, changed or removed) between the set that validated these
    examples and the current one. An example is a candidate when the current version of one of them finds
    anything at all in its raw text (before thresholds, context or passes), or when its current findings
    name one of them. Otherwise the engine's result is the same set of spans as before, so the output is:
    for an added recognizer this is exact; for a changed or removed one it misses only a span of the old
    version that displaced another recognizer's and was then dropped by a later pass (docs/governance.md)."""
    pg = is_pg(session)
    eng = pii.engine()
    recs = [r for r in eng.analyzer.registry.recognizers if r.name in names]
    flagged = set(session.scalars(
        select(PiiFinding.example_id).join(Example, Example.current_revision_id == PiiFinding.revision_id)
        .where(any_of(PiiFinding.example_id, ids, pg=pg), PiiFinding.recognizer.in_(sorted(names))).distinct()))
    rest = [i for i in ids if i not in flagged]
    if not recs or not rest:
        return sorted(flagged), rest
    from app.pii.recognizers.normalize import Normalised

    later = aliased(PiiScrub)
    latest = (select(later.id).where(later.example_id == PiiScrub.example_id)
              .order_by(later.created_at.desc()).limit(1).scalar_subquery())
    sources = dict(session.execute(select(PiiScrub.example_id, PiiScrub.source_revision_id)
                                   .where(any_of(PiiScrub.example_id, rest, pg=pg), PiiScrub.id == latest)).all())
    raws = pii.raw_contents(session, [(e, s) for e, s in sources.items()])
    plain = dict(session.execute(select(ExampleRevision.id, ExampleRevision.content).where(
        any_of(ExampleRevision.id, [s for e, s in sources.items() if e not in raws], pg=pg))).all())
    candidates, cleared = sorted(flagged), []
    for eid in rest:
        raw = raws.get(eid) if eid in raws else plain.get(sources.get(eid))
        if raw is None:  # no scrub to compare with: the full path decides
            candidates.append(eid)
            continue
        texts = [t for _, t in formats.text_fields(ds.format, raw) if t and t.strip()]
        hit = any(rec.analyze(Normalised(t).text, rec.supported_entities, None) for t in texts for rec in recs)
        (candidates if hit else cleared).append(eid)
    return candidates, cleared


def _keep_confirmed(rows: list[dict], old: list[PiiFinding]) -> list[dict]:
    """A reviewer's confirmation stays on the same span of the same raw text."""
    confirmed = {(f.field_path, f.start, f.end, f.entity_type): f for f in old if f.verdict == "confirmed"}
    for row in rows:
        f = confirmed.get((row["field_path"], row["start"], row["end"], row["entity_type"]))
        if f is not None:
            row.update(verdict="confirmed", verdict_by=f.verdict_by, verdict_at=f.verdict_at)
    return rows


def _backfill_tokens(current: list[PiiFinding], fresh: list[Any]) -> None:
    """Findings made before value tokens existed get them from the identical re-scrub."""
    by_span = {(f.field_path, f.scrubbed_start, f.scrubbed_end): f for f in fresh}
    for f in current:
        if f.value_token is None and f.verdict != "added":
            match = by_span.get((f.field_path, f.scrubbed_start, f.scrubbed_end))
            if match is not None and match.entity_type == f.entity_type:
                f.value_token, f.value_words = match.value_token, match.value_words


def next_batch(session: Session, ds: Dataset, value_tokens: list[str] | None, after: uuid.UUID | None,
               limit: int = BATCH) -> list[uuid.UUID]:
    q = candidates(ds.id, pii.policy_sha(pii.policy_of(ds)), value_tokens)
    if after is not None:
        q = q.where(and_(Example.id > after))
    return list(session.scalars(q.order_by(Example.id).limit(limit)))


# Dataset changes made through the datasets API (PATCH, a profile switch) that touch what is scrubbed.
_POLICY_KEYS = frozenset({"pii_policy", "pii_profile"})


def on_audit(events: list[dict[str, Any]]) -> None:
    """After a commit that changed a dataset's PII policy or profile outside PUT pii-policy (which queues
    its own): queue the re-scrub. Runs after the commit, so the task reads the new policy."""
    for ev in events:
        if (ev["action"] == "dataset.updated" and ev.get("entity_id")
                and _POLICY_KEYS & set(ev.get("payload") or {})):
            try:
                jobs.send(RESCRUB_TASK, [str(ev["entity_id"]), None, "policy_changed"], "pii")
            except Exception:
                log.exception("could not queue the re-scrub of dataset %s", ev["entity_id"])
